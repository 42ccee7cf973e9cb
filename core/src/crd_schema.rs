//! The structural schema of a CustomResourceDefinition version (`schema.openAPIV3Schema`),
//! and what kube-apiserver's apiextensions does with it: check it when the CRD is written,
//! then prune, default and validate custom objects against it.
//!
//! The order the API server applies to a custom object's body (create, update, and objects
//! read back from storage) is: [`Schema::prune`] (unknown fields; the paths feed
//! `fieldValidation=Strict|Warn`), [`Schema::default`] (drops nulls of non-nullable fields
//! without a default, then fills defaults), then [`Schema::validate`].
//!
//! # Implemented
//! - Structural checks at CRD creation ([`Schema::parse`]), worded as apiextensions words
//!   them: `type` required on every node unless `x-kubernetes-int-or-string` or
//!   `x-kubernetes-preserve-unknown-fields`; object at the root; `items` for arrays;
//!   `properties` and `additionalProperties` exclusive; no `additionalProperties` at the root or
//!   on embedded resources; root `metadata` may only restrict `name` and `generateName`;
//!   `x-kubernetes-embedded-resource` needs `type: object` and properties (or preserve-unknown);
//!   `nullable` not at the root; `pattern` must compile; list-type/map-type/list-map-keys
//!   rules; defaults forbidden in top-level `metadata`/`apiVersion`/`kind` and inside
//!   `additionalProperties` of object metadata; every `default` must be pruned ("must not have
//!   unknown fields") and must validate against its own schema.
//! - Validation: `type` (string, integer, number, boolean, object, array), `nullable`,
//!   `required`, `enum`, `pattern`, `minimum`/`maximum` (and their exclusive flags),
//!   `multipleOf`, `minLength`/`maxLength` (in characters, as kube counts), `minItems`/
//!   `maxItems`, `minProperties`/`maxProperties`, `format` (below), `additionalProperties`
//!   schemas, `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
//!   `x-kubernetes-embedded-resource` (`apiVersion` and `kind` required and well formed; kube
//!   does not require `metadata` there either), `x-kubernetes-list-type: set` (no duplicates)
//!   and `map` (unique keys).
//! - Formats kube validates on strings: `date-time`, `date`, `uuid`, `uuid3`, `uuid4`,
//!   `uuid5`, `ipv4`, `ipv6`, `cidr`, `mac`, `hostname`, `email`, `uri`, `byte`, `password`,
//!   `bsonobjectid`, `hexcolor`, `rgbcolor`, `ssn`, `quantity`; `int32`/`int64`/`float`/
//!   `double` are accepted and, as in kube, check nothing. Formats kube itself does not know
//!   are ignored, as kube ignores them.
//! - The `anyOf: [{type: integer}, {type: string}]` (or `allOf: [{anyOf: ...}]`) that
//!   generators put beside `x-kubernetes-int-or-string` is accepted (the extension already
//!   says it).
//!
//! # Refused at parse, with the path
//! `x-kubernetes-validations` ("CEL validation rules are not supported by kedge"), any other
//! `allOf`/`anyOf`/`oneOf`/`not`, boolean `additionalProperties`, the formats kube validates
//! but kedge does not (`isbn`, `isbn10`, `isbn13`, `creditcard`, `duration`), and unknown
//! keywords; as kube refuses them: `$ref`, `id`, `definitions`, `dependencies`,
//! `patternProperties`, `additionalItems`, `type: null`, array `items`, `uniqueItems: true`.
//!
//! # Differences from kube
//! - `pattern` is compiled with Rust's `regex` crate. Like Go's RE2 it has no look-around or
//!   backreferences; unlike Go, `\d`, `\w`, `\s` and `\b` are Unicode-aware.
//! - Kube reports property errors in Go map order (random); here they are in key order,
//!   properties before `required`. Non-scalar values in messages use Go's `%#v` shapes.
//! - `email`, `hostname`, `uri` are close approximations of Go's parsers.
//! - Defaults inside `additionalProperties` are validated too (kube skips them).
//! - A null in a nullable field is not checked against `enum` (kube-openapi would refuse it
//!   unless the enum lists null).
//! - The `metadata` of embedded resources is kept and not checked as an ObjectMeta here;
//!   root-schema restrictions that depend on the status subresource, and the root `metadata`
//!   itself, are the API server's job.
//!
//! Map keys under `additionalProperties` appear as `spec.labels.app` in schema errors and as
//! `spec.labels[app]` in embedded-resource and list-type errors, as in kube. The code is in
//! `parse` (CRD-time checks), `validate`, `mutate` (default, prune) and `render`
//! (how values read in messages).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

