//! Label and field selectors, once for the API server and the plugins: the string syntax of
//! `?labelSelector=` and the WIT `list` (`a=b,c!=d,e in (x,y),f notin (z),g,!h`), the
//! structured `LabelSelector` that ReplicaSets, Deployments and Jobs carry (as JSON, or as
//! k8s-openapi's type with the `k8s-openapi` feature), plain label maps (a Service's
//! `spec.selector`), and `?fieldSelector=`. All label forms become one [`Selector`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[cfg(feature = "k8s-openapi")]
use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};
#[cfg(feature = "k8s-openapi")]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

/// Why a selector could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {reason} (in {selector:?})")]
pub struct SelectorError {
    selector: String,
    reason: String,
}

fn err(selector: &str, reason: impl Into<String>) -> SelectorError {
    SelectorError {
        selector: selector.to_owned(),
        reason: reason.into(),
    }
}

/// Something labels can be looked up in: a `BTreeMap` (k8s-openapi's `labels`), a JSON
/// object (`metadata.labels`), a reference to or an `Option` of one (absent: no labels).
pub trait Labels {
    /// The value of label `key`, if present.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for serde_json::Map<String, Value> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

impl<L: Labels + ?Sized> Labels for &L {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}

impl<L: Labels> Labels for Option<L> {
    fn label(&self, key: &str) -> Option<&str> {
        self.as_ref().and_then(|l| l.label(key))
    }
}

/// How one requirement compares a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key=value` (also `key==value`).
    Equals,
    /// `key!=value`; matches when the key is absent too.
    NotEquals,
    /// `key in (a,b)`.
    In,
    /// `key notin (a,b)`; matches when the key is absent too.
    NotIn,
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
}

/// One comma-separated term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Label key, possibly prefixed (`app.kubernetes.io/name`).
    pub key: String,
    /// Comparison.
    pub operator: Operator,
    /// One value for (Not)Equals, a sorted set for (Not)In, empty otherwise.
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether `labels` satisfy this term.
    pub fn matches(&self, labels: impl Labels) -> bool {
        self.matches_value(labels.label(&self.key))
    }

    /// Whether a label's value (`None`: the label is absent) satisfies this term.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        match self.operator {
            Operator::Equals | Operator::In => {
                value.is_some_and(|v| self.values.iter().any(|x| x == v))
            }
            Operator::NotEquals | Operator::NotIn => {
                !value.is_some_and(|v| self.values.iter().any(|x| x == v))
            }
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match self.operator {
            Operator::Equals => write!(f, "{key}={}", self.values.join("")),
            Operator::NotEquals => write!(f, "{key}!={}", self.values.join("")),
            Operator::In => write!(f, "{key} in ({})", self.values.join(",")),
            Operator::NotIn => write!(f, "{key} notin ({})", self.values.join(",")),
            Operator::Exists => write!(f, "{key}"),
            Operator::DoesNotExist => write!(f, "!{key}"),
        }
    }
}

/// A conjunction of requirements; the empty selector matches everything.
///
/// ```
/// use std::collections::BTreeMap;
/// use kedge_core::selector::Selector;
/// let sel: Selector = "app=web,tier in (fe,be),!canary".parse().unwrap();
/// let labels = BTreeMap::from([("app".to_string(), "web".to_string()), ("tier".into(), "fe".into())]);
/// assert!(sel.matches(&labels));
/// assert_eq!(sel.to_string(), "app=web,tier in (be,fe),!canary");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    });
    prefix_ok && !name.is_empty() && name.len() <= 63 && valid_value(name)
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .last()
            .is_none_or(|c| c.is_ascii_alphanumeric())
}

/// A tiny cursor over the selector text.
struct Lexer<'a> {
    src: &'a str,
    rest: &'a str,
}

