use serde_json::{Value, json};

use super::{Cause, ListType, MapType, Schema};

fn schema(spec: Value) -> Schema {
    Schema::parse(&json!({"type": "object", "properties": {"spec": spec}}))
        .unwrap_or_else(|c| panic!("schema refused: {c:#?}"))
}

fn refused(s: Value) -> Vec<String> {
    match Schema::parse(&s) {
        Ok(_) => panic!("schema accepted: {s}"),
        Err(causes) => causes.iter().map(Cause::to_string).collect(),
    }
}

fn refused_spec(spec: Value) -> Vec<String> {
    refused(json!({"type": "object", "properties": {"spec": spec}}))
}

fn errors(s: &Schema, obj: Value) -> Vec<String> {
    s.validate(&obj).iter().map(Cause::to_string).collect()
}

fn spec_errors(s: &Schema, spec: Value) -> Vec<String> {
    errors(
        s,
        json!({"apiVersion": "x.io/v1", "kind": "X", "spec": spec}),
    )
}

fn obj(spec: Value) -> Value {
    json!({"apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "a"}, "spec": spec})
}

// ----- parse: structural rules -----

#[test]
fn parse_accepts_a_typical_schema() {
    let s = Schema::parse(&json!({
        "type": "object",
        "description": "a thing",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "string", "enum": ["S", "M"], "default": "S"},
                "port": {"x-kubernetes-int-or-string": true,
                         "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "blob": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "list": {"type": "array", "items": {"type": "string"}, "example": ["a"]}
            }},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }
    }));
    assert!(s.is_ok(), "{:?}", s.err());
}

#[test]
fn parse_requires_type_on_every_node() {
    assert_eq!(
        refused_spec(json!({"type": "object", "properties": {"a": {}}})),
        vec![
            "properties[spec].properties[a].type: Required value: must not be empty for specified object fields"
        ]
    );
    assert_eq!(
        refused(json!({"properties": {}})),
        vec!["type: Required value: must not be empty at the root"]
    );
    assert_eq!(
        refused_spec(json!({"type": "array", "items": {}})),
        vec![
            "properties[spec].items.type: Required value: must not be empty for specified array items"
        ]
    );
    // No type needed with int-or-string or preserve-unknown-fields.
    schema(json!({"type": "object", "properties": {
        "a": {"x-kubernetes-int-or-string": true},
        "b": {"x-kubernetes-preserve-unknown-fields": true}}}));
}

#[test]
fn parse_root_must_be_object() {
    assert_eq!(
        refused(json!({"type": "string"})),
        vec!["type: Invalid value: \"string\": must be object at the root"]
    );
}

#[test]
fn parse_unknown_type_is_not_supported() {
    assert_eq!(
        refused_spec(json!({"type": "float"})),
        vec![
            "properties[spec].type: Unsupported value: \"float\": supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\"",
            "properties[spec].type: Required value: must not be empty for specified object fields",
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "null"}))[0],
        "properties[spec].type: Forbidden: type cannot be set to null, use nullable as an alternative"
    );
}

#[test]
fn parse_arrays_need_items() {
    assert_eq!(
        refused_spec(json!({"type": "array"})),
        vec!["properties[spec].items: Required value: must be specified"]
    );
    assert_eq!(
        refused_spec(json!({"type": "array", "items": [{"type": "string"}]})),
        vec![
            "properties[spec].items: Forbidden: items must be a schema object and not an array",
            "properties[spec].items: Required value: must be specified",
        ]
    );
}

#[test]
fn parse_properties_and_additional_properties_are_exclusive() {
    assert_eq!(
        refused_spec(
            json!({"type": "object", "properties": {"a": {"type": "string"}},
            "additionalProperties": {"type": "string"}})
        ),
        vec![
            "properties[spec].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
        ]
    );
}

#[test]
fn parse_refuses_additional_properties_at_root_and_booleans() {
    assert_eq!(
        refused(json!({"type": "object", "additionalProperties": {"type": "string"}})),
        vec!["additionalProperties: Forbidden: must not be used at the root"]
    );
    let c = refused_spec(json!({"type": "object", "additionalProperties": true}));
    assert_eq!(c.len(), 1);
    assert!(c[0].starts_with("properties[spec].additionalProperties: Forbidden: a boolean additionalProperties is not supported by kedge"));
}

#[test]
fn parse_refuses_cel_with_the_path() {
    let c = refused_spec(json!({"type": "object",
        "x-kubernetes-validations": [{"rule": "self.a > 0"}]}));
    assert_eq!(
        c,
        vec![
            "properties[spec].x-kubernetes-validations: Forbidden: CEL validation rules are not supported by kedge"
        ]
    );
}

