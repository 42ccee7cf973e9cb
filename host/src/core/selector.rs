//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` carry them.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unable to parse requirement: {0}")]
pub struct ParseError(pub String);

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector: `a=b,c!=d,e in (x,y),f notin (z),g,!h`. Empty matches all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn values(list: &str, whole: &str) -> Result<Vec<String>, ParseError> {
    let inner = list
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ParseError(format!("{whole}: expected a parenthesized value list")))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(ParseError(format!("{s}: empty requirement")));
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotExists,
                }
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotEq(v.trim().to_string()),
                }
            } else if let Some((k, v)) = p.split_once("==") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::Eq(v.trim().to_string()),
                }
            } else if let Some((k, v)) = p.split_once('=') {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::Eq(v.trim().to_string()),
                }
            } else if let Some((k, v)) = p.split_once(" notin ") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotIn(values(v, p)?),
                }
            } else if let Some((k, v)) = p.split_once(" in ") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::In(values(v, p)?),
                }
            } else {
                Requirement {
                    key: p.to_string(),
                    op: Op::Exists,
                }
            };
            if !valid_key(&req.key) {
                return Err(ParseError(format!("{p}: invalid label key {:?}", req.key)));
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    /// Matches against an object's `metadata.labels`.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// Matches against labels looked up by `label`.
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|r| {
            let v = label(&r.key);
            match &r.op {
                Op::Eq(want) => v == Some(want.as_str()),
                Op::NotEq(want) => v != Some(want.as_str()),
                Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => !v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
            }
        })
    }

    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(
            object
                .pointer("/metadata/labels")
                .and_then(Value::as_object),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }
}

/// A field selector: `metadata.name=x,spec.nodeName!=,status.phase!=Running`. Only the fields
/// a resource declares are allowed (Kubernetes answers 400 for others).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str, allowed: &[&str]) -> Result<Self, ParseError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { reqs });
        }
        for part in s.split(',') {
            let p = part.trim();
            let (field, eq, value) = if let Some((k, v)) = p.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = p.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = p.split_once('=') {
                (k, true, v)
            } else {
                return Err(ParseError(format!("invalid selector: '{p}'")));
            };
            let field = field.trim();
            if !(field == "metadata.name"
                || field == "metadata.namespace"
                || allowed.contains(&field))
            {
                return Err(ParseError(format!("field label not supported: {field}")));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.reqs.iter().all(|(field, eq, want)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == *want) == *eq
        })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The value of an equality requirement on `field`, if any (lets a list narrow its scan).
    pub fn equals(&self, field: &str) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(f, eq, _)| f == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

/// A plain label map (`matchLabels`, a Service's `spec.selector`) as a matcher: every label
/// equal. An empty map matches everything.
pub fn from_labels(labels: &serde_json::Map<String, Value>) -> LabelSelector {
    LabelSelector {
        reqs: labels
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Op::Eq(v.as_str().unwrap_or_default().to_string()),
            })
            .collect(),
    }
}

/// Turns a structured `LabelSelector` (`matchLabels` + `matchExpressions`) into a matcher.
pub fn from_structured(selector: &Value) -> Result<LabelSelector, ParseError> {
    let mut reqs = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|ml| from_labels(ml).reqs)
        .unwrap_or_default();
    if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let vals: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let op = match e.get("operator").and_then(Value::as_str) {
                Some("In") => Op::In(vals),
                Some("NotIn") => Op::NotIn(vals),
                Some("Exists") => Op::Exists,
                Some("DoesNotExist") => Op::NotExists,
                other => return Err(ParseError(format!("{other:?} is not a valid operator"))),
            };
            reqs.push(Requirement {
                key: key.to_string(),
                op,
            });
        }
    }
    Ok(LabelSelector { reqs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"labels": labels}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selector_operators() {
        let o = obj(json!({"app": "web", "tier": "fe"}));
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier=be", false),
            ("missing!=x", true),
        ];
        for (sel, want) in cases {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches_object(&o),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a=b,,c").is_err());
    }

    #[test]
    fn field_selector_fields_and_refusals() {
        let o = obj(json!({}));
        let allowed = ["spec.nodeName", "status.phase"];
        let f = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", &allowed).unwrap();
        assert!(f.matches(&o));
        assert_eq!(f.equals("spec.nodeName"), Some("n1"));
        let f = FieldSelector::parse("spec.nodeName=", &allowed).unwrap();
        assert!(!f.matches(&o));
        assert!(FieldSelector::parse("spec.other=x", &allowed).is_err());
    }

    #[test]
    fn structured_selector() {
        let s = from_structured(&json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]}))
        .unwrap();
        assert!(s.matches_object(&obj(json!({"app": "web", "tier": "fe"}))));
        assert!(!s.matches_object(&obj(json!({"app": "web"}))));
    }
}