impl<'a> Lexer<'a> {
    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        match self.rest.strip_prefix(token) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    /// A key or value: everything up to an operator, separator or space.
    fn word(&mut self) -> &'a str {
        self.skip_ws();
        let end = self
            .rest
            .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | ',' | '(' | ')'))
            .unwrap_or(self.rest.len());
        let (w, r) = self.rest.split_at(end);
        self.rest = r;
        w
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        let v = self.word();
        if valid_value(v) {
            Ok(v.to_owned())
        } else {
            Err(err(self.src, format!("invalid value {v:?}")))
        }
    }

    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        if !self.eat("(") {
            return Err(err(self.src, "expected '(' after in/notin"));
        }
        if self.eat(")") {
            // As Kubernetes' parser: `()` is the set holding the empty value, which is also
            // how `k in (,)` and `k in ("")` print, so printed selectors parse again.
            return Ok(vec![String::new()]);
        }
        let mut values = Vec::new();
        loop {
            values.push(self.value()?);
            if self.eat(")") {
                break;
            }
            if !self.eat(",") {
                return Err(err(self.src, "expected ',' or ')' in value set"));
            }
        }
        values.sort();
        values.dedup();
        Ok(values)
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.eat("!") {
            let key = self.key()?;
            return Ok(Requirement {
                key,
                operator: Operator::DoesNotExist,
                values: vec![],
            });
        }
        let key = self.key()?;
        self.skip_ws();
        let (operator, values) = if self.eat("!=") {
            (Operator::NotEquals, vec![self.value()?])
        } else if self.eat("==") || self.eat("=") {
            (Operator::Equals, vec![self.value()?])
        } else if self.rest.is_empty() || self.rest.starts_with(',') {
            (Operator::Exists, vec![])
        } else {
            match self.word() {
                "in" => (Operator::In, self.value_set()?),
                "notin" => (Operator::NotIn, self.value_set()?),
                other => return Err(err(self.src, format!("unknown operator {other:?}"))),
            }
        };
        Ok(Requirement {
            key,
            operator,
            values,
        })
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        let k = self.word();
        if valid_key(k) {
            Ok(k.to_owned())
        } else {
            Err(err(self.src, format!("invalid key {k:?}")))
        }
    }
}

