//! Validating objects: kube-openapi's validator as apiextensions converts its errors,
//! embedded resources, and list sets and maps.

use super::*;

/// `name` is kube-openapi's path (`spec.replicas`, `.spec` for a root `required`) that its
/// messages quote; the field is `base` plus that path without its leading dot.
pub(super) fn validate_value(n: &Node, v: &Value, name: &str, base: &str, out: &mut Vec<Cause>) {
    let field = join(base, name.trim_start_matches('.'));
    let body = |msg: String| msg.trim_start().to_string();

    // type
    let expected: Option<String> = if n.int_or_string {
        Some("integer,string".into())
    } else {
        n.ty.map(|t| t.name().to_string())
    };
    if let Some(exp) = &expected {
        let actual = json_type(v);
        let ok = match v {
            Value::Null => n.nullable,
            _ if n.int_or_string => matches!(actual, "string" | "integer") || is_integral(v),
            _ => match n.ty {
                Some(Type::Integer) => actual == "integer" || is_integral(v),
                Some(Type::Number) => v.is_number(),
                Some(t) => actual == t.name(),
                None => true,
            },
        };
        if !ok {
            out.push(Cause::new(
                "FieldValueTypeInvalid",
                &field,
                format!(
                    "Invalid value: {}: {}",
                    go_quote(actual),
                    body(format!(
                        "{name} in body must be of type {exp}: {}",
                        go_quote(actual)
                    ))
                ),
            ));
        }
    }
    if v.is_null() {
        if !n.nullable {
            enum_check(n, v, &field, out);
        }
        return;
    }

    // string: the first of maxLength, minLength, pattern that fails
    if let Value::String(s) = v {
        let chars = s.chars().count() as u64;
        if let Some(max) = n.max_length.filter(|m| chars > *m) {
            let unit = if max == 1 { "byte" } else { "bytes" };
            out.push(Cause::new(
                "FieldValueTooLong",
                &field,
                format!("Too long: may not be more than {max} {unit}"),
            ));
        } else if let Some(min) = n.min_length.filter(|m| chars < *m) {
            out.push(Cause::invalid(
                &field,
                &go_quote(s),
                &body(format!(
                    "{name} in body should be at least {min} chars long"
                )),
            ));
        } else if let Some((p, re)) = &n.pattern
            && !re.is_match(s)
        {
            out.push(Cause::invalid(
                &field,
                &go_quote(s),
                &body(format!("{name} in body should match '{p}'")),
            ));
        }
        if let Some((fname, f)) = &n.format
            && !format_ok(*f, s)
        {
            out.push(Cause::new(
                "FieldValueTypeInvalid",
                &field,
                format!(
                    "Invalid value: {}: {}",
                    go_quote(s),
                    body(format!(
                        "{name} in body must be of type {fname}: {}",
                        go_quote(s)
                    ))
                ),
            ));
        }
    }

    // number
    if let Some(x) = v.as_f64() {
        let shown = go_value(v);
        if let Some(m) = n.multiple_of {
            let q = x / m;
            if (q - q.round()).abs() > 1e-9 * q.abs().max(1.0) {
                out.push(Cause::invalid(
                    &field,
                    &shown,
                    &body(format!(
                        "{name} in body should be a multiple of {}",
                        go_float(m)
                    )),
                ));
            }
        }
        if let Some(max) = n.maximum {
            let (bad, words) = if n.exclusive_maximum {
                (x >= max, "less than")
            } else {
                (x > max, "less than or equal to")
            };
            if bad {
                out.push(Cause::invalid(
                    &field,
                    &shown,
                    &body(format!(
                        "{name} in body should be {words} {}",
                        go_float(max)
                    )),
                ));
            }
        }
        if let Some(min) = n.minimum {
            let (bad, words) = if n.exclusive_minimum {
                (x <= min, "greater than")
            } else {
                (x < min, "greater than or equal to")
            };
            if bad {
                out.push(Cause::invalid(
                    &field,
                    &shown,
                    &body(format!(
                        "{name} in body should be {words} {}",
                        go_float(min)
                    )),
                ));
            }
        }
    }

    // array
    if let Value::Array(items) = v {
        let len = items.len() as u64;
        if let Some(min) = n.min_items.filter(|m| len < *m) {
            out.push(Cause::invalid(
                &field,
                &len.to_string(),
                &body(format!("{name} in body should have at least {min} items")),
            ));
        }
        if let Some(max) = n.max_items.filter(|m| len > *m) {
            out.push(Cause::new(
                "FieldValueTooMany",
                &field,
                format!("Too many: {len}: must have at most {max} items"),
            ));
        }
        if let Some(item) = &n.items {
            for (i, x) in items.iter().enumerate() {
                validate_value(item, x, &format!("{name}[{i}]"), base, out);
            }
        }
    }

    enum_check(n, v, &field, out);

    // object
    if let Value::Object(map) = v {
        let count = map.len() as u64;
        if let Some(min) = n.min_properties.filter(|m| count < *m) {
            out.push(Cause::invalid(
                &field,
                &count.to_string(),
                &body(format!(
                    "{name} in body should have at least {min} properties"
                )),
            ));
            return;
        }
        if let Some(max) = n.max_properties.filter(|m| count > *m) {
            out.push(Cause::new(
                "FieldValueTooMany",
                &field,
                format!("Too many: {count}: must have at most {max} items"),
            ));
            return;
        }
        if let Some(ap) = &n.additional {
            for (k, x) in map {
                if !n.properties.contains_key(k) {
                    validate_value(ap, x, &format!("{name}.{k}"), base, out);
                }
            }
        }
        for (k, p) in &n.properties {
            if let Some(x) = map.get(k) {
                let child = if name.is_empty() {
                    k.clone()
                } else {
                    format!("{name}.{k}")
                };
                validate_value(p, x, &child, base, out);
            }
        }
        for k in &n.required {
            if !map.contains_key(k) {
                out.push(Cause::required(&join(&field, k), ""));
            }
        }
    }
}