#[test]
fn parse_refuses_what_kube_refuses() {
    let c = refused_spec(json!({"type": "object", "$ref": "#/definitions/x",
        "definitions": {}, "patternProperties": {"^a": {"type": "string"}}}));
    assert!(
        c.contains(&"properties[spec].$ref: Forbidden: $ref is not supported".to_string()),
        "{c:?}"
    );
    assert!(c.contains(
        &"properties[spec].definitions: Forbidden: definitions is not supported".to_string()
    ));
    assert!(
        c.contains(
            &"properties[spec].patternProperties: Forbidden: patternProperties is not supported"
                .to_string()
        )
    );
    assert_eq!(
        refused_spec(json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true})),
        vec![
            "properties[spec].uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        ]
    );
    assert_eq!(
        refused(json!({"type": "object", "nullable": true})),
        vec!["nullable: Forbidden: nullable cannot be true at the root"]
    );
    assert_eq!(
        refused_spec(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": false})),
        vec![
            "properties[spec].x-kubernetes-preserve-unknown-fields: Invalid value: false: must be true or undefined"
        ]
    );
}

#[test]
fn parse_refuses_junctors_except_int_or_string_shapes() {
    for kw in ["allOf", "anyOf", "oneOf"] {
        let c = refused_spec(json!({"type": "string", kw: [{"pattern": "a"}]}));
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            c[0].starts_with(&format!(
                "properties[spec].{kw}: Forbidden: {kw} is not supported by kedge"
            )),
            "{c:?}"
        );
    }
    assert_eq!(
        refused_spec(json!({"type": "string", "not": {"pattern": "a"}})),
        vec!["properties[spec].not: Forbidden: not is not supported by kedge"]
    );
    // The generators' int-or-string shapes are fine.
    schema(json!({"x-kubernetes-int-or-string": true,
        "allOf": [{"anyOf": [{"type": "integer"}, {"type": "string"}]}]}));
    // ...but only beside the extension.
    assert!(
        Schema::parse(&json!({"type": "object", "properties": {"a": {
        "anyOf": [{"type": "integer"}, {"type": "string"}]}}}))
        .is_err()
    );
}

#[test]
fn parse_refuses_unknown_keywords_and_formats_kedge_cannot_check() {
    assert_eq!(
        refused_spec(json!({"type": "string", "x-kubernetes-patch-merge-key": "name"})),
        vec![
            "properties[spec].x-kubernetes-patch-merge-key: Forbidden: unknown schema keyword, not supported by kedge"
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "string", "format": "isbn"})),
        vec!["properties[spec].format: Forbidden: format \"isbn\" is not supported by kedge"]
    );
    // Formats kube does not know are ignored, as kube ignores them.
    let s = schema(json!({"type": "string", "format": "made-up"}));
    assert!(spec_errors(&s, json!("anything")).is_empty());
}

#[test]
fn parse_root_metadata_may_only_restrict_name_and_generate_name() {
    Schema::parse(
        &json!({"type": "object", "properties": {"metadata": {"type": "object",
        "properties": {"name": {"type": "string", "maxLength": 10}}}}}),
    )
    .unwrap();
    assert_eq!(
        refused(
            json!({"type": "object", "properties": {"metadata": {"type": "object",
            "properties": {"labels": {"type": "object"}}}}})
        ),
        vec![
            "properties[metadata]: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified"
        ]
    );
    assert_eq!(
        refused(json!({"type": "object", "properties": {"metadata": {"type": "string"}}})),
        vec!["properties[metadata].type: Invalid value: \"string\": must be object"]
    );
    assert_eq!(
        refused(json!({"type": "object", "properties": {"kind": {"type": "integer"}}})),
        vec!["properties[kind].type: Invalid value: \"integer\": must be string"]
    );
    // Nested metadata is an ordinary field.
    schema(
        json!({"type": "object", "properties": {"metadata": {"type": "object",
        "properties": {"labels": {"type": "object"}}}}}),
    );
}

#[test]
fn parse_defaults_forbidden_in_top_level_meta() {
    assert_eq!(
        refused(
            json!({"type": "object", "properties": {"kind": {"type": "string", "default": "X"}}})
        ),
        vec!["properties[kind].default: Forbidden: must not be set in top-level kind"]
    );
    let c = refused(
        json!({"type": "object", "properties": {"metadata": {"type": "object",
        "properties": {"name": {"type": "string", "default": "n"}}}}}),
    );
    assert_eq!(
        c,
        vec![
            "properties[metadata].properties[name].default: Forbidden: must not be set in top-level metadata"
        ]
    );
    // Embedded resources' metadata: not inside additionalProperties.
    let c = refused_spec(
        json!({"type": "object", "x-kubernetes-embedded-resource": true,
        "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object",
            "additionalProperties": {"type": "string", "default": "x"}}}}}}),
    );
    assert_eq!(
        c,
        vec![
            "properties[spec].properties[metadata].properties[labels].additionalProperties.default: Forbidden: must not be set inside additionalProperties applying to object metadata"
        ]
    );
}

