//! Parsing a schema, and the checks apiextensions makes when a CRD is written.

use super::*;

/// The whole check of `openAPIV3Schema`: API-level causes in walk order, then the structural
/// ones sorted by their text as kube sorts them (they come from map walks), then, when all
/// is well so far, the defaults.
pub(super) fn parse_root(schema: &Value) -> Result<Node, Vec<Cause>> {
    let mut p = Parser::default();
    let root = p.node(schema, "", Ctx::root());
    if schema.get("nullable") == Some(&Value::Bool(true)) {
        p.api.push(Cause::forbidden(
            "nullable",
            "nullable cannot be true at the root",
        ));
    }
    structural(&root, Level::Root, "", &mut p.structural);
    p.structural.sort_by_key(|c| c.to_string());
    let mut causes = p.api;
    causes.append(&mut p.structural);
    if causes.is_empty() {
        validate_defaults(&root, "", &mut causes);
    }
    if causes.is_empty() {
        Ok(root)
    } else {
        Err(causes)
    }
}

/// Where defaults are forbidden, and why (kube's `withForbiddenDefaults` reasons).
#[derive(Clone, Copy)]
pub(super) struct Ctx {
    is_root: bool,
    inside_meta: bool,
    no_defaults: Option<&'static str>,
}

impl Ctx {
    fn root() -> Ctx {
        Ctx {
            is_root: true,
            inside_meta: false,
            no_defaults: None,
        }
    }

    fn child(self) -> Ctx {
        Ctx {
            is_root: false,
            ..self
        }
    }
}

#[derive(Default)]
pub(super) struct Parser {
    /// API-level causes, in walk order (kube's ValidateCustomResourceDefinitionOpenAPISchema).
    api: Vec<Cause>,
    /// Structural-invariant causes (kube's ValidateStructural), sorted at the end.
    structural: Vec<Cause>,
}

pub(super) const KNOWN_KEYWORDS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "default",
    "example",
    "externalDocs",
    "nullable",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

/// Keywords kube itself refuses in CRD schemas, with its words.
pub(super) const KUBE_UNSUPPORTED: &[(&str, &str)] = &[
    ("$ref", "$ref is not supported"),
    ("id", "id is not supported"),
    ("definitions", "definitions is not supported"),
    ("dependencies", "dependencies is not supported"),
    ("patternProperties", "patternProperties is not supported"),
    ("additionalItems", "additionalItems is not supported"),
];

pub(super) const META_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