impl Selector {
    /// The selector that matches every object (what an empty string means).
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses the string syntax.
    ///
    /// ```
    /// let sel = kedge_core::selector::Selector::parse("env notin (prod), gpu").unwrap();
    /// assert_eq!(sel.requirements().len(), 2);
    /// assert!(kedge_core::selector::Selector::parse("a in b").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut lexer = Lexer { src: s, rest: s };
        let mut requirements = Vec::new();
        lexer.skip_ws();
        if lexer.rest.is_empty() {
            return Ok(Self::everything());
        }
        loop {
            requirements.push(lexer.requirement()?);
            lexer.skip_ws();
            if lexer.rest.is_empty() {
                break;
            }
            if !lexer.eat(",") {
                return Err(err(s, format!("unexpected {:?}", lexer.rest)));
            }
        }
        Ok(Self { requirements })
    }

    /// A plain label map (`matchLabels`, a Service's `spec.selector`): every label equal.
    /// An empty map matches everything. (Not validated: the map was, when it was stored.)
    pub fn from_labels<K: Into<String>, V: Into<String>>(
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            requirements: labels
                .into_iter()
                .map(|(k, v)| Requirement {
                    key: k.into(),
                    operator: Operator::Equals,
                    values: vec![v.into()],
                })
                .collect(),
        }
    }

    /// Builds a structured selector from its `matchLabels` and `matchExpressions`
    /// (`(key, operator, values)`), rejecting what the API server would reject (unknown
    /// operators, `In` without values, `Exists` with values); `text` names the selector in
    /// errors. Requirements are sorted by key (stably) like the API server's, so the string
    /// form is canonical.
    pub fn from_parts<'a>(
        match_labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        match_expressions: impl IntoIterator<Item = (&'a str, &'a str, Vec<String>)>,
        text: impl Fn() -> String,
    ) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in match_labels {
            if !valid_key(key) || !valid_value(value) {
                return Err(err(
                    &text(),
                    format!("invalid matchLabels entry {key:?}={value:?}"),
                ));
            }
            requirements.push(Requirement {
                key: key.to_owned(),
                operator: Operator::Equals,
                values: vec![value.to_owned()],
            });
        }
        for (key, op, mut values) in match_expressions {
            if !valid_key(key) {
                return Err(err(&text(), format!("invalid key {key:?}")));
            }
            values.sort();
            values.dedup();
            let operator = match op {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return Err(err(&text(), format!("unknown operator {other:?}"))),
            };
            let needs_values = matches!(operator, Operator::In | Operator::NotIn);
            if needs_values == values.is_empty() {
                return Err(err(
                    &text(),
                    format!(
                        "operator {op} {} values",
                        if needs_values { "needs" } else { "takes no" }
                    ),
                ));
            }
            requirements.push(Requirement {
                key: key.to_owned(),
                operator,
                values,
            });
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    /// A structured selector in its JSON form (`{"matchLabels": .., "matchExpressions": ..}`).
    pub fn from_structured(selector: &Value) -> Result<Self, SelectorError> {
        let labels = selector
            .get("matchLabels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()));
        let exprs = selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| {
                let s = |f: &str| e.get(f).and_then(Value::as_str).unwrap_or_default();
                let values = e
                    .get("values")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                (s("key"), s("operator"), values)
            });
        Self::from_parts(labels, exprs, || selector.to_string())
    }

    /// Converts k8s-openapi's structured selector, rejecting what the API server would reject
    /// (unknown operators, `In` without values, `Exists` with values).
    ///
    /// ```
    /// use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    /// let ls = LabelSelector { match_labels: Some([("app".into(), "web".into())].into()), ..Default::default() };
    /// assert_eq!(kedge_core::selector::Selector::from_label_selector(&ls).unwrap().to_string(), "app=web");
    /// ```
    #[cfg(feature = "k8s-openapi")]
    pub fn from_label_selector(ls: &LabelSelector) -> Result<Self, SelectorError> {
        Self::from_parts(
            ls.match_labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            ls.match_expressions.iter().flatten().map(|e| {
                (
                    e.key.as_str(),
                    e.operator.as_str(),
                    e.values.clone().unwrap_or_default(),
                )
            }),
            || format!("{ls:?}"),
        )
    }

    /// The terms, in order.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the selector has no terms (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object's labels satisfy every term.
    pub fn matches(&self, labels: impl Labels) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches_value(labels.label(&r.key)))
    }

    /// Matches against labels looked up by `label`.
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches_value(label(&r.key)))
    }

    /// Matches against a JSON object's `metadata.labels`.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(
            object
                .pointer("/metadata/labels")
                .and_then(Value::as_object),
        )
    }

    /// [`matches`](Self::matches) for k8s-openapi's `Option`al label maps.
    pub fn matches_opt(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.matches(labels.unwrap_or(&EMPTY))
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A field selector: `metadata.name=x,spec.nodeName!=,status.phase!=Running`. Only the fields
/// a resource declares are allowed (Kubernetes answers 400 for others).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str, allowed: &[&str]) -> Result<Self, SelectorError> {
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
                return Err(err(s, format!("invalid selector: '{p}'")));
            };
            let field = field.trim();
            if !(field == "metadata.name"
                || field == "metadata.namespace"
                || allowed.contains(&field))
            {
                return Err(err(s, format!("field label not supported: {field}")));
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

/// A plain JSON label map (a Service's `spec.selector`) as a selector: every label equal
/// (a non-string value counts as `""`).
pub fn from_labels(labels: &serde_json::Map<String, Value>) -> Selector {
    Selector::from_labels(
        labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default())),
    )
}

