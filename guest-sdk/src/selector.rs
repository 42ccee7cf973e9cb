//! Label selectors, in both shapes Kubernetes uses: the string syntax the WIT `list` takes
//! (`a=b,c!=d,e in (x,y),f notin (z),g,!h`) and the structured `LabelSelector` that
//! ReplicaSets and Deployments carry. Both become one [`Selector`]. This is
//! [`kedge_core::selector`], the very parser and matcher the API server uses.

pub use kedge_core::selector::*;

#[cfg(test)]
// The tests pass label maps by reference, as callers of the SDK always have (`matches` takes
// anything that has labels, a reference included).
#[allow(clippy::needless_borrows_for_generic_args)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

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
            "a in b", "a in (b", "=b", "a b", "a=b,", "a=b c", "!", "a=-x", "a/b/c=d",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?} should not parse");
        }
        // As Kubernetes' parser: `()` is the set holding the empty value, not an error.
        assert!(Selector::parse("a in ()").is_ok());
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