#[test]
fn parse_defaults_must_validate_and_be_pruned() {
    assert_eq!(
        refused_spec(json!({"type": "object", "properties": {
            "replicas": {"type": "integer", "default": "one"}}})),
        vec![
            "properties[spec].properties[replicas].default: Invalid value: \"string\": in body must be of type integer: \"string\""
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "string", "format": "email", "default": "abc"})),
        vec![
            "properties[spec].default: Invalid value: \"abc\": in body must be of type email: \"abc\""
        ]
    );
    assert_eq!(
        refused_spec(
            json!({"type": "object", "properties": {"a": {"type": "string"}},
            "default": {"a": "x", "b": 1}})
        ),
        vec![
            "properties[spec].default: Invalid value: map[string]interface {}{\"a\":\"x\", \"b\":1}: must not have unknown fields"
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "object", "required": ["a"],
            "properties": {"a": {"type": "string"}}, "default": {}})),
        vec!["properties[spec].default.a: Required value"]
    );
}

#[test]
fn parse_invalid_pattern() {
    let c = refused_spec(json!({"type": "string", "pattern": "a("}));
    assert_eq!(c.len(), 1);
    assert!(
        c[0].starts_with("properties[spec].pattern: Invalid value: \"a(\": must be a valid regular expression, but isn't: "),
        "{c:?}"
    );
}

#[test]
fn parse_embedded_resource_rules() {
    assert_eq!(
        refused_spec(json!({"x-kubernetes-embedded-resource": true,
            "x-kubernetes-preserve-unknown-fields": true})),
        vec![
            "properties[spec].type: Required value: must be object if x-kubernetes-embedded-resource is true"
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "object", "x-kubernetes-embedded-resource": true})),
        vec![
            "properties[spec].properties: Required value: must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields"
        ]
    );
    assert_eq!(
        refused_spec(json!({"x-kubernetes-int-or-string": true,
            "x-kubernetes-preserve-unknown-fields": true})),
        vec![
            "properties[spec].x-kubernetes-preserve-unknown-fields: Invalid value: true: must be false if x-kubernetes-int-or-string is true"
        ]
    );
}

#[test]
fn parse_list_type_rules() {
    assert_eq!(
        refused_spec(json!({"type": "array", "items": {"type": "string"},
            "x-kubernetes-list-type": "bag"})),
        vec![
            "properties[spec].x-kubernetes-list-type: Unsupported value: \"bag\": supported values: \"atomic\", \"set\", \"map\""
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "string", "x-kubernetes-list-type": "set"})),
        vec![
            "properties[spec].type: Invalid value: \"string\": must be array if x-kubernetes-list-type is specified"
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "array", "x-kubernetes-list-type": "map",
            "items": {"type": "object", "properties": {"name": {"type": "string"}}}})),
        vec![
            "properties[spec].x-kubernetes-list-map-keys: Required value: must not be empty if x-kubernetes-list-type is map"
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "array", "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": {"type": "object", "properties": {"name": {"type": "string"}}}})),
        vec![
            "properties[spec].items.properties[name].default: Required value: this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property"
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "array", "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["nope"],
            "items": {"type": "object", "properties": {"name": {"type": "string"}}}})),
        vec![
            "properties[spec].x-kubernetes-list-map-keys: Invalid value: []interface {}{\"nope\"}: entries must all be names of item properties"
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "array", "items": {"type": "string"},
            "x-kubernetes-list-map-keys": ["a"]})),
        vec![
            "properties[spec].x-kubernetes-list-type: Required value: must be map if x-kubernetes-list-map-keys is non-empty"
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "object", "x-kubernetes-map-type": "loose"})),
        vec![
            "properties[spec].x-kubernetes-map-type: Unsupported value: \"loose\": supported values: \"atomic\", \"granular\""
        ]
    );
    assert_eq!(
        refused_spec(json!({"type": "array", "x-kubernetes-list-type": "set",
            "items": {"type": "string", "nullable": true}})),
        vec![
            "properties[spec].items.nullable: Forbidden: cannot be nullable when x-kubernetes-list-type is set"
        ]
    );
}

#[test]
fn cause_under_prefixes_the_field() {
    let c = refused_spec(json!({"type": "object", "properties": {"a": {}}}));
    assert_eq!(c.len(), 1);
    let causes = Schema::parse(&json!({"type": "object", "properties": {"spec": {}}})).unwrap_err();
    let c = causes[0]
        .clone()
        .under("spec.versions[0].schema.openAPIV3Schema");
    assert_eq!(c.reason, "FieldValueRequired");
    assert_eq!(
        c.field,
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].type"
    );
    assert_eq!(
        c.message,
        "Required value: must not be empty for specified object fields"
    );
}

// ----- validate -----