/// Whether `labels` match a structured selector; shorthand for controllers filtering pods.
///
/// ```
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
/// use std::collections::BTreeMap;
/// let ls = LabelSelector { match_labels: Some([("app".into(), "web".into())].into()), ..Default::default() };
/// let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
/// assert!(kedge_core::selector::label_selector_matches(&ls, Some(&labels)).unwrap());
/// ```
#[cfg(feature = "k8s-openapi")]
pub fn label_selector_matches(
    ls: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<bool, SelectorError> {
    Ok(Selector::from_label_selector(ls)?.matches_opt(labels))
}

/// The string form of a structured selector, for the WIT `list` call.
///
/// ```
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
/// let ls = LabelSelector {
///     match_expressions: Some(vec![LabelSelectorRequirement { key: "gpu".into(), operator: "Exists".into(), values: None }]),
///     ..Default::default()
/// };
/// assert_eq!(kedge_core::selector::label_selector_string(&ls).unwrap(), "gpu");
/// ```
#[cfg(feature = "k8s-openapi")]
pub fn label_selector_string(ls: &LabelSelector) -> Result<String, SelectorError> {
    Ok(Selector::from_label_selector(ls)?.to_string())
}

/// Whether one node selector requirement holds for `value` (a label's value, or a field's
/// for `matchFields`), with the operators node affinity adds to label selectors: `Gt` and
/// `Lt` compare integers (exactly one value; a missing or non-integer label never matches),
/// and `NotIn`/`DoesNotExist` hold for an absent label. Unknown operators match nothing,
/// as the API server would have rejected them.
///
/// ```
/// use k8s_openapi::api::core::v1::NodeSelectorRequirement;
/// use kedge_core::selector::node_requirement_matches;
/// let gt = NodeSelectorRequirement { key: "cores".into(), operator: "Gt".into(),
///     values: Some(vec!["4".into()]) };
/// assert!(node_requirement_matches(&gt, Some("8")));
/// assert!(!node_requirement_matches(&gt, Some("4")) && !node_requirement_matches(&gt, None));
/// ```
#[cfg(feature = "k8s-openapi")]
pub fn node_requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else { return false };
            let (Ok(bound), Some(Ok(v))) = (bound.parse::<i64>(), value.map(str::parse::<i64>))
            else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// One `nodeSelectorTerm` against a node: `matchExpressions` (labels) and `matchFields`
/// (only `metadata.name` exists) are ANDed; a term with neither matches nothing, as in
/// Kubernetes.
///
/// ```
/// use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm};
/// use kedge_core::selector::node_term_matches;
/// let mut node = Node::default();
/// node.metadata.name = Some("edge-1".into());
/// let by_name = NodeSelectorTerm { match_fields: Some(vec![NodeSelectorRequirement {
///     key: "metadata.name".into(), operator: "In".into(), values: Some(vec!["edge-1".into()]) }]),
///     ..Default::default() };
/// assert!(node_term_matches(&by_name, &node));
/// assert!(!node_term_matches(&NodeSelectorTerm::default(), &node));
/// ```
#[cfg(feature = "k8s-openapi")]
pub fn node_term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    let name = node.metadata.name.as_deref();
    exprs.iter().all(|r| {
        node_requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str))
    }) && fields.iter().all(|r| {
        r.key == "metadata.name"
            && matches!(r.operator.as_str(), "In" | "NotIn")
            && node_requirement_matches(r, name)
    })
}

/// A `NodeSelector` (required node affinity): its terms are ORed.
///
/// ```
/// use k8s_openapi::api::core::v1::{Node, NodeSelector};
/// let none = NodeSelector { node_selector_terms: vec![] };
/// assert!(!kedge_core::selector::node_selector_matches(&none, &Node::default()));
/// ```
#[cfg(feature = "k8s-openapi")]
pub fn node_selector_matches(selector: &NodeSelector, node: &Node) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|t| node_term_matches(t, node))
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
                Selector::parse(sel).unwrap().matches_object(&o),
                want,
                "{sel}"
            );
        }
        assert!(Selector::parse("app in web").is_err());
        assert!(Selector::parse("a=b,,c").is_err());
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
        let s = Selector::from_structured(&json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]}))
        .unwrap();
        assert!(s.matches_object(&obj(json!({"app": "web", "tier": "fe"}))));
        assert!(!s.matches_object(&obj(json!({"app": "web"}))));
    }
}