impl Parser {
    fn node(&mut self, v: &Value, path: &str, ctx: Ctx) -> Node {
        let mut n = Node::default();
        let Some(obj) = v.as_object() else {
            self.api.push(Cause::invalid(
                path,
                &go_value(v),
                "must be a schema object",
            ));
            return n;
        };
        let at = |k: &str| join(path, k);

        for (key, why) in KUBE_UNSUPPORTED {
            if obj.contains_key(*key) {
                self.api.push(Cause::forbidden(&at(key), why));
            }
        }
        for key in obj.keys() {
            if !KNOWN_KEYWORDS.contains(&key.as_str())
                && !KUBE_UNSUPPORTED.iter().any(|(k, _)| k == key)
                && key != "$schema"
            {
                self.api.push(Cause::forbidden(
                    &at(key),
                    "unknown schema keyword, not supported by kedge",
                ));
            }
        }

        // type
        match obj.get("type") {
            None => {}
            Some(Value::String(t)) => {
                n.ty = match t.as_str() {
                    "string" => Some(Type::String),
                    "integer" => Some(Type::Integer),
                    "number" => Some(Type::Number),
                    "boolean" => Some(Type::Boolean),
                    "object" => Some(Type::Object),
                    "array" => Some(Type::Array),
                    "" => None,
                    "null" => {
                        self.api.push(Cause::forbidden(
                            &at("type"),
                            "type cannot be set to null, use nullable as an alternative",
                        ));
                        None
                    }
                    other => {
                        let allowed: Vec<String> =
                            ["array", "boolean", "integer", "number", "object", "string"]
                                .iter()
                                .map(|s| s.to_string())
                                .collect();
                        self.api.push(Cause::not_supported(
                            &at("type"),
                            &go_quote(other),
                            &allowed,
                        ));
                        None
                    }
                }
            }
            Some(other) => self.api.push(Cause::invalid(
                &at("type"),
                &go_value(other),
                "must be a string",
            )),
        }

        n.nullable = self.flag(obj, "nullable", path);
        n.int_or_string = self.flag(obj, "x-kubernetes-int-or-string", path);
        n.embedded = self.flag(obj, "x-kubernetes-embedded-resource", path);
        match obj.get("x-kubernetes-preserve-unknown-fields") {
            None => {}
            Some(Value::Bool(true)) => n.preserve_unknown = true,
            Some(other) => self.api.push(Cause::invalid(
                &at("x-kubernetes-preserve-unknown-fields"),
                &go_value(other),
                "must be true or undefined",
            )),
        }
        if ctx.inside_meta && n.embedded {
            self.api.push(Cause::forbidden(
                &at("x-kubernetes-embedded-resource"),
                "must not be used inside of resource meta",
            ));
        }

        // format
        if let Some(f) = obj.get("format") {
            match f.as_str() {
                Some(f) => n.format = self.format(f, n.ty, n.int_or_string, &at("format")),
                None => self.api.push(Cause::invalid(
                    &at("format"),
                    &go_value(f),
                    "must be a string",
                )),
            }
        }

        // value validations
        if let Some(e) = obj.get("enum") {
            match e.as_array() {
                Some(values) => n.enumeration = Some(values.clone()),
                None => self
                    .api
                    .push(Cause::invalid(&at("enum"), &go_value(e), "must be a list")),
            }
        }
        if let Some(p) = obj.get("pattern") {
            match p.as_str() {
                Some(p) => match Regex::new(p) {
                    Ok(re) => n.pattern = Some((p.to_string(), re)),
                    Err(e) => self.structural.push(Cause::invalid(
                        &at("pattern"),
                        &go_quote(p),
                        &format!(
                            "must be a valid regular expression, but isn't: {}",
                            first_line(&e.to_string())
                        ),
                    )),
                },
                None => self.api.push(Cause::invalid(
                    &at("pattern"),
                    &go_value(p),
                    "must be a string",
                )),
            }
        }
        n.minimum = self.number(obj, "minimum", path);
        n.maximum = self.number(obj, "maximum", path);
        n.exclusive_minimum = self.flag(obj, "exclusiveMinimum", path);
        n.exclusive_maximum = self.flag(obj, "exclusiveMaximum", path);
        n.multiple_of = self.number(obj, "multipleOf", path);
        if n.multiple_of.is_some_and(|m| m <= 0.0) {
            self.api.push(Cause::invalid(
                &at("multipleOf"),
                &go_value(&obj["multipleOf"]),
                "must be greater than 0",
            ));
            n.multiple_of = None;
        }
        n.min_length = self.count(obj, "minLength", path);
        n.max_length = self.count(obj, "maxLength", path);
        n.min_items = self.count(obj, "minItems", path);
        n.max_items = self.count(obj, "maxItems", path);
        n.min_properties = self.count(obj, "minProperties", path);
        n.max_properties = self.count(obj, "maxProperties", path);
        if self.flag(obj, "uniqueItems", path) {
            self.api.push(Cause::forbidden(
                &at("uniqueItems"),
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            ));
        }
        if let Some(r) = obj.get("required") {
            match string_list(r) {
                Some(list) => n.required = list,
                None => self.api.push(Cause::invalid(
                    &at("required"),
                    &go_value(r),
                    "must be a list of strings",
                )),
            }
        }

        if obj.contains_key("x-kubernetes-validations") {
            self.api.push(Cause::forbidden(
                &at("x-kubernetes-validations"),
                "CEL validation rules are not supported by kedge",
            ));
        }
        self.junctors(obj, &n, path);

        // default
        if let Some(d) = obj.get("default")
            && !d.is_null()
        {
            if let Some(reason) = ctx.no_defaults {
                self.api.push(Cause::forbidden(
                    &at("default"),
                    &format!("must not be set {reason}"),
                ));
            }
            n.default = Some(d.clone());
        }

        // additionalProperties
        match obj.get("additionalProperties") {
            None => {}
            Some(Value::Object(_)) => {
                let ap = &obj["additionalProperties"];
                if obj
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|p| !p.is_empty())
                {
                    self.api.push(Cause::forbidden(
                        &at("additionalProperties"),
                        "additionalProperties and properties are mutual exclusive",
                    ));
                }
                let mut sub = ctx.child();
                if ctx.inside_meta {
                    sub.no_defaults =
                        Some("inside additionalProperties applying to object metadata");
                }
                n.additional = Some(Box::new(self.node(ap, &at("additionalProperties"), sub)));
            }
            Some(Value::Bool(b)) => {
                if !*b
                    && obj
                        .get("properties")
                        .and_then(Value::as_object)
                        .is_some_and(|p| !p.is_empty())
                {
                    self.api.push(Cause::forbidden(
                        &at("additionalProperties"),
                        "additionalProperties and properties are mutual exclusive",
                    ));
                }
                self.api.push(Cause::forbidden(
                    &at("additionalProperties"),
                    "a boolean additionalProperties is not supported by kedge: use a schema or x-kubernetes-preserve-unknown-fields",
                ));
            }
            Some(other) => self.api.push(Cause::invalid(
                &at("additionalProperties"),
                &go_value(other),
                "must be a schema object",
            )),
        }

