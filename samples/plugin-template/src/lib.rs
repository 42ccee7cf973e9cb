//! A template kedge operator plugin: the controller of its own custom kind. Copy this crate,
//! rename it, change the kind and the reconcile.
//!
//! What it does: a `Greeting` (`samples.kedge.dev/v1`, namespaced, short name `gr`; its
//! CustomResourceDefinition is `greeting-crd.yaml` beside this crate) asks for a ConfigMap
//! holding its message. The controller writes that ConfigMap (named after the Greeting unless
//! `spec.configMapName` says otherwise) with `data.greeting` and `data.version` (this build's
//! [`VERSION`]), owned by the Greeting through a controller owner reference so the garbage
//! collector deletes it with the Greeting, and reports `status.observedGeneration`,
//! `status.configMap`, `status.phase` and a `Ready` condition. A ConfigMap of that name that
//! someone else manages is left alone and reported (`Ready=False`, reason
//! `ConfigMapNotOwned`).
//!
//! It shows the parts every operator has: the custom kind's Rust type
//! ([`kedge_guest::custom_resource!`]), a registration (what it reconciles, owns and may touch),
//! a level-triggered reconcile that reads the object fresh, writes only what differs, tolerates
//! the object being gone and ends by writing status; and unit tests against the SDK's fake
//! cluster.
//!
//! Two builds: the default one is v1; the `v2` feature (and the `kedge-sample-plugin-template-v2`
//! package in `v2/`, the same source with it on, which kedge's tests hot-swap in) writes
//! `data.version: v2`, and an exclamation mark more for the `Excited` style.
//!
//! Build, push, run (see the README's "Writing one"):
//! `cargo build -p kedge-sample-plugin-template --target wasm32-wasip2 --release`, then
//! `kedge push target/wasm32-wasip2/release/kedge_sample_plugin_template.wasm REGISTRY/greeter:v1`,
//! `kubectl apply -f greeting-crd.yaml`, `kubectl apply` a Plugin naming that image, and
//! `kubectl apply -f greeting.yaml`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kedge_guest::meta::{controller_of, new_controller_ref, parse_time, set_condition};
use kedge_guest::{
    ApiResultExt, Cluster, ClusterExt, Controller, KindRef, ObjectKey, Outcome, Registration,
    Result,
};
use serde::{Deserialize, Serialize};

/// What this build writes as `data.version`.
#[cfg(not(feature = "v2"))]
pub const VERSION: &str = "v1";
/// What this build writes as `data.version`.
#[cfg(feature = "v2")]
pub const VERSION: &str = "v2";

/// The label on the ConfigMaps this controller writes: the Greeting's name.
pub const LABEL: &str = "samples.kedge.dev/greeting";

/// How the greeting is written (the CRD's enum; `Plain` by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Style {
    /// The message as written.
    #[default]
    Plain,
    /// The message with an exclamation mark (two in v2).
    Excited,
}

/// `spec` of a Greeting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GreetingSpec {
    /// What to write; required by the CRD's schema.
    pub message: String,
    /// How to write it.
    #[serde(default)]
    pub style: Style,
    /// The ConfigMap to write; the Greeting's own name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
}

/// `status` of a Greeting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GreetingStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The ConfigMap holding the greeting, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// `Ready` or `Blocked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The `Ready` condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

kedge_guest::custom_resource! {
    /// A greeting kept in a ConfigMap.
    pub struct Greeting {
        group: "samples.kedge.dev",
        version: "v1",
        plural: "greetings",
        scope: Namespaced,
        spec: GreetingSpec,
        status: GreetingStatus,
    }
}

/// The greeting text this build writes for `spec`.
pub fn greeting_text(spec: &GreetingSpec) -> String {
    match (spec.style, VERSION) {
        (Style::Plain, _) => spec.message.clone(),
        (Style::Excited, "v1") => format!("{}!", spec.message),
        (Style::Excited, _) => format!("{}!!", spec.message),
    }
}

/// The ConfigMap `data` this build wants for `spec`.
pub fn desired_data(spec: &GreetingSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("greeting".to_string(), greeting_text(spec)),
        ("version".to_string(), VERSION.to_string()),
    ])
}

pub struct Greeter;

