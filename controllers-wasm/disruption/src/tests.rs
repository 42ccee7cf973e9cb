use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kedge_guest::{FakeCluster, Verb};

use super::*;

const NOW: &str = "2025-01-01T00:10:00Z";

fn owner(kind: &str, api_version: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        ..Default::default()
    }
}

fn pod(name: &str, ready: bool, controller: Option<OwnerReference>) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("default".into());
    p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    p.metadata.owner_references = controller.map(|c| vec![c]);
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    p
}

fn budget(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
    let mut b = PodDisruptionBudget::default();
    b.metadata.name = Some("web".into());
    b.metadata.namespace = Some("default".into());
    b.metadata.generation = Some(3);
    b.spec = Some(PodDisruptionBudgetSpec {
        min_available: min,
        max_unavailable: max,
        selector: Some(LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    b
}

/// A Deployment `web` of `replicas` with its ReplicaSet `web-1`: the owner of its pods.
fn deployment(fake: &FakeCluster, replicas: i32) -> OwnerReference {
    let mut d = Deployment::default();
    d.metadata.name = Some("web".into());
    d.metadata.namespace = Some("default".into());
    d.metadata.uid = Some("dep-uid".into());
    d.spec = Some(DeploymentSpec {
        replicas: Some(replicas),
        ..Default::default()
    });
    fake.seed(&d);
    let mut rs = ReplicaSet::default();
    rs.metadata.name = Some("web-1".into());
    rs.metadata.namespace = Some("default".into());
    rs.metadata.uid = Some("rs-uid".into());
    rs.metadata.owner_references = Some(vec![owner("Deployment", "apps/v1", "web", "dep-uid")]);
    rs.spec = Some(ReplicaSetSpec {
        replicas: Some(replicas),
        ..Default::default()
    });
    fake.seed(&rs);
    owner("ReplicaSet", "apps/v1", "web-1", "rs-uid")
}

fn run(fake: &FakeCluster) -> std::result::Result<Outcome, String> {
    kedge_guest::run::<DisruptionController>(
        fake,
        &ObjectKey::of::<PodDisruptionBudget>("default", "web"),
    )
}

fn status(fake: &FakeCluster) -> PodDisruptionBudgetStatus {
    fake.get::<PodDisruptionBudget>("default", "web")
        .unwrap()
        .unwrap()
        .status
        .unwrap()
}

fn condition(s: &PodDisruptionBudgetStatus) -> (String, String) {
    let c = s
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == DISRUPTION_ALLOWED)
        .unwrap();
    (c.status.clone(), c.reason.clone())
}

fn fake() -> FakeCluster {
    let fake = FakeCluster::new();
    fake.set_now(NOW);
    fake
}

/// The status as Kubernetes' disruption controller computes it, for each way of stating the
/// budget: `(expectedPods, desiredHealthy, currentHealthy, disruptionsAllowed)`.
#[test]
fn status_follows_the_budget_and_the_pods() {
    let int = IntOrString::Int;
    let pct = |s: &str| IntOrString::String(s.into());
    let cases = [
        // Integer minAvailable: expected is the number of pods (3 of the 4 ready).
        ("min 2", Some(int(2)), None, (4, 2, 3, 1)),
        ("min 3", Some(int(3)), None, (4, 3, 3, 0)),
        // Percentages and maxUnavailable use the controller's scale (4), rounding up.
        ("min 50%", Some(pct("50%")), None, (4, 2, 3, 1)),
        ("min 60%", Some(pct("60%")), None, (4, 3, 3, 0)),
        ("max 1", None, Some(int(1)), (4, 3, 3, 0)),
        ("max 50%", None, Some(pct("50%")), (4, 2, 3, 1)),
        ("max 100%", None, Some(pct("100%")), (4, 0, 3, 3)),
        ("neither", None, None, (0, 0, 3, 0)),
    ];
    for (what, min, max, want) in cases {
        let fake = fake();
        let rs = deployment(&fake, 4);
        for (i, ready) in [true, true, true, false].into_iter().enumerate() {
            fake.seed(&pod(&format!("web-{i}"), ready, Some(rs.clone())));
        }
        fake.seed(&budget(min, max));
        assert_eq!(run(&fake), Ok(Outcome::done()), "{what}");
        let s = status(&fake);
        assert_eq!(
            (
                s.expected_pods,
                s.desired_healthy,
                s.current_healthy,
                s.disruptions_allowed
            ),
            want,
            "{what}"
        );
        assert_eq!(s.observed_generation, Some(3), "{what}");
        let want_cond = if want.3 > 0 {
            ("True", "SufficientPods")
        } else {
            ("False", "InsufficientPods")
        };
        let got = condition(&s);
        assert_eq!((got.0.as_str(), got.1.as_str()), want_cond, "{what}");
        // Converged: a second pass writes nothing.
        fake.clear_writes();
        run(&fake).unwrap();
        assert_eq!(
            fake.count(Verb::UpdateStatus, "PodDisruptionBudget"),
            0,
            "{what}"
        );
    }
}

/// An approved eviction keeps its pod out of `currentHealthy` until it is being deleted, or
/// for two minutes; the budget is looked at again when the entry expires.
#[test]
fn disrupted_pods_are_not_counted_until_they_expire() {
    let fake = fake();
    let rs = deployment(&fake, 3);
    for i in 0..3 {
        fake.seed(&pod(&format!("web-{i}"), true, Some(rs.clone())));
    }
    let mut b = budget(Some(IntOrString::Int(1)), None);
    b.status = Some(PodDisruptionBudgetStatus {
        disrupted_pods: Some(
            [
                // Approved a minute ago: pending.
                (
                    "web-0".to_string(),
                    parse_time("2025-01-01T00:09:00Z").unwrap(),
                ),
                // Approved long ago and never deleted: counts again.
                (
                    "web-1".to_string(),
                    parse_time("2025-01-01T00:00:00Z").unwrap(),
                ),
                // Its pod is gone: dropped.
                (
                    "gone".to_string(),
                    parse_time("2025-01-01T00:09:30Z").unwrap(),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    });
    fake.seed(&b);
    assert_eq!(run(&fake), Ok(Outcome::requeue_after_ms(60_000)));
    let s = status(&fake);
    assert_eq!((s.current_healthy, s.disruptions_allowed), (2, 1));
    assert_eq!(
        s.disrupted_pods.unwrap().into_keys().collect::<Vec<_>>(),
        ["web-0"]
    );
    let events = fake.list::<Event>("default", "").unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("NotDeleted")
                && e.involved_object.name.as_deref() == Some("web-1")),
        "{events:?}"
    );
}

/// Terminating and unready pods are not healthy; an integer minAvailable still counts them as
/// expected, as Kubernetes does.
#[test]
fn terminating_and_unready_pods_are_not_healthy() {
    let fake = fake();
    let mut leaving = pod("web-0", true, None);
    leaving.metadata.deletion_timestamp = parse_time(NOW);
    fake.seed(&leaving);
    fake.seed(&pod("web-1", false, None));
    fake.seed(&pod("web-2", true, None));
    let mut other = pod("db-0", true, None);
    other.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
    fake.seed(&other);
    fake.seed(&budget(Some(IntOrString::Int(1)), None));
    run(&fake).unwrap();
    let s = status(&fake);
    assert_eq!(
        (s.expected_pods, s.current_healthy, s.disruptions_allowed),
        (3, 1, 0)
    );
}

/// A percentage over pods without a controller: they are left out, with a Warning; over a pod
/// whose controller is gone: the budget fails closed.
#[test]
fn unmanaged_and_orphaned_pods() {
    let fake = fake();
    let rs = deployment(&fake, 2);
    fake.seed(&pod("web-0", true, Some(rs.clone())));
    fake.seed(&pod("web-1", true, Some(rs)));
    fake.seed(&pod("stray", true, None));
    fake.seed(&budget(Some(IntOrString::String("50%".into())), None));
    run(&fake).unwrap();
    let s = status(&fake);
    assert_eq!(
        (
            s.expected_pods,
            s.desired_healthy,
            s.current_healthy,
            s.disruptions_allowed
        ),
        (2, 1, 3, 2)
    );
    let events = fake.list::<Event>("default", "").unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("UnmanagedPods"))
    );

    let orphan = owner("ReplicaSet", "apps/v1", "missing", "nope");
    fake.seed(&pod("web-9", true, Some(orphan)));
    let err = run(&fake).unwrap_err();
    assert!(
        err.contains("found no controllers for pod \"web-9\""),
        "{err}"
    );
    let s = status(&fake);
    assert_eq!(s.disruptions_allowed, 0);
    assert_eq!(condition(&s), ("False".into(), "SyncFailed".into()));
}

/// policy/v1 selectors: an empty one picks every pod of the namespace, an absent one none.
#[test]
fn empty_selector_picks_all_absent_picks_none() {
    let fake = fake();
    for i in 0..2 {
        fake.seed(&pod(&format!("web-{i}"), true, None));
    }
    let mut b = budget(Some(IntOrString::Int(1)), None);
    b.spec.as_mut().unwrap().selector = Some(LabelSelector::default());
    fake.seed(&b);
    run(&fake).unwrap();
    assert_eq!(status(&fake).expected_pods, 2);
    let mut b = fake
        .get::<PodDisruptionBudget>("default", "web")
        .unwrap()
        .unwrap();
    b.spec.as_mut().unwrap().selector = None;
    fake.seed(&b);
    run(&fake).unwrap();
    let s = status(&fake);
    assert_eq!((s.expected_pods, s.disruptions_allowed), (0, 0));
}

#[test]
fn percentages_round_up() {
    assert_eq!(scaled(&IntOrString::String("50%".into()), 3), Ok(2));
    assert_eq!(scaled(&IntOrString::String("10%".into()), 4), Ok(1));
    assert_eq!(scaled(&IntOrString::String("0%".into()), 4), Ok(0));
    assert_eq!(scaled(&IntOrString::Int(7), 4), Ok(7));
    assert!(scaled(&IntOrString::String("half".into()), 4).is_err());
}