        // properties
        match obj.get("properties") {
            None => {}
            Some(Value::Object(props)) => {
                for (k, sub) in props {
                    let mut c = ctx.child();
                    if (ctx.is_root || n.embedded) && META_FIELDS.contains(&k.as_str()) {
                        c.inside_meta = true;
                        if ctx.is_root {
                            c.no_defaults = Some(match k.as_str() {
                                "metadata" => "in top-level metadata",
                                "kind" => "in top-level kind",
                                _ => "in top-level apiVersion",
                            });
                        }
                    }
                    let child = self.node(sub, &at(&format!("properties[{k}]")), c);
                    n.properties.insert(k.clone(), child);
                }
            }
            Some(other) => self.api.push(Cause::invalid(
                &at("properties"),
                &go_value(other),
                "must be an object of schemas",
            )),
        }

        // items
        match obj.get("items") {
            None => {}
            Some(Value::Object(_)) => {
                n.items = Some(Box::new(self.node(
                    &obj["items"],
                    &at("items"),
                    ctx.child(),
                )))
            }
            Some(Value::Array(_)) => self.api.push(Cause::forbidden(
                &at("items"),
                "items must be a schema object and not an array",
            )),
            Some(other) => self.api.push(Cause::invalid(
                &at("items"),
                &go_value(other),
                "must be a schema object",
            )),
        }