impl Controller for Greeter {
    fn registration() -> Registration {
        // Every event on a Greeting reconciles it; events on the ConfigMaps it controls
        // reconcile their Greeting (someone edits or deletes one: it is written back). The host
        // refuses writes to anything not listed (and the Plugin object must grant these:
        // Greeting and ConfigMap in spec.watches, the three in spec.writes). Greeting is in
        // `writes` for its status.
        Registration::new("greeter", KindRef::of::<Greeting>())
            .owns([KindRef::of::<ConfigMap>()])
            .writes([
                KindRef::of::<Greeting>(),
                KindRef::of::<ConfigMap>(),
                KindRef::of::<Event>(),
            ])
    }

    // `?` turns API and JSON errors into the reconcile's error: the host logs it and retries
    // the key with back-off (override `error_policy` to decide otherwise).
    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        let ns = key.namespace.as_str();
        let Some(greeting) = cluster.get::<Greeting>(ns, &key.name)? else {
            // Deleted meanwhile: the garbage collector deletes its ConfigMap.
            return Ok(Outcome::done());
        };
        if greeting.metadata.deletion_timestamp.is_some() {
            return Ok(Outcome::done());
        }
        let uid = greeting.metadata.uid.clone().unwrap_or_default();
        let want_name = greeting
            .spec
            .config_map_name
            .clone()
            .unwrap_or_else(|| key.name.clone());
        let want_data = desired_data(&greeting.spec);

        let ready = match cluster.get::<ConfigMap>(ns, &want_name)? {
            None => {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(want_name.clone());
                cm.metadata.labels = Some(BTreeMap::from([(LABEL.into(), key.name.clone())]));
                cm.metadata.owner_references = Some(vec![new_controller_ref(&greeting)]);
                cm.data = Some(want_data);
                // `None`: created meanwhile; its event brings this key back.
                if cluster.create(ns, &cm).ignore_already_exists()?.is_some() {
                    let msg = format!("wrote ConfigMap {want_name}");
                    let _ = cluster.record_event(&greeting, "Normal", "Written", &msg, "greeter");
                }
                Ok(())
            }
            Some(cm) if controller_of(&cm.metadata).is_some_and(|r| r.uid == uid) => {
                if cm.data.as_ref() != Some(&want_data) {
                    let mut cm = cm;
                    cm.data = Some(want_data);
                    // Conditional on the resourceVersion read; a lost race comes back.
                    if cluster.update(ns, &cm).ignore_stale()?.is_some() {
                        let msg = format!("updated ConfigMap {want_name}");
                        let _ =
                            cluster.record_event(&greeting, "Normal", "Written", &msg, "greeter");
                    }
                }
                Ok(())
            }
            Some(_) => Err(format!(
                "ConfigMap {want_name} exists and is not controlled by this Greeting"
            )),
        };

        // A ConfigMap written under a former `configMapName` goes.
        for old in cluster.list::<ConfigMap>(ns, &format!("{LABEL}={}", key.name))? {
            let name = old.metadata.name.as_deref().unwrap_or_default();
            if name != want_name && controller_of(&old.metadata).is_some_and(|r| r.uid == uid) {
                cluster.delete::<ConfigMap>(ns, name).ignore_not_found()?;
            }
        }

        let mut status = greeting.status.clone().unwrap_or_default();
        status.observed_generation = greeting.metadata.generation;
        let now = parse_time(&cluster.now()).ok_or("the host's clock is not RFC 3339")?;
        let condition = match &ready {
            Ok(()) => {
                status.phase = Some("Ready".into());
                status.config_map = Some(want_name);
                Condition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: "ConfigMapWritten".into(),
                    message: format!("greeting written by {VERSION}"),
                    last_transition_time: now,
                    observed_generation: None,
                }
            }
            Err(why) => {
                status.phase = Some("Blocked".into());
                status.config_map = None;
                Condition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    reason: "ConfigMapNotOwned".into(),
                    message: why.clone(),
                    last_transition_time: now,
                    observed_generation: None,
                }
            }
        };
        set_condition(&mut status.conditions, condition);
        cluster.update_status_if_changed(ns, &greeting, status)?;
        Ok(Outcome::done())
    }
}