#[test]
fn validate_types() {
    let s = schema(json!({"type": "object", "properties": {
        "s": {"type": "string"}, "i": {"type": "integer"}, "n": {"type": "number"},
        "b": {"type": "boolean"}, "o": {"type": "object"}, "a": {"type": "array", "items": {"type": "string"}}}}));
    assert!(
        spec_errors(
            &s,
            json!({"s": "x", "i": 1, "n": 1.5, "b": true, "o": {}, "a": []})
        )
        .is_empty()
    );
    // An integral float is an integer; an integer is a number.
    assert!(spec_errors(&s, json!({"i": 2.0, "n": 3})).is_empty());
    assert_eq!(
        spec_errors(
            &s,
            json!({"s": 1, "i": "string", "n": "x", "b": "yes", "o": [], "a": {}})
        ),
        vec![
            "spec.a: Invalid value: \"object\": spec.a in body must be of type array: \"object\"",
            "spec.b: Invalid value: \"string\": spec.b in body must be of type boolean: \"string\"",
            "spec.i: Invalid value: \"string\": spec.i in body must be of type integer: \"string\"",
            "spec.n: Invalid value: \"string\": spec.n in body must be of type number: \"string\"",
            "spec.o: Invalid value: \"array\": spec.o in body must be of type object: \"array\"",
            "spec.s: Invalid value: \"integer\": spec.s in body must be of type string: \"integer\"",
        ]
    );
    assert_eq!(
        spec_errors(&s, json!({"i": 1.5})),
        vec![
            "spec.i: Invalid value: \"number\": spec.i in body must be of type integer: \"number\""
        ]
    );
    let c = s.validate(&obj(json!({"i": "x"})));
    assert_eq!(c[0].reason, "FieldValueTypeInvalid");
}

#[test]
fn validate_nullable() {
    let s = schema(json!({"type": "object", "properties": {
        "a": {"type": "string", "nullable": true}, "b": {"type": "string"}}}));
    assert!(spec_errors(&s, json!({"a": null})).is_empty());
    assert_eq!(
        spec_errors(&s, json!({"b": null})),
        vec!["spec.b: Invalid value: \"null\": spec.b in body must be of type string: \"null\""]
    );
}

#[test]
fn validate_required() {
    let s = schema(
        json!({"type": "object", "required": ["name", "size"], "properties": {
        "name": {"type": "string"}, "size": {"type": "string"}}}),
    );
    assert_eq!(
        spec_errors(&s, json!({"size": "S"})),
        vec!["spec.name: Required value"]
    );
    let c = s.validate(&obj(json!({})));
    assert_eq!(c.len(), 2);
    assert_eq!(
        (c[0].reason, c[0].field.as_str()),
        ("FieldValueRequired", "spec.name")
    );
    let root = Schema::parse(&json!({"type": "object", "required": ["spec"],
        "properties": {"spec": {"type": "object"}}}))
    .unwrap();
    assert_eq!(
        errors(&root, json!({"kind": "X"})),
        vec!["spec: Required value"]
    );
}

#[test]
fn validate_enum() {
    let s = schema(json!({"type": "object", "properties": {
        "size": {"type": "string", "enum": ["S", "M"]},
        "n": {"type": "integer", "enum": [1, 2]}}}));
    assert!(spec_errors(&s, json!({"size": "M", "n": 2})).is_empty());
    assert_eq!(
        spec_errors(&s, json!({"size": "XL", "n": 3})),
        vec![
            "spec.n: Unsupported value: 3: supported values: \"1\", \"2\"",
            "spec.size: Unsupported value: \"XL\": supported values: \"S\", \"M\"",
        ]
    );
    assert_eq!(
        s.validate(&obj(json!({"size": "XL"})))[0].reason,
        "FieldValueNotSupported"
    );
}