        self.list_and_map_types(obj, &mut n, path);
        n
    }

    fn flag(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> bool {
        match obj.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.api.push(Cause::invalid(
                    &join(path, key),
                    &go_value(other),
                    "must be a boolean",
                ));
                false
            }
        }
    }

    fn number(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Option<f64> {
        let v = obj.get(key)?;
        if v.is_null() {
            return None;
        }
        let n = v.as_f64();
        if n.is_none() {
            self.api.push(Cause::invalid(
                &join(path, key),
                &go_value(v),
                "must be a number",
            ));
        }
        n
    }

    fn count(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Option<u64> {
        let v = obj.get(key)?;
        if v.is_null() {
            return None;
        }
        let n = v.as_u64();
        if n.is_none() {
            self.api.push(Cause::invalid(
                &join(path, key),
                &go_value(v),
                "must be a non-negative integer",
            ));
        }
        n
    }

    fn format(
        &mut self,
        f: &str,
        ty: Option<Type>,
        int_or_string: bool,
        path: &str,
    ) -> Option<(String, Format)> {
        // Kube keeps string formats only on string (or untyped) nodes, int32/int64 on
        // integers, float/double on numbers, and drops every other combination.
        let on_string = int_or_string || matches!(ty, None | Some(Type::String));
        if !on_string {
            return None;
        }
        let normalized = f.replace('-', "");
        let format = match normalized.as_str() {
            "datetime" => Format::DateTime,
            "date" => Format::Date,
            "uuid" => Format::Uuid,
            "uuid3" => Format::Uuid3,
            "uuid4" => Format::Uuid4,
            "uuid5" => Format::Uuid5,
            "ipv4" => Format::Ipv4,
            "ipv6" => Format::Ipv6,
            "cidr" => Format::Cidr,
            "mac" => Format::Mac,
            "hostname" => Format::Hostname,
            "email" => Format::Email,
            "uri" => Format::Uri,
            "byte" => Format::Byte,
            "bsonobjectid" => Format::BsonObjectId,
            "hexcolor" => Format::HexColor,
            "rgbcolor" => Format::RgbColor,
            "ssn" => Format::Ssn,
            "quantity" => Format::Quantity,
            "isbn" | "isbn10" | "isbn13" | "creditcard" | "duration" => {
                self.api.push(Cause::forbidden(
                    path,
                    &format!("format {} is not supported by kedge", go_quote(f)),
                ));
                return None;
            }
            // "password" checks nothing; formats kube does not know are ignored as kube does.
            _ => return None,
        };
        Some((f.to_string(), format))
    }

    /// `allOf`/`anyOf`/`oneOf`/`not`: only the int-or-string shapes generators emit.
    fn junctors(&mut self, obj: &Map<String, Value>, n: &Node, path: &str) {
        let int_or_string_any_of = |v: &Value| {
            v.as_array().is_some_and(|a| {
                a.len() == 2
                    && a[0] == serde_json::json!({"type": "integer"})
                    && a[1] == serde_json::json!({"type": "string"})
            })
        };
        if let Some(any) = obj.get("anyOf")
            && !(n.int_or_string && int_or_string_any_of(any))
        {
            self.api.push(Cause::forbidden(
                &join(path, "anyOf"),
                "anyOf is not supported by kedge (except the int-or-string pattern beside x-kubernetes-int-or-string)",
            ));
        }
        if let Some(all) = obj.get("allOf") {
            let ok = n.int_or_string
                && all.as_array().is_some_and(|a| {
                    a.len() == 1
                        && a[0].as_object().is_some_and(|o| {
                            o.len() == 1 && o.get("anyOf").is_some_and(int_or_string_any_of)
                        })
                });
            if !ok {
                self.api.push(Cause::forbidden(
                    &join(path, "allOf"),
                    "allOf is not supported by kedge",
                ));
            }
        }
        for key in ["oneOf", "not"] {
            if obj.contains_key(key) {
                self.api.push(Cause::forbidden(
                    &join(path, key),
                    &format!("{key} is not supported by kedge"),
                ));
            }
        }
    }

    fn list_and_map_types(&mut self, obj: &Map<String, Value>, n: &mut Node, path: &str) {
        let at = |k: &str| join(path, k);
        let type_shown =
            n.ty.map(|t| go_quote(t.name()))
                .unwrap_or_else(|| "\"\"".into());
        if let Some(mt) = obj.get("x-kubernetes-map-type") {
            if n.ty != Some(Type::Object) {
                let d = "must be object if x-kubernetes-map-type is specified";
                self.api.push(match n.ty {
                    None => Cause::required(&at("type"), d),
                    Some(_) => Cause::invalid(&at("type"), &type_shown, d),
                });
            }
            match mt.as_str() {
                Some("granular") => n.map_type = Some(MapType::Granular),
                Some("atomic") => n.map_type = Some(MapType::Atomic),
                _ => self.api.push(Cause::not_supported(
                    &at("x-kubernetes-map-type"),
                    &go_value(mt),
                    &["atomic".into(), "granular".into()],
                )),
            }
        }
        if let Some(k) = obj.get("x-kubernetes-list-map-keys") {
            match string_list(k) {
                Some(keys) => n.list_map_keys = keys,
                None => self.api.push(Cause::invalid(
                    &at("x-kubernetes-list-map-keys"),
                    &go_value(k),
                    "must be a list of strings",
                )),
            }
        }
        let lt = obj.get("x-kubernetes-list-type");
        if let Some(lt) = lt {
            match lt.as_str() {
                Some(s @ ("atomic" | "set" | "map")) => n.list_type = Some(s.to_string()),
                _ => self.api.push(Cause::not_supported(
                    &at("x-kubernetes-list-type"),
                    &go_value(lt),
                    &["atomic".into(), "set".into(), "map".into()],
                )),
            }
            if n.ty != Some(Type::Array) {
                let d = "must be array if x-kubernetes-list-type is specified";
                self.api.push(match n.ty {
                    None => Cause::required(&at("type"), d),
                    Some(_) => Cause::invalid(&at("type"), &type_shown, d),
                });
            } else if n.list_type.as_deref() == Some("set")
                && let Some(items) = n.items.as_deref()
            {
                if items.ty == Some(Type::Array)
                    && obj["items"]
                        .get("x-kubernetes-list-type")
                        .is_some_and(|t| t != "atomic")
                {
                    self.api.push(Cause::invalid(
                        &at("items.x-kubernetes-list-type"),
                        &go_value(&obj["items"]["x-kubernetes-list-type"]),
                        "must be atomic as item of a list with x-kubernetes-list-type=set",
                    ));
                }
                if items.ty == Some(Type::Object) && items.map_type != Some(MapType::Atomic) {
                    self.api.push(Cause::invalid(
                        &at("items.x-kubernetes-map-type"),
                        "null",
                        "must be atomic as item of a list with x-kubernetes-list-type=set",
                    ));
                }
            }
        }
        if !n.list_map_keys.is_empty() && n.list_type.as_deref() != Some("map") {
            let d = "must be map if x-kubernetes-list-map-keys is non-empty";
            self.api.push(match lt {
                None => Cause::required(&at("x-kubernetes-list-type"), d),
                Some(v) => Cause::invalid(&at("x-kubernetes-list-type"), &go_value(v), d),
            });
        }
        if n.list_type.as_deref() == Some("map") {
            if n.list_map_keys.is_empty() {
                self.api.push(Cause::required(
                    &at("x-kubernetes-list-map-keys"),
                    "must not be empty if x-kubernetes-list-type is map",
                ));
            }
            match n.items.as_deref() {
                None => self.api.push(Cause::required(
                    &at("items"),
                    "must have a schema if x-kubernetes-list-type is map",
                )),
                Some(items) if items.ty != Some(Type::Object) => self.api.push(Cause::invalid(
                    &at("items.type"),
                    &items
                        .ty
                        .map(|t| go_quote(t.name()))
                        .unwrap_or_else(|| "\"\"".into()),
                    "must be object if parent array's x-kubernetes-list-type is map",
                )),
                Some(items) => {
                    let mut seen = Vec::new();
                    for k in &n.list_map_keys {
                        match items.properties.get(k) {
                            Some(p) => {
                                if matches!(p.ty, Some(Type::Array | Type::Object)) {
                                    self.api.push(Cause::invalid(
                                        &at(&format!("items.properties[{k}].type")),
                                        "\"object\"",
                                        "must be a scalar type if parent array's x-kubernetes-list-type is map",
                                    ));
                                }
                                if !items.required.contains(k) && p.default.is_none() {
                                    self.api.push(Cause::required(
                                        &at(&format!("items.properties[{k}].default")),
                                        "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property",
                                    ));
                                }
                                if p.nullable {
                                    self.api.push(Cause::forbidden(
                                        &at(&format!("items.properties[{k}].nullable")),
                                        "this property is in x-kubernetes-list-map-keys, so it cannot be nullable",
                                    ));
                                }
                            }
                            None => self.api.push(Cause::invalid(
                                &at("x-kubernetes-list-map-keys"),
                                &go_value(&obj["x-kubernetes-list-map-keys"]),
                                "entries must all be names of item properties",
                            )),
                        }
                        if seen.contains(&k) {
                            self.api.push(Cause::invalid(
                                &at("x-kubernetes-list-map-keys"),
                                &go_value(&obj["x-kubernetes-list-map-keys"]),
                                "must not contain duplicate entries",
                            ));
                        }
                        seen.push(k);
                    }
                }
            }
        }
        if let (Some(t @ ("set" | "map")), Some(items)) =
            (n.list_type.as_deref(), n.items.as_deref())
            && items.nullable
        {
            self.api.push(Cause::forbidden(
                &at("items.nullable"),
                &format!("cannot be nullable when x-kubernetes-list-type is {t}"),
            ));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Root,
    Item,
    Field,
}

/// Kube's structural invariants (`validateStructuralInvariants`).
pub(super) fn structural(n: &Node, lvl: Level, path: &str, out: &mut Vec<Cause>) {
    let at = |k: &str| join(path, k);
    if n.ty == Some(Type::Array) && n.items.is_none() {
        out.push(Cause::required(&at("items"), "must be specified"));
    }
    if let Some(items) = &n.items {
        structural(items, Level::Item, &at("items"), out);
    }
    for (k, p) in &n.properties {
        structural(p, Level::Field, &at(&format!("properties[{k}]")), out);
    }
    if let Some(ap) = &n.additional {
        if lvl == Level::Root {
            out.push(Cause::forbidden(
                &at("additionalProperties"),
                "must not be used at the root",
            ));
        }
        structural(ap, Level::Field, &at("additionalProperties"), out);
    }
    if n.int_or_string && n.preserve_unknown {
        out.push(Cause::invalid(
            &at("x-kubernetes-preserve-unknown-fields"),
            "true",
            "must be false if x-kubernetes-int-or-string is true",
        ));
    }
    if n.int_or_string && n.embedded {
        out.push(Cause::invalid(
            &at("x-kubernetes-embedded-resource"),
            "true",
            "must be false if x-kubernetes-int-or-string is true",
        ));
    }
    let shown = |t: Option<Type>| {
        t.map(|t| go_quote(t.name()))
            .unwrap_or_else(|| "\"\"".into())
    };
    if n.embedded && n.ty != Some(Type::Object) {
        let d = "must be object if x-kubernetes-embedded-resource is true";
        out.push(match n.ty {
            None => Cause::required(&at("type"), d),
            Some(_) => Cause::invalid(&at("type"), &shown(n.ty), d),
        });
    } else if n.ty.is_none() && !n.int_or_string && !n.preserve_unknown {
        let d = match lvl {
            Level::Root => "must not be empty at the root",
            Level::Item => "must not be empty for specified array items",
            Level::Field => "must not be empty for specified object fields",
        };
        out.push(Cause::required(&at("type"), d));
    }
    if n.embedded && n.additional.is_some() {
        out.push(Cause::forbidden(
            &at("additionalProperties"),
            "must not be used if x-kubernetes-embedded-resource is set",
        ));
    }
    if lvl == Level::Root && n.ty.is_some() && n.ty != Some(Type::Object) {
        out.push(Cause::invalid(
            &at("type"),
            &shown(n.ty),
            "must be object at the root",
        ));
    }
    let check_meta = lvl == Level::Root || n.embedded;
    for k in ["kind", "apiVersion"] {
        if let Some(p) = n.properties.get(k)
            && check_meta
            && p.ty != Some(Type::String)
        {
            out.push(Cause::invalid(
                &at(&format!("properties[{k}].type")),
                &shown(p.ty),
                "must be string",
            ));
        }
    }
    if let Some(m) = n.properties.get("metadata") {
        let mpath = at("properties[metadata]");
        if check_meta && m.ty != Some(Type::Object) {
            out.push(Cause::invalid(
                &join(&mpath, "type"),
                &shown(m.ty),
                "must be object",
            ));
        }
        if lvl == Level::Root && !root_metadata_is_plain(m) {
            out.push(Cause::forbidden(
                &mpath,
                "must not specify anything other than name and generateName, but metadata is implicitly specified",
            ));
        }
    }
    if n.embedded && !n.preserve_unknown && n.properties.is_empty() {
        out.push(Cause::required(
            &at("properties"),
            "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
        ));
    }
}

/// Root `metadata` may give a type and restrict `name` and `generateName`, nothing else.
pub(super) fn root_metadata_is_plain(m: &Node) -> bool {
    let props_ok = m
        .properties
        .keys()
        .all(|k| k == "name" || k == "generateName");
    props_ok
        && !m.nullable
        && m.format.is_none()
        && m.enumeration.is_none()
        && m.pattern.is_none()
        && m.minimum.is_none()
        && m.maximum.is_none()
        && !m.exclusive_minimum
        && !m.exclusive_maximum
        && m.multiple_of.is_none()
        && m.min_length.is_none()
        && m.max_length.is_none()
        && m.min_items.is_none()
        && m.max_items.is_none()
        && m.min_properties.is_none()
        && m.max_properties.is_none()
        && m.required.is_empty()
        && m.additional.is_none()
        && m.items.is_none()
        && !m.int_or_string
        && !m.preserve_unknown
        && !m.embedded
        && m.list_type.is_none()
        && m.list_map_keys.is_empty()
        && m.map_type.is_none()
}

/// Every default must be pruned and validate against its own node (kube's
/// `defaulting.ValidateDefaults`).
pub(super) fn validate_defaults(n: &Node, path: &str, out: &mut Vec<Cause>) {
    if let Some(d) = &n.default {
        let field = join(path, "default");
        let mut pruned = d.clone();
        let mut paths = Vec::new();
        prune(&mut pruned, Some(n), n.embedded, "", &mut paths);
        if !paths.is_empty() {
            out.push(Cause::invalid(
                &field,
                &go_value(d),
                "must not have unknown fields",
            ));
        }
        validate_value(n, d, "", &field, out);
        embedded_check(n, d, &field, out);
        list_check(n, d, &field, out);
    }
    if let Some(items) = &n.items {
        validate_defaults(items, &join(path, "items"), out);
    }
    for (k, p) in &n.properties {
        validate_defaults(p, &join(path, &format!("properties[{k}]")), out);
    }
    if let Some(ap) = &n.additional {
        validate_defaults(ap, &join(path, "additionalProperties"), out);
    }
}
