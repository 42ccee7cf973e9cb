//! Label selectors, in both shapes Kubernetes uses: the string syntax the WIT `list` takes
//! (`a=b,c!=d,e in (x,y),f notin (z),g,!h`) and the structured `LabelSelector` that
//! ReplicaSets and Deployments carry. Both become one [`Selector`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a selector could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
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
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotEquals | Operator::NotIn => {
                !value.is_some_and(|v| self.values.contains(v))
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
/// use kedge_guest::selector::Selector;
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
            return Err(err(self.src, "in/notin needs at least one value"));
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
    /// let sel = kedge_guest::selector::Selector::parse("env notin (prod), gpu").unwrap();
    /// assert_eq!(sel.requirements().len(), 2);
    /// assert!(kedge_guest::selector::Selector::parse("a in b").is_err());
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

    /// Converts a structured selector, rejecting what the API server would reject
    /// (unknown operators, `In` without values, `Exists` with values).
    ///
    /// ```
    /// use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    /// let ls = LabelSelector { match_labels: Some([("app".into(), "web".into())].into()), ..Default::default() };
    /// assert_eq!(kedge_guest::selector::Selector::from_label_selector(&ls).unwrap().to_string(), "app=web");
    /// ```
    pub fn from_label_selector(ls: &LabelSelector) -> Result<Self, SelectorError> {
        let text = || format!("{ls:?}");
        let mut requirements = Vec::new();
        for (key, value) in ls.match_labels.iter().flatten() {
            if !valid_key(key) || !valid_value(value) {
                return Err(err(
                    &text(),
                    format!("invalid matchLabels entry {key:?}={value:?}"),
                ));
            }
            requirements.push(Requirement {
                key: key.clone(),
                operator: Operator::Equals,
                values: vec![value.clone()],
            });
        }
        for expr in ls.match_expressions.iter().flatten() {
            if !valid_key(&expr.key) {
                return Err(err(&text(), format!("invalid key {:?}", expr.key)));
            }
            let mut values = expr.values.clone().unwrap_or_default();
            values.sort();
            values.dedup();
            let operator = match expr.operator.as_str() {
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
                        "operator {} {} values",
                        expr.operator,
                        if needs_values { "needs" } else { "takes no" }
                    ),
                ));
            }
            requirements.push(Requirement {
                key: expr.key.clone(),
                operator,
                values,
            });
        }
        // Sorted by key (stable) like the API server, so the string form is canonical.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    /// The terms, in order.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether an object's labels satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
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