/// One problem, shaped like a `Status` cause of a 422 Invalid (`reason`, `field`, `message`),
/// so the API server converts it field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueTypeInvalid`,
    /// `FieldValueForbidden`, `FieldValueNotSupported`, `FieldValueTooLong`,
    /// `FieldValueTooMany` or `FieldValueDuplicate`.
    pub reason: &'static str,
    /// The field path, e.g. `spec.replicas` or `properties[spec].type` (parse causes are
    /// relative to `openAPIV3Schema`; see [`Cause::under`]).
    pub field: String,
    /// The message without the field: `Invalid value: "string": ...`.
    pub message: String,
}

impl Cause {
    fn new(reason: &'static str, field: &str, message: String) -> Cause {
        Cause {
            reason,
            field: field.to_string(),
            message,
        }
    }

    fn required(field: &str, detail: &str) -> Cause {
        Cause::new(
            "FieldValueRequired",
            field,
            with_detail("Required value", detail),
        )
    }

    fn invalid(field: &str, shown: &str, detail: &str) -> Cause {
        Cause::new(
            "FieldValueInvalid",
            field,
            with_detail(&format!("Invalid value: {shown}"), detail),
        )
    }

    fn forbidden(field: &str, detail: &str) -> Cause {
        Cause::new(
            "FieldValueForbidden",
            field,
            with_detail("Forbidden", detail),
        )
    }

    fn not_supported(field: &str, shown: &str, allowed: &[String]) -> Cause {
        let quoted: Vec<String> = allowed.iter().map(|a| go_quote(a)).collect();
        let mut message = format!("Unsupported value: {shown}");
        if !quoted.is_empty() {
            message.push_str(&format!(": supported values: {}", quoted.join(", ")));
        }
        Cause::new("FieldValueNotSupported", field, message)
    }

    /// The cause with its field placed under `prefix`, e.g.
    /// `spec.versions[0].schema.openAPIV3Schema`.
    ///
    /// ```
    /// use kedge_core::crd_schema::Schema;
    /// let causes = Schema::parse(&serde_json::json!({"type": "object",
    ///     "properties": {"spec": {}}})).unwrap_err();
    /// let c = causes[0].clone().under("spec.versions[0].schema.openAPIV3Schema");
    /// assert_eq!(c.field, "spec.versions[0].schema.openAPIV3Schema.properties[spec].type");
    /// ```
    pub fn under(mut self, prefix: &str) -> Cause {
        self.field = join(prefix, &self.field);
        self
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

fn with_detail(head: &str, detail: &str) -> String {
    if detail.is_empty() {
        head.to_string()
    } else {
        format!("{head}: {detail}")
    }
}

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => prefix.to_string(),
        _ if rest.starts_with('[') => format!("{prefix}{rest}"),
        _ => format!("{prefix}.{rest}"),
    }
}

/// How server-side apply merges a list (`x-kubernetes-list-type`; unset means atomic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// Scalars merged as a set.
    Set,
    /// Objects merged by the values of these keys (`x-kubernetes-list-map-keys`).
    Map(Vec<String>),
}

/// How server-side apply merges an object (`x-kubernetes-map-type`; unset means granular).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    Granular,
    Atomic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Boolean => "boolean",
            Type::Object => "object",
            Type::Array => "array",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    DateTime,
    Date,
    Uuid,
    Uuid3,
    Uuid4,
    Uuid5,
    Ipv4,
    Ipv6,
    Cidr,
    Mac,
    Hostname,
    Email,
    Uri,
    Byte,
    BsonObjectId,
    HexColor,
    RgbColor,
    Ssn,
    Quantity,
}

/// One node of a parsed structural schema.
#[derive(Clone, Debug, Default)]
struct Node {
    ty: Option<Type>,
    nullable: bool,
    /// The format as written (kube's messages quote it) and what it checks.
    format: Option<(String, Format)>,
    enumeration: Option<Vec<Value>>,
    pattern: Option<(String, Regex)>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: bool,
    exclusive_maximum: bool,
    multiple_of: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    required: Vec<String>,
    properties: BTreeMap<String, Node>,
    additional: Option<Box<Node>>,
    items: Option<Box<Node>>,
    default: Option<Value>,
    int_or_string: bool,
    preserve_unknown: bool,
    embedded: bool,
    list_type: Option<String>,
    list_map_keys: Vec<String>,
    map_type: Option<MapType>,
}

/// A CRD version's structural schema, parsed and checked.
#[derive(Clone, Debug)]
pub struct Schema {
    root: Node,
}