#[test]
fn validate_pattern_and_lengths() {
    let s = schema(json!({"type": "object", "properties": {
        "name": {"type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 5}}}));
    assert!(spec_errors(&s, json!({"name": "abc"})).is_empty());
    assert_eq!(
        spec_errors(&s, json!({"name": "ab1"})),
        vec!["spec.name: Invalid value: \"ab1\": spec.name in body should match '^[a-z]+$'"]
    );
    assert_eq!(
        spec_errors(&s, json!({"name": "a"})),
        vec!["spec.name: Invalid value: \"a\": spec.name in body should be at least 2 chars long"]
    );
    let c = s.validate(&obj(json!({"name": "abcdef"})));
    assert_eq!(c.len(), 1, "the first failing string check only");
    assert_eq!(c[0].reason, "FieldValueTooLong");
    assert_eq!(
        c[0].to_string(),
        "spec.name: Too long: may not be more than 5 bytes"
    );
    // Lengths count characters, as kube does.
    assert!(spec_errors(&s, json!({"name": "éé"})).len() == 1); // pattern only
    let s = schema(json!({"type": "string", "maxLength": 2}));
    assert!(spec_errors(&s, json!("éé")).is_empty());
}

#[test]
fn validate_numbers() {
    let s = schema(json!({"type": "object", "properties": {
        "r": {"type": "integer", "minimum": 1, "maximum": 10},
        "x": {"type": "number", "minimum": 0, "exclusiveMinimum": true,
              "maximum": 1.5, "exclusiveMaximum": true},
        "m": {"type": "integer", "multipleOf": 5},
        "f": {"type": "number", "multipleOf": 0.5}}}));
    assert!(spec_errors(&s, json!({"r": 10, "x": 1, "m": 15, "f": 2.5})).is_empty());
    assert_eq!(
        spec_errors(&s, json!({"r": 11, "x": 0, "m": 7, "f": 0.3})),
        vec![
            "spec.f: Invalid value: 0.3: spec.f in body should be a multiple of 0.5",
            "spec.m: Invalid value: 7: spec.m in body should be a multiple of 5",
            "spec.r: Invalid value: 11: spec.r in body should be less than or equal to 10",
            "spec.x: Invalid value: 0: spec.x in body should be greater than 0",
        ]
    );
    assert_eq!(
        spec_errors(&s, json!({"r": 0, "x": 1.5})),
        vec![
            "spec.r: Invalid value: 0: spec.r in body should be greater than or equal to 1",
            "spec.x: Invalid value: 1.5: spec.x in body should be less than 1.5",
        ]
    );
}

#[test]
fn validate_items_and_properties_counts() {
    let s = schema(json!({"type": "object", "properties": {
        "l": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer"}},
        "m": {"type": "object", "minProperties": 1, "maxProperties": 2,
              "additionalProperties": {"type": "string"}}}}));
    assert!(spec_errors(&s, json!({"l": [1], "m": {"a": "x"}})).is_empty());
    assert_eq!(
        spec_errors(&s, json!({"l": [], "m": {}})),
        vec![
            "spec.l: Invalid value: 0: spec.l in body should have at least 1 items",
            "spec.m: Invalid value: 0: spec.m in body should have at least 1 properties",
        ]
    );
    let c = s.validate(&obj(
        json!({"l": [1, 2, 3], "m": {"a": "x", "b": "y", "c": 1}}),
    ));
    let shown: Vec<String> = c.iter().map(Cause::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "spec.l: Too many: 3: must have at most 2 items",
            // kube stops at a property-count error, without looking inside.
            "spec.m: Too many: 3: must have at most 2 items",
        ]
    );
    assert_eq!(c[0].reason, "FieldValueTooMany");
}

#[test]
fn validate_nested_arrays_of_objects_and_maps() {
    let s = schema(json!({"type": "object", "properties": {
        "containers": {"type": "array", "items": {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"},
                "ports": {"type": "array", "items": {"type": "integer", "maximum": 65535}}}}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}));
    assert_eq!(
        spec_errors(
            &s,
            json!({
            "containers": [{"name": "a", "ports": [80, 70000]}, {"ports": ["x"]}],
            "labels": {"app": 1}})
        ),
        vec![
            "spec.containers[0].ports[1]: Invalid value: 70000: spec.containers[0].ports[1] in body should be less than or equal to 65535",
            "spec.containers[1].ports[0]: Invalid value: \"string\": spec.containers[1].ports[0] in body must be of type integer: \"string\"",
            "spec.containers[1].name: Required value",
            "spec.labels.app: Invalid value: \"integer\": spec.labels.app in body must be of type string: \"integer\"",
        ]
    );
}

#[test]
fn validate_int_or_string() {
    let s = schema(json!({"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}],
                 "pattern": "^[a-z]+$"}}}));
    assert!(spec_errors(&s, json!({"port": 80})).is_empty());
    assert!(spec_errors(&s, json!({"port": "http"})).is_empty());
    assert_eq!(
        spec_errors(&s, json!({"port": true})),
        vec![
            "spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\""
        ]
    );
    assert_eq!(
        spec_errors(&s, json!({"port": "HTTP"})),
        vec!["spec.port: Invalid value: \"HTTP\": spec.port in body should match '^[a-z]+$'"]
    );
}

#[test]
fn validate_preserve_unknown_fields_checks_known_fields_only() {
    let s = schema(
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
        "properties": {"a": {"type": "integer"}}}),
    );
    assert!(spec_errors(&s, json!({"a": 1, "whatever": {"x": [1]}})).is_empty());
    assert_eq!(spec_errors(&s, json!({"a": "x"})).len(), 1);
    let any = schema(json!({"x-kubernetes-preserve-unknown-fields": true}));
    assert!(spec_errors(&any, json!([1, "x", null])).is_empty());
}

#[test]
fn validate_formats() {
    let cases: &[(&str, &str, &str)] = &[
        ("date-time", "2024-01-02T03:04:05Z", "2024-01-02 nope"),
        ("date", "2024-02-29", "2024-13-01"),
        ("uuid", "123e4567-e89b-12d3-a456-426614174000", "123e4567"),
        (
            "uuid4",
            "123e4567-e89b-42d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        ("ipv4", "10.0.0.1", "10.0.0.256"),
        ("ipv6", "fe80::1", "10.0.0.1"),
        ("cidr", "10.0.0.0/8", "10.0.0.0/33"),
        ("mac", "00:1a:2b:3c:4d:5e", "00:1a:2b"),
        ("hostname", "a.example.com", "-bad-.com"),
        ("email", "a@example.com", "not-an-email"),
        ("uri", "https://example.com/x", "no scheme"),
        ("byte", "aGVsbG8=", "a"),
        ("quantity", "100Mi", "ten"),
        ("hexcolor", "#fff", "#ffff"),
        ("bsonobjectid", "507f1f77bcf86cd799439011", "507f"),
        ("ssn", "123-45-6789", "12-345-6789"),
        ("rgbcolor", "rgb(1, 2, 255)", "rgb(256,0,0)"),
    ];
    for (format, good, bad) in cases {
        let s = schema(json!({"type": "string", "format": format}));
        assert!(
            spec_errors(&s, json!(good)).is_empty(),
            "{format} refused {good}"
        );
        assert_eq!(
            spec_errors(&s, json!(bad)),
            vec![format!(
                "spec: Invalid value: {bad:?}: spec in body must be of type {format}: {bad:?}"
            )],
            "{format} accepted {bad}"
        );
    }
    for (format, good) in [
        ("uuid3", "123e4567-e89b-32d3-a456-426614174000"),
        ("uuid5", "123e4567-e89b-52d3-a456-426614174000"),
        ("mac", "00-1a-2b-3c-4d-5e"),
        ("mac", "001a.2b3c.4d5e"),
        ("date-time", "2024-01-02T03:04:05.123+02:00"),
        ("uri", "/relative/path"),
        ("password", "anything at all"),
    ] {
        let s = schema(json!({"type": "string", "format": format}));
        assert!(
            spec_errors(&s, json!(good)).is_empty(),
            "{format} refused {good}"
        );
    }
    let s = schema(json!({"type": "string", "format": "mac"}));
    assert_eq!(
        spec_errors(&s, json!("00:1a-2b:3c:4d:5e")).len(),
        1,
        "mixed separators"
    );
    for re in [
        &super::UUID,
        &super::UUID3,
        &super::UUID4,
        &super::UUID5,
        &super::URI_SCHEME,
        &super::BSON_OBJECT_ID,
        &super::HEX_COLOR,
        &super::RGB_COLOR,
        &super::SSN,
        &super::QUANTITY,
    ] {
        std::sync::LazyLock::force(re);
    }
    // int32 and friends check nothing, as in kube.
    let s = schema(json!({"type": "integer", "format": "int32"}));
    assert!(spec_errors(&s, json!(1_i64 << 40)).is_empty());
}

#[test]
fn validate_embedded_resource() {
    let s = schema(json!({"type": "object", "properties": {
        "template": {"type": "object", "x-kubernetes-embedded-resource": true,
            "x-kubernetes-preserve-unknown-fields": true}}}));
    assert!(spec_errors(&s, json!({"template": {"apiVersion": "v1", "kind": "Pod"}})).is_empty());
    assert_eq!(
        spec_errors(&s, json!({"template": {}})),
        vec![
            "spec.template.apiVersion: Required value: must not be empty",
            "spec.template.kind: Required value: must not be empty",
        ]
    );
    let c = spec_errors(
        &s,
        json!({"template": {"apiVersion": "a/b/c", "kind": "Bad_Kind"}}),
    );
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(
        c[0],
        "spec.template.apiVersion: Invalid value: \"a/b/c\": unexpected GroupVersion string: a/b/c"
    );
    assert!(c[1].starts_with("spec.template.kind: Invalid value: \"Bad_Kind\": may have mixed case, but should otherwise match: a DNS-1035 label"));
}

#[test]
fn validate_list_type_set_and_map() {
    let s = schema(json!({"type": "object", "properties": {
        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "ports": {"type": "array", "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["port", "protocol"],
            "items": {"type": "object", "required": ["port"], "properties": {
                "port": {"type": "integer"},
                "protocol": {"type": "string", "default": "TCP"}}}}}}));
    assert!(
        spec_errors(
            &s,
            json!({"tags": ["a", "b"],
        "ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}]})
        )
        .is_empty()
    );
    let c = s.validate(&obj(json!({"tags": ["a", "b", "a", "a"],
        "ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}]})));
    let shown: Vec<String> = c.iter().map(Cause::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "spec.ports[1]: Duplicate value: map[string]interface {}{\"port\":80, \"protocol\":\"TCP\"}",
            "spec.tags[2]: Duplicate value: \"a\"",
        ]
    );
    assert_eq!(c[0].reason, "FieldValueDuplicate");
    assert_eq!(
        spec_errors(&s, json!({"ports": [{"port": 1}, "x"]})),
        vec![
            "spec.ports[1]: Invalid value: \"string\": spec.ports[1] in body must be of type object: \"string\"",
            "spec.ports[1]: Invalid value: \"x\": must be an object for an array of list-type map",
        ]
    );
}

#[test]
fn validate_root_metadata_name_restriction() {
    let s = Schema::parse(
        &json!({"type": "object", "properties": {"metadata": {"type": "object",
        "properties": {"name": {"type": "string", "maxLength": 3}}}}}),
    )
    .unwrap();
    assert_eq!(
        errors(&s, json!({"metadata": {"name": "toolong"}})),
        vec!["metadata.name: Too long: may not be more than 3 bytes"]
    );
}

// ----- default -----

#[test]
fn default_fills_absent_fields_deeply() {
    let s = schema(json!({"type": "object", "default": {}, "properties": {
        "replicas": {"type": "integer", "default": 1},
        "strategy": {"type": "object", "default": {}, "properties": {
            "type": {"type": "string", "default": "Rolling"}}},
        "containers": {"type": "array", "items": {"type": "object", "properties": {
            "pull": {"type": "string", "default": "IfNotPresent"}}}},
        "labels": {"type": "object", "additionalProperties": {"type": "object",
            "properties": {"v": {"type": "string", "default": "x"}}}}}}));
    let mut o = json!({"kind": "X"});
    s.default(&mut o);
    assert_eq!(
        o,
        json!({"kind": "X", "spec": {"replicas": 1, "strategy": {"type": "Rolling"}}})
    );

    let mut o =
        obj(json!({"replicas": 3, "containers": [{}, {"pull": "Always"}], "labels": {"a": {}}}));
    s.default(&mut o);
    assert_eq!(
        o["spec"],
        json!({"replicas": 3, "strategy": {"type": "Rolling"},
            "containers": [{"pull": "IfNotPresent"}, {"pull": "Always"}], "labels": {"a": {"v": "x"}}})
    );
}

#[test]
fn default_handles_nulls_as_kube() {
    let s = schema(json!({"type": "object", "properties": {
        "a": {"type": "string", "default": "d"},
        "b": {"type": "string"},
        "c": {"type": "string", "nullable": true, "default": "d"},
        "d": {"type": "string", "nullable": true},
        "l": {"type": "array", "items": {"type": "string", "default": "i"}}}}));
    let mut o =
        obj(json!({"a": null, "b": null, "c": null, "d": null, "l": [null, "x"], "u": null}));
    s.default(&mut o);
    // Non-nullable with a default: defaulted. Without: dropped. Nullable: kept.
    // Unknown fields are not the defaulter's business (pruning drops them).
    assert_eq!(
        o["spec"],
        json!({"a": "d", "c": null, "d": null, "l": ["i", "x"], "u": null})
    );
}

#[test]
fn default_under_preserve_unknown_and_no_defaults_is_a_no_op() {
    let s = schema(
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
        "properties": {"a": {"type": "integer", "default": 5}}}),
    );
    let mut o = obj(json!({"x": {"y": null}}));
    s.default(&mut o);
    assert_eq!(o["spec"], json!({"x": {"y": null}, "a": 5}));
}

// ----- prune -----

#[test]
fn prune_drops_unknown_fields_and_reports_them() {
    let s = schema(json!({"type": "object", "properties": {
        "a": {"type": "string"},
        "list": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        "map": {"type": "object", "additionalProperties": {"type": "object",
            "properties": {"v": {"type": "integer"}}}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "properties": {"strict": {"type": "object", "properties": {"s": {"type": "string"}}}}}}}));
    let mut o = json!({
        "apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "n", "whatever": 1},
        "top": 1,
        "spec": {"a": "x", "foo": 1,
            "list": [{"k": "1", "extra": true}, {"k": "2"}],
            "map": {"m1": {"v": 1, "junk": 2}},
            "free": {"anything": {"deep": 1}, "strict": {"s": "ok", "no": 1}}}});
    let pruned = s.prune(&mut o);
    assert_eq!(
        pruned,
        vec![
            "spec.foo",
            "spec.free.strict.no",
            "spec.list[0].extra",
            "spec.map.m1.junk",
            "top",
        ]
    );
    assert_eq!(
        o,
        json!({"apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "n", "whatever": 1},
            "spec": {"a": "x", "list": [{"k": "1"}, {"k": "2"}], "map": {"m1": {"v": 1}},
                "free": {"anything": {"deep": 1}, "strict": {"s": "ok"}}}})
    );
}

#[test]
fn prune_keeps_embedded_resource_meta_and_empties_untyped_objects() {
    let s = schema(json!({"type": "object", "properties": {
        "template": {"type": "object", "x-kubernetes-embedded-resource": true,
            "properties": {"spec": {"type": "object", "properties": {"x": {"type": "string"}}}}},
        "scalars": {"type": "array", "items": {"type": "string"}}}}));
    let mut o = obj(json!({"template": {"apiVersion": "v1", "kind": "Pod",
        "metadata": {"labels": {"a": "b"}}, "spec": {"x": "y", "z": 1}, "status": {}},
        "scalars": ["a", {"o": 1}]}));
    let pruned = s.prune(&mut o);
    assert_eq!(
        pruned,
        vec![
            "spec.scalars[1].o",
            "spec.template.spec.z",
            "spec.template.status"
        ]
    );
    assert_eq!(
        o["spec"],
        json!({"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"a": "b"}},
            "spec": {"x": "y"}}, "scalars": ["a", {}]})
    );
}

#[test]
fn prune_default_validate_pipeline() {
    let s = schema(
        json!({"type": "object", "required": ["size"], "properties": {
        "size": {"type": "string", "enum": ["S", "M"], "default": "S"},
        "replicas": {"type": "integer", "minimum": 0}}}),
    );
    let mut o = obj(json!({"replicas": null, "bogus": 1}));
    assert_eq!(s.prune(&mut o), vec!["spec.bogus"]);
    s.default(&mut o);
    assert!(s.validate(&o).is_empty(), "{:?}", s.validate(&o));
    assert_eq!(o["spec"], json!({"size": "S"}));
}

// ----- list/map types for server-side apply -----

#[test]
fn list_and_map_types_are_exposed() {
    let s = Schema::parse(
        &json!({"type": "object", "properties": {"spec": {"type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "plain": {"type": "array", "items": {"type": "array", "x-kubernetes-list-type": "set",
                "items": {"type": "string"}}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["port"],
                "items": {"type": "object", "required": ["port"], "properties": {
                    "port": {"type": "integer"},
                    "hosts": {"type": "array", "items": {"type": "string"}}}}}}}}}),
    )
    .unwrap();
    assert_eq!(s.list_type_at(&["spec", "tags"]), Some(ListType::Set));
    assert_eq!(s.list_type_at(&["spec", "plain"]), Some(ListType::Atomic));
    assert_eq!(
        s.list_type_at(&["spec", "plain", "[]"]),
        Some(ListType::Set)
    );
    assert_eq!(
        s.list_type_at(&["spec", "ports"]),
        Some(ListType::Map(vec!["port".to_string()]))
    );
    assert_eq!(
        s.list_type_at(&["spec", "ports", "hosts"]),
        Some(ListType::Atomic)
    );
    assert_eq!(s.list_type_at(&["spec"]), None);
    assert_eq!(s.list_type_at(&["spec", "missing"]), None);
    assert_eq!(s.map_type_at(&["spec"]), Some(MapType::Atomic));
    assert_eq!(s.map_type_at(&["spec", "ports"]), None);
    assert_eq!(
        s.map_type_at(&["spec", "ports", "[]"]),
        Some(MapType::Granular)
    );
    assert_eq!(s.map_type_at(&["spec", "tags"]), None);
}

#[test]
fn parse_reports_api_causes_then_sorted_structural_ones() {
    let causes = Schema::parse(&json!({"type": "object", "properties": {
        "z": {},
        "a": {"type": "string", "$ref": "#/x"},
        "m": {"type": "array"}}}))
    .unwrap_err();
    let shown: Vec<String> = causes.iter().map(Cause::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "properties[a].$ref: Forbidden: $ref is not supported",
            "properties[m].items: Required value: must be specified",
            "properties[z].type: Required value: must not be empty for specified object fields",
        ]
    );
    let reasons: Vec<&str> = causes.iter().map(|c| c.reason).collect();
    assert_eq!(
        reasons,
        [
            "FieldValueForbidden",
            "FieldValueRequired",
            "FieldValueRequired"
        ]
    );
}

#[test]
fn validate_multiple_of_tolerates_float_rounding() {
    let s = schema(json!({"type": "number", "multipleOf": 0.1}));
    assert!(spec_errors(&s, json!(0.3)).is_empty());
    assert_eq!(
        spec_errors(&s, json!(0.35)),
        vec!["spec: Invalid value: 0.35: spec in body should be a multiple of 0.1"]
    );
}

#[test]
fn validate_reports_paths_under_additional_properties_and_root() {
    let s = Schema::parse(&json!({"type": "object", "minProperties": 3,
        "properties": {"spec": {"type": "object"}}}))
    .unwrap();
    assert_eq!(
        errors(&s, json!({"kind": "X"})),
        vec!["Invalid value: 1: in body should have at least 3 properties"]
    );
    let s = schema(
        json!({"type": "object", "additionalProperties": {"type": "array",
        "x-kubernetes-list-type": "set", "items": {"type": "string", "enum": ["a", "b"]}}}),
    );
    assert_eq!(
        spec_errors(&s, json!({"k": ["a", "c", "a"]})),
        vec![
            "spec.k[1]: Unsupported value: \"c\": supported values: \"a\", \"b\"",
            "spec[k][2]: Duplicate value: \"a\"",
        ]
    );
}