/// Whether `labels` match a structured selector; shorthand for controllers filtering pods.
///
/// ```
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
/// use std::collections::BTreeMap;
/// let ls = LabelSelector { match_labels: Some([("app".into(), "web".into())].into()), ..Default::default() };
/// let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
/// assert!(kedge_guest::selector::label_selector_matches(&ls, Some(&labels)).unwrap());
/// ```
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
/// assert_eq!(kedge_guest::selector::label_selector_string(&ls).unwrap(), "gpu");
/// ```
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
/// use kedge_guest::selector::node_requirement_matches;
/// let gt = NodeSelectorRequirement { key: "cores".into(), operator: "Gt".into(),
///     values: Some(vec!["4".into()]) };
/// assert!(node_requirement_matches(&gt, Some("8")));
/// assert!(!node_requirement_matches(&gt, Some("4")) && !node_requirement_matches(&gt, None));
/// ```
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
/// use kedge_guest::selector::node_term_matches;
/// let mut node = Node::default();
/// node.metadata.name = Some("edge-1".into());
/// let by_name = NodeSelectorTerm { match_fields: Some(vec![NodeSelectorRequirement {
///     key: "metadata.name".into(), operator: "In".into(), values: Some(vec!["edge-1".into()]) }]),
///     ..Default::default() };
/// assert!(node_term_matches(&by_name, &node));
/// assert!(!node_term_matches(&NodeSelectorTerm::default(), &node));
/// ```
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
/// assert!(!kedge_guest::selector::node_selector_matches(&none, &Node::default()));
/// ```
pub fn node_selector_matches(selector: &NodeSelector, node: &Node) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|t| node_term_matches(t, node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let sel = Selector::parse("a=b,c!=d,e in (x,y),f notin (z),g,!h").unwrap();
        let ops: Vec<_> = sel.requirements().iter().map(|r| r.operator).collect();
        use Operator::*;
        assert_eq!(ops, [Equals, NotEquals, In, NotIn, Exists, DoesNotExist]);
        assert_eq!(sel.to_string(), "a=b,c!=d,e in (x,y),f notin (z),g,!h");
        let full = labels(&[("a", "b"), ("e", "y"), ("g", "")]);
        assert!(sel.matches(&full));
        assert!(!sel.matches(&labels(&[("a", "b"), ("c", "d"), ("e", "y"), ("g", "1")])));
        assert!(!sel.matches(&labels(&[("a", "b"), ("e", "y"), ("g", "1"), ("h", "1")])));
        assert!(!sel.matches(&labels(&[("a", "b"), ("e", "y"), ("f", "z"), ("g", "1")])));
        assert!(!sel.matches(&labels(&[("a", "b"), ("e", "w"), ("g", "1")])));
    }

    #[test]
    fn whitespace_double_equals_and_prefixed_keys() {
        let sel =
            Selector::parse("  app.kubernetes.io/name == web ,  tier  in ( a , b ) ").unwrap();
        assert_eq!(sel.to_string(), "app.kubernetes.io/name=web,tier in (a,b)");
        assert!(sel.matches(&labels(&[("app.kubernetes.io/name", "web"), ("tier", "b")])));
    }

    #[test]
    fn empty_matches_everything_and_empty_value_is_allowed() {
        assert!(Selector::parse("").unwrap().matches(&labels(&[("x", "y")])));
        let sel = Selector::parse("a=").unwrap();
        assert!(sel.matches(&labels(&[("a", "")])));
        assert!(!sel.matches(&labels(&[])));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "a in b", "a in (b", "=b", "a b", "a=b,", "a=b c", "!", "a in ()", "a=-x", "a/b/c=d",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn structured_selector() {
        let ls = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "env".into(),
                    operator: "In".into(),
                    values: Some(vec!["prod".into(), "dev".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["x".into()]),
                },
                LabelSelectorRequirement {
                    key: "gpu".into(),
                    operator: "Exists".into(),
                    values: Some(vec![]),
                },
            ]),
        };
        assert_eq!(
            label_selector_string(&ls).unwrap(),
            "app=web,!canary,env in (dev,prod),gpu,zone notin (x)"
        );
        assert!(
            label_selector_matches(
                &ls,
                Some(&labels(&[("app", "web"), ("env", "dev"), ("gpu", "")]))
            )
            .unwrap()
        );
        assert!(
            !label_selector_matches(&ls, Some(&labels(&[("app", "web"), ("env", "dev")]))).unwrap()
        );
        assert!(!label_selector_matches(&ls, None).unwrap());
        let round = Selector::parse(&label_selector_string(&ls).unwrap()).unwrap();
        assert_eq!(round, Selector::from_label_selector(&ls).unwrap());
    }

    #[test]
    fn node_selector_operators_and_fields() {
        let req = |key: &str, op: &str, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        node.metadata.labels = Some(labels(&[("zone", "a"), ("cores", "8")]));
        let term = |exprs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: Some(exprs),
            match_fields: None,
        };
        for (r, want) in [
            (req("zone", "In", &["a", "b"]), true),
            (req("zone", "NotIn", &["a"]), false),
            (req("gpu", "NotIn", &["x"]), true),
            (req("zone", "Exists", &[]), true),
            (req("gpu", "DoesNotExist", &[]), true),
            (req("cores", "Gt", &["4"]), true),
            (req("cores", "Lt", &["4"]), false),
            (req("zone", "Gt", &["4"]), false),
            (req("cores", "Gt", &["4", "5"]), false),
            (req("zone", "Like", &["a"]), false),
        ] {
            assert_eq!(
                node_term_matches(&term(vec![r.clone()]), &node),
                want,
                "{r:?}"
            );
        }
        // ANDed within a term, ORed across terms.
        let both = term(vec![req("zone", "In", &["a"]), req("cores", "Lt", &["4"])]);
        assert!(!node_term_matches(&both, &node));
        let sel = NodeSelector {
            node_selector_terms: vec![both, term(vec![req("zone", "Exists", &[])])],
        };
        assert!(node_selector_matches(&sel, &node));
        let fields = |op: &str| NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", op, &["n1"])]),
        };
        assert!(node_term_matches(&fields("In"), &node));
        assert!(!node_term_matches(&fields("NotIn"), &node));
        assert!(!node_term_matches(&fields("Exists"), &node));
    }

    #[test]
    fn structured_selector_validation() {
        let bad_op = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Gt".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(Selector::from_label_selector(&bad_op).is_err());
        let in_without_values = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "In".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(Selector::from_label_selector(&in_without_values).is_err());
        assert!(
            label_selector_matches(&LabelSelector::default(), None).unwrap(),
            "empty selects all"
        );
    }
}