impl Schema {
    /// Parses `openAPIV3Schema` and checks it as apiextensions does when a CRD is created;
    /// every problem is reported, with paths relative to the schema root.
    ///
    /// ```
    /// use kedge_core::crd_schema::Schema;
    /// let schema = Schema::parse(&serde_json::json!({
    ///     "type": "object",
    ///     "properties": {"spec": {"type": "object",
    ///         "properties": {"replicas": {"type": "integer", "default": 1}}}}
    /// })).unwrap();
    /// let mut obj = serde_json::json!({"apiVersion": "x/v1", "kind": "X", "spec": {"bad": 1}});
    /// assert_eq!(schema.prune(&mut obj), vec!["spec.bad".to_string()]);
    /// schema.default(&mut obj);
    /// assert_eq!(obj["spec"]["replicas"], 1);
    /// assert!(schema.validate(&obj).is_empty());
    /// ```
    pub fn parse(schema: &Value) -> Result<Schema, Vec<Cause>> {
        parse_root(schema).map(|root| Schema { root })
    }

    /// Validates a custom object (after pruning and defaulting), returning every cause in the
    /// order kube-apiserver reports them: schema errors, embedded resources, list sets/maps.
    pub fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        validate_value(&self.root, obj, "", "", &mut causes);
        embedded_check(&self.root, obj, "", &mut causes);
        list_check(&self.root, obj, "", &mut causes);
        causes
    }

    /// Applies defaults, deep, as the apiserver does on create, update and read: nulls of
    /// non-nullable fields without a default are dropped first; an absent field, or a null
    /// in a non-nullable one, takes its default; defaults inserted are defaulted in turn.
    pub fn default(&self, obj: &mut Value) {
        drop_nulls(obj, Some(&self.root));
        apply_defaults(obj, &self.root);
    }

    /// Removes fields the schema does not specify (except under
    /// `x-kubernetes-preserve-unknown-fields`, and `apiVersion`, `kind`, `metadata` at the root
    /// and of embedded resources), returning their paths sorted, e.g. `spec.foo`,
    /// `spec.list[0].bar`.
    pub fn prune(&self, obj: &mut Value) -> Vec<String> {
        let mut pruned = Vec::new();
        // The root keeps its apiVersion, kind and metadata like an embedded resource.
        prune(obj, Some(&self.root), true, "", &mut pruned);
        pruned.sort();
        pruned
    }

    /// The list type of the array at `path` (object keys; arrays on the way are entered
    /// through their items, or explicitly with `"[]"`), `None` when the schema has no array
    /// there. Unset means [`ListType::Atomic`], as in kube.
    ///
    /// ```
    /// use kedge_core::crd_schema::{ListType, Schema};
    /// let schema = Schema::parse(&serde_json::json!({"type": "object", "properties": {
    ///     "ports": {"type": "array", "x-kubernetes-list-type": "map",
    ///       "x-kubernetes-list-map-keys": ["port"],
    ///       "items": {"type": "object", "required": ["port"],
    ///         "properties": {"port": {"type": "integer"}}}}}})).unwrap();
    /// assert_eq!(schema.list_type_at(&["ports"]), Some(ListType::Map(vec!["port".into()])));
    /// ```
    pub fn list_type_at(&self, path: &[&str]) -> Option<ListType> {
        let node = self.root.at(path)?;
        if node.ty != Some(Type::Array) {
            return None;
        }
        Some(match node.list_type.as_deref() {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(node.list_map_keys.clone()),
            _ => ListType::Atomic,
        })
    }

    /// The map type of the object at `path` (as in [`Schema::list_type_at`]), `None` when the
    /// schema has no object there. Unset means [`MapType::Granular`].
    pub fn map_type_at(&self, path: &[&str]) -> Option<MapType> {
        let node = self.root.at(path)?;
        if node.ty != Some(Type::Object) {
            return None;
        }
        Some(node.map_type.unwrap_or(MapType::Granular))
    }
}

impl Node {
    fn at(&self, path: &[&str]) -> Option<&Node> {
        let mut node = self;
        for step in path {
            if *step == "[]" {
                node = node.items.as_deref()?;
                continue;
            }
            while node.ty == Some(Type::Array) {
                node = node.items.as_deref()?;
            }
            node = match node.properties.get(*step) {
                Some(n) => n,
                None => node.additional.as_deref()?,
            };
        }
        Some(node)
    }

    fn property(&self, key: &str) -> Option<&Node> {
        self.properties.get(key).or(self.additional.as_deref())
    }
}

mod mutate;
mod parse;
mod render;
mod validate;

use mutate::*;
use parse::*;
use render::*;
use validate::*;

#[cfg(test)]
mod tests;