pub(super) fn enum_check(n: &Node, v: &Value, field: &str, out: &mut Vec<Cause>) {
    if let Some(values) = &n.enumeration
        && !values.is_empty()
        && !values.iter().any(|e| json_eq(e, v))
    {
        let allowed: Vec<String> = values
            .iter()
            .map(|e| match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        out.push(Cause::not_supported(field, &go_value(v), &allowed));
    }
}

/// Embedded resources need a well-formed `apiVersion` and `kind` (kube's objectmeta
/// validation); `metadata` is optional there too.
pub(super) fn embedded_check(n: &Node, v: &Value, path: &str, out: &mut Vec<Cause>) {
    match v {
        Value::Object(map) => {
            if n.embedded {
                for k in ["apiVersion", "kind"] {
                    if !map.contains_key(k) {
                        out.push(Cause::required(&join(path, k), "must not be empty"));
                    }
                }
                if let Some(av) = map.get("apiVersion") {
                    let f = join(path, "apiVersion");
                    match av.as_str() {
                        None => out.push(Cause::invalid(&f, &go_value(av), "must be a string")),
                        Some("") => out.push(Cause::invalid(&f, "\"\"", "must not be empty")),
                        Some(s) if s.matches('/').count() > 1 => out.push(Cause::invalid(
                            &f,
                            &go_quote(s),
                            &format!("unexpected GroupVersion string: {s}"),
                        )),
                        Some(_) => {}
                    }
                }
                if let Some(kind) = map.get("kind") {
                    let f = join(path, "kind");
                    match kind.as_str() {
                        None => out.push(Cause::invalid(&f, &go_value(kind), "must be a string")),
                        Some("") => out.push(Cause::invalid(&f, "\"\"", "must not be empty")),
                        Some(s) => {
                            if let Some(e) = dns1035_error(&s.to_lowercase()) {
                                out.push(Cause::invalid(
                                    &f,
                                    &go_quote(s),
                                    &format!(
                                        "may have mixed case, but should otherwise match: {e}"
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
            for (k, x) in map {
                if let Some(p) = n.properties.get(k) {
                    embedded_check(p, x, &join(path, k), out);
                } else if let Some(ap) = &n.additional {
                    embedded_check(ap, x, &format!("{path}[{k}]"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = &n.items {
                for (i, x) in items.iter().enumerate() {
                    embedded_check(item, x, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

pub(super) fn dns1035_error(s: &str) -> Option<String> {
    let valid = s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        return None;
    }
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    Some(
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an \
         alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or \
         'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
            .into(),
    )
}

/// `x-kubernetes-list-type: set` and `map` uniqueness (kube's listtype validation): each
/// repeated value (or key) is reported once, at its second appearance.
pub(super) fn list_check(n: &Node, v: &Value, path: &str, out: &mut Vec<Cause>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if let Some(p) = n.properties.get(k) {
                    list_check(p, x, &join(path, k), out);
                } else if let Some(ap) = &n.additional {
                    list_check(ap, x, &format!("{path}[{k}]"), out);
                }
            }
        }
        Value::Array(items) => {
            match n.list_type.as_deref() {
                Some("set") => {
                    for i in duplicates(items) {
                        out.push(duplicate(&format!("{path}[{i}]"), &items[i]));
                    }
                }
                Some("map") => {
                    if let Some((i, x)) = items
                        .iter()
                        .enumerate()
                        .find(|(_, x)| !x.is_object() && !x.is_null())
                    {
                        out.push(Cause::invalid(
                            &format!("{path}[{i}]"),
                            &go_value(x),
                            "must be an object for an array of list-type map",
                        ));
                    } else {
                        let keys: Vec<Value> = items
                            .iter()
                            .map(|x| {
                                let mut key = Map::new();
                                for k in &n.list_map_keys {
                                    if let Some(kv) = x.get(k) {
                                        key.insert(k.clone(), kv.clone());
                                    }
                                }
                                Value::Object(key)
                            })
                            .collect();
                        for i in duplicates(&keys) {
                            out.push(duplicate(&format!("{path}[{i}]"), &keys[i]));
                        }
                    }
                }
                _ => {}
            }
            if let Some(item) = &n.items {
                for (i, x) in items.iter().enumerate() {
                    list_check(item, x, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

pub(super) fn duplicates(items: &[Value]) -> Vec<usize> {
    let mut seen: Vec<(&Value, usize)> = Vec::new();
    let mut out = Vec::new();
    for (i, x) in items.iter().enumerate() {
        match seen.iter_mut().find(|(v, _)| json_eq(v, x)) {
            Some((_, times)) => {
                *times += 1;
                if *times == 2 {
                    out.push(i);
                }
            }
            None => seen.push((x, 1)),
        }
    }
    out
}

pub(super) fn duplicate(field: &str, v: &Value) -> Cause {
    Cause::new(
        "FieldValueDuplicate",
        field,
        format!("Duplicate value: {}", go_value(v)),
    )
}

/// A format's pattern, compiled on first use.
macro_rules! lazy_regex {
    ($name:ident, $re:expr) => {
        pub(super) static $name: LazyLock<Regex> = LazyLock::new(|| compile_static($re));
    };
}

pub(super) fn compile_static(re: &str) -> Regex {
    // Constants of this file; the format tests compile every one.
    Regex::new(re).unwrap_or_else(|e| panic!("format regex {re:?}: {e}"))
}

lazy_regex!(
    UUID,
    r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$"
);
lazy_regex!(
    UUID3,
    r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$"
);
lazy_regex!(
    UUID4,
    r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$"
);
lazy_regex!(
    UUID5,
    r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$"
);
lazy_regex!(URI_SCHEME, r"^[a-zA-Z][a-zA-Z0-9+.\-]*:");
lazy_regex!(BSON_OBJECT_ID, r"^[0-9a-fA-F]{24}$");
lazy_regex!(HEX_COLOR, r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$");
lazy_regex!(
    RGB_COLOR,
    r"^rgb\(\s*([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])\s*,\s*([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])\s*,\s*([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])\s*\)$"
);
lazy_regex!(SSN, r"^[0-9]{3}[- ]?[0-9]{2}[- ]?[0-9]{4}$");
lazy_regex!(
    QUANTITY,
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
);

pub(super) fn format_ok(f: Format, s: &str) -> bool {
    use std::net::IpAddr;
    match f {
        Format::DateTime => {
            chrono::DateTime::parse_from_rfc3339(s).is_ok()
                || chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
        }
        Format::Date => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10,
        Format::Uuid => UUID.is_match(s),
        Format::Uuid3 => UUID3.is_match(s),
        Format::Uuid4 => UUID4.is_match(s),
        Format::Uuid5 => UUID5.is_match(s),
        Format::Ipv4 => s.parse::<IpAddr>().is_ok() && s.contains('.'),
        Format::Ipv6 => s.parse::<IpAddr>().is_ok() && s.contains(':'),
        Format::Cidr => s.split_once('/').is_some_and(|(ip, bits)| {
            let max = match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            !bits.is_empty()
                && bits.len() <= 3
                && bits.chars().all(|c| c.is_ascii_digit())
                && bits.parse::<u32>().is_ok_and(|b| b <= max)
        }),
        Format::Mac => mac_ok(s),
        Format::Hostname => {
            s.len() <= 255
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.chars().count() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_alphanumeric() || c == '-')
                })
        }
        Format::Email => {
            let addr = match (s.find('<'), s.strip_suffix('>')) {
                (Some(i), Some(rest)) => &rest[i + 1..],
                _ => s,
            };
            addr.rsplit_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !addr.chars().any(|c| c.is_whitespace() || c == ',')
            })
        }
        Format::Uri => {
            !s.is_empty()
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
                && (s.starts_with('/') || URI_SCHEME.is_match(s))
        }
        Format::Byte => base64_ok(s),
        Format::BsonObjectId => BSON_OBJECT_ID.is_match(s),
        Format::HexColor => HEX_COLOR.is_match(s),
        Format::RgbColor => RGB_COLOR.is_match(s),
        Format::Ssn => SSN.is_match(s),
        Format::Quantity => QUANTITY.is_match(s),
    }
}

/// Go's `net.ParseMAC`: 6, 8 or 20 octets as hex pairs joined by `:` or `-`, or as groups of
/// four hex digits joined by `.`.
pub(super) fn mac_ok(s: &str) -> bool {
    let hex = |g: &str, n: usize| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit());
    let octets = |sep: char| {
        let groups: Vec<&str> = s.split(sep).collect();
        matches!(groups.len(), 6 | 8 | 20) && groups.iter().all(|g| hex(g, 2))
    };
    let dotted = {
        let groups: Vec<&str> = s.split('.').collect();
        matches!(groups.len(), 3 | 4 | 10) && groups.iter().all(|g| hex(g, 4))
    };
    octets(':') || octets('-') || dotted
}

/// Standard base64 with padding, as Go's `base64.StdEncoding` decodes it.
pub(super) fn base64_ok(s: &str) -> bool {
    if !s.len().is_multiple_of(4) {
        return false;
    }
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 {
        return false;
    }
    body.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}