kedge_guest::export_controller!(Greeter);

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_guest::{CustomResource, FakeCluster, Verb};

    fn key(name: &str) -> ObjectKey {
        ObjectKey::of::<Greeting>("default", name)
    }

    fn spec(message: &str) -> GreetingSpec {
        GreetingSpec {
            message: message.into(),
            ..Default::default()
        }
    }

    fn config_map(fake: &FakeCluster, name: &str) -> Option<ConfigMap> {
        fake.get::<ConfigMap>("default", name).unwrap()
    }

    fn greeting(fake: &FakeCluster, name: &str) -> Greeting {
        fake.get::<Greeting>("default", name).unwrap().unwrap()
    }

    fn ready(g: &Greeting) -> (String, String) {
        let status = g.status.clone().unwrap_or_default();
        let c = status.conditions.iter().find(|c| c.type_ == "Ready");
        c.map(|c| (c.status.clone(), c.reason.clone()))
            .unwrap_or_default()
    }

    #[test]
    fn writes_an_owned_config_map_and_reports_status() {
        let fake = FakeCluster::new();
        let made = fake
            .create("default", &Greeting::new("hello", spec("Hello, edge")))
            .unwrap();
        Greeter::reconcile(&fake, &key("hello")).unwrap();

        let cm = config_map(&fake, "hello").expect("the ConfigMap");
        let data = cm.data.clone().unwrap();
        assert_eq!(data["greeting"], "Hello, edge");
        assert_eq!(data["version"], VERSION);
        assert_eq!(cm.metadata.labels.as_ref().unwrap()[LABEL], "hello");
        let owner = controller_of(&cm.metadata).expect("a controller reference");
        assert_eq!(
            (owner.api_version.as_str(), owner.kind.as_str()),
            ("samples.kedge.dev/v1", "Greeting")
        );
        assert_eq!(owner.uid, made.metadata.uid.unwrap());
        assert_eq!(owner.block_owner_deletion, Some(true));

        let g = greeting(&fake, "hello");
        let status = g.status.clone().unwrap();
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.config_map.as_deref(), Some("hello"));
        assert_eq!(status.phase.as_deref(), Some("Ready"));
        assert_eq!(ready(&g), ("True".into(), "ConfigMapWritten".into()));
        assert_eq!(fake.count(Verb::Create, "Event"), 1);

        // Level-triggered: a second reconcile finds nothing to do.
        fake.clear_writes();
        Greeter::reconcile(&fake, &key("hello")).unwrap();
        assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    }

    #[test]
    fn follows_message_and_style_changes_and_repairs_edits() {
        let fake = FakeCluster::new();
        fake.create("default", &Greeting::new("hello", spec("Hi")))
            .unwrap();
        Greeter::reconcile(&fake, &key("hello")).unwrap();

        let mut g = greeting(&fake, "hello");
        g.spec.message = "Good morning".into();
        g.spec.style = Style::Excited;
        fake.update("default", &g).unwrap();
        Greeter::reconcile(&fake, &key("hello")).unwrap();
        let want = if VERSION == "v1" {
            "Good morning!"
        } else {
            "Good morning!!"
        };
        let cm = config_map(&fake, "hello").unwrap();
        assert_eq!(cm.data.unwrap()["greeting"], want);
        let g = greeting(&fake, "hello");
        assert_eq!(g.status.unwrap().observed_generation, Some(2));

        // Someone edits the ConfigMap: written back.
        fake.patch_merge::<ConfigMap>(
            "default",
            "hello",
            &serde_json::json!({"data": {"greeting": "tampered"}}),
        )
        .unwrap();
        Greeter::reconcile(&fake, &key("hello")).unwrap();
        assert_eq!(
            config_map(&fake, "hello").unwrap().data.unwrap()["greeting"],
            want
        );
        assert_eq!(fake.count(Verb::Update, "ConfigMap"), 2);
    }

    #[test]
    fn a_new_config_map_name_moves_the_greeting() {
        let fake = FakeCluster::new();
        fake.create("default", &Greeting::new("hello", spec("Hi")))
            .unwrap();
        Greeter::reconcile(&fake, &key("hello")).unwrap();
        let mut g = greeting(&fake, "hello");
        g.spec.config_map_name = Some("hello-text".into());
        fake.update("default", &g).unwrap();
        Greeter::reconcile(&fake, &key("hello")).unwrap();
        assert!(config_map(&fake, "hello").is_none(), "the old one went");
        assert_eq!(
            config_map(&fake, "hello-text").unwrap().data.unwrap()["greeting"],
            "Hi"
        );
        let status = greeting(&fake, "hello").status.unwrap();
        assert_eq!(status.config_map.as_deref(), Some("hello-text"));
    }

    #[test]
    fn a_config_map_managed_by_someone_else_is_left_alone_and_reported() {
        let fake = FakeCluster::new();
        let mut theirs = ConfigMap::default();
        theirs.metadata.name = Some("taken".into());
        theirs.data = Some(BTreeMap::from([("k".into(), "v".into())]));
        fake.create("default", &theirs).unwrap();
        fake.create("default", &Greeting::new("taken", spec("Hi")))
            .unwrap();
        Greeter::reconcile(&fake, &key("taken")).unwrap();
        assert_eq!(config_map(&fake, "taken").unwrap().data, theirs.data);
        let g = greeting(&fake, "taken");
        assert_eq!(ready(&g), ("False".into(), "ConfigMapNotOwned".into()));
        let status = g.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Blocked"));
        assert_eq!(status.config_map, None);

        // Once it is gone, the Greeting takes the name.
        fake.delete::<ConfigMap>("default", "taken").unwrap();
        Greeter::reconcile(&fake, &key("taken")).unwrap();
        let g = greeting(&fake, "taken");
        assert_eq!(ready(&g), ("True".into(), "ConfigMapWritten".into()));
    }

    #[test]
    fn deleting_the_greeting_lets_the_garbage_collector_take_the_config_map() {
        let fake = FakeCluster::new();
        fake.create("default", &Greeting::new("bye", spec("Bye")))
            .unwrap();
        Greeter::reconcile(&fake, &key("bye")).unwrap();
        fake.delete::<Greeting>("default", "bye").unwrap();
        fake.clear_writes();
        // Gone: nothing to do, nothing written.
        Greeter::reconcile(&fake, &key("bye")).unwrap();
        assert!(fake.writes().is_empty());
        assert_eq!(fake.collect_garbage(), 1);
        assert!(config_map(&fake, "bye").is_none());
    }

    #[test]
    fn the_two_builds_differ_in_what_they_write() {
        let excited = GreetingSpec {
            message: "Hi".into(),
            style: Style::Excited,
            config_map_name: None,
        };
        let (version, text) = if cfg!(feature = "v2") {
            ("v2", "Hi!!")
        } else {
            ("v1", "Hi!")
        };
        assert_eq!(desired_data(&excited)["version"], version);
        assert_eq!(greeting_text(&excited), text);
        assert_eq!(greeting_text(&spec("Hi")), "Hi");
    }

    #[test]
    fn registration_names_the_custom_kind() {
        let r = Greeter::registration();
        assert_eq!(r.for_kind, KindRef::new("samples.kedge.dev/v1", "Greeting"));
        assert_eq!(r.owns, vec![KindRef::new("v1", "ConfigMap")]);
        assert!(r.writes.contains(&KindRef::of::<Greeting>()));
        assert_eq!(Greeting::PLURAL, "greetings");
    }

    /// The CRD shipped beside the crate declares what the Rust type says.
    #[test]
    fn the_crd_manifest_matches_the_type() {
        let crd = include_str!("../greeting-crd.yaml");
        for needle in [
            "name: greetings.samples.kedge.dev",
            "group: samples.kedge.dev",
            "kind: Greeting",
            "plural: greetings",
            "scope: Namespaced",
            "- name: v1",
            "status: {}",
            "configMapName:",
            "observedGeneration:",
            // READY reads the Ready condition.
            r#"jsonPath: .status.conditions[?(@.type=="Ready")].status"#,
        ] {
            assert!(crd.contains(needle), "greeting-crd.yaml lacks {needle:?}");
        }
        let example = include_str!("../greeting.yaml");
        assert!(example.contains("apiVersion: samples.kedge.dev/v1"));
        assert!(example.contains("kind: Greeting"));
    }
}
