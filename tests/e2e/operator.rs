//! The plugin template as the operator of its own custom kind, end to end with the real
//! kubectl: its CustomResourceDefinition applied, the plugin applied from a file, a Greeting
//! reconciled into an owned ConfigMap with its status reported, the plugin hot-swapped to its
//! v2 build (which the existing object then shows), and the ConfigMap garbage-collected with
//! its Greeting.

use crate::harness::{Cluster, repo};
use crate::plugins::digest;

pub(crate) const TEMPLATE_V1: &str =
    concat!(env!("KEDGE_WASM_DIR"), "/kedge_sample_plugin_template.wasm");
pub(crate) const TEMPLATE_V2: &str = concat!(
    env!("KEDGE_WASM_DIR"),
    "/kedge_sample_plugin_template_v2.wasm"
);

/// The sample's CRD, applied and Established.
pub(crate) fn install_greeting_crd(c: &Cluster) {
    let crd = repo().join("samples/plugin-template/greeting-crd.yaml");
    let applied = c.kubectl(&["apply", "-f", crd.to_str().unwrap()]);
    assert!(applied.ok, "{}", applied.stderr);
    c.wait("the Greeting CRD to be Established", || {
        let out = c.kubectl(&[
            "get",
            "crd",
            "greetings.samples.kedge.dev",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ]);
        (out.ok && out.stdout.trim() == "True").then_some(())
    });
}

/// The Plugin running the template from `file`, with the grant its registration needs.
pub(crate) fn greeter_plugin_yaml(file: &str) -> String {
    format!(
        r#"apiVersion: plugins.kedge.io/v1
kind: Plugin
metadata:
  name: greeter
spec:
  source:
    file: {file}
  watches:
  - {{apiVersion: samples.kedge.dev/v1, kind: Greeting}}
  - {{apiVersion: v1, kind: ConfigMap}}
  writes:
  - {{apiVersion: samples.kedge.dev/v1, kind: Greeting}}
  - {{apiVersion: v1, kind: ConfigMap}}
  - {{apiVersion: v1, kind: Event}}
  limits:
    callDeadlineMilliseconds: 500
    memory: 16Mi
"#
    )
}

/// Applies the greeter Plugin from `file` and waits until that version is Active.
pub(crate) fn apply_greeter(c: &Cluster, file: &str) {
    let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(&greeter_plugin_yaml(file)));
    assert!(applied.ok, "{}", applied.stderr);
    let want = digest(&std::fs::read(file).unwrap());
    c.wait(&format!("greeter {file} to be Active"), || {
        let get = |path: &str| {
            c.k(&[
                "get",
                "plugin",
                "greeter",
                "-o",
                &format!("jsonpath={path}"),
            ])
        };
        let reason = get("{.status.conditions[?(@.type==\"Ready\")].reason}");
        let active = get("{.status.activeDigest}");
        let observed = get("{.status.observedGeneration}");
        let generation = get("{.metadata.generation}");
        (reason == "Active" && active == want && observed == generation).then_some(())
    });
}

fn jsonpath(c: &Cluster, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let arg = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &arg]);
    let out = c.kubectl(&args);
    if out.ok { out.stdout } else { String::new() }
}

/// Waits until ConfigMap `name` holds `greeting` written by `version`.
fn wait_config_map(c: &Cluster, name: &str, greeting: &str, version: &str) {
    c.wait(
        &format!("ConfigMap {name}: {greeting:?} by {version}"),
        || {
            let g = jsonpath(c, &["configmap", name], "{.data.greeting}");
            let v = jsonpath(c, &["configmap", name], "{.data.version}");
            (g == greeting && v == version).then_some(())
        },
    );
}

#[test]
fn the_template_operator_reconciles_greetings_and_is_hot_swapped_to_v2() {
    let c = Cluster::start();
    install_greeting_crd(&c);
    apply_greeter(&c, TEMPLATE_V1);

    // The sample's own example object.
    let example = repo().join("samples/plugin-template/greeting.yaml");
    let applied = c.kubectl(&["apply", "-f", example.to_str().unwrap()]);
    assert!(applied.ok, "{}", applied.stderr);
    wait_config_map(&c, "hello", "Hello, edge!", "v1");

    // Owned by the Greeting, as its controller.
    let uid = c.k(&["get", "greeting", "hello", "-o", "jsonpath={.metadata.uid}"]);
    let owner = c.k(&[
        "get",
        "configmap",
        "hello",
        "-o",
        "jsonpath={.metadata.ownerReferences[0].apiVersion} {.metadata.ownerReferences[0].kind} {.metadata.ownerReferences[0].uid} {.metadata.ownerReferences[0].controller}",
    ]);
    assert_eq!(owner, format!("samples.kedge.dev/v1 Greeting {uid} true"));

    // The status, through the status subresource.
    c.wait("the Greeting's status", || {
        let s = jsonpath(
            &c,
            &["greeting", "hello"],
            "{.status.phase} {.status.configMap} {.status.observedGeneration} {.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"Ready\")].reason}",
        );
        (s == "Ready hello 1 True ConfigMapWritten").then_some(())
    });

    // The CRD's default fills the style of a Greeting that gives none; its short name works.
    let plain = "apiVersion: samples.kedge.dev/v1\nkind: Greeting\nmetadata:\n  name: plain\nspec:\n  message: Good day\n";
    let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(plain));
    assert!(applied.ok, "{}", applied.stderr);
    assert_eq!(
        c.k(&["get", "gr", "plain", "-o", "jsonpath={.spec.style}"]),
        "Plain"
    );
    wait_config_map(&c, "plain", "Good day", "v1");

    // The schema refuses what the controller could not honour, with the field named.
    let bad_style = plain
        .replace("name: plain", "name: loud")
        .replace("message: Good day", "message: Hi\n  style: Loud");
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(&bad_style));
    assert!(!out.ok, "a style outside the enum was accepted");
    assert!(
        out.stderr.contains("spec.style") && out.stderr.contains("Unsupported value"),
        "{}",
        out.stderr
    );
    let no_message = plain
        .replace("name: plain", "name: mute")
        .replace("message: Good day", "style: Plain");
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(&no_message));
    assert!(!out.ok, "a Greeting without a message was accepted");
    assert!(
        out.stderr.contains("spec.message") && out.stderr.contains("Required value"),
        "{}",
        out.stderr
    );

    // The printer columns of the CRD in `kubectl get`.
    c.wait("the printer columns", || {
        let table = c.k(&["get", "greetings"]);
        let header = table.lines().next().unwrap_or_default().to_string();
        let hello = table
            .lines()
            .find(|l| l.starts_with("hello "))
            .unwrap_or_default()
            .to_string();
        let cols: Vec<&str> = header.split_whitespace().collect();
        (cols == ["NAME", "MESSAGE", "CONFIGMAP", "READY", "AGE"]
            && hello.contains("Hello, edge")
            && hello.contains(" True "))
        .then_some(())
    });

    // Hot swap to v2: every Greeting is queued once for the new version, so the existing
    // object shows the new behaviour without being touched.
    apply_greeter(&c, TEMPLATE_V2);
    wait_config_map(&c, "hello", "Hello, edge!!", "v2");
    wait_config_map(&c, "plain", "Good day", "v2");
    // An edit is handled by v2 too, and the status follows the generation.
    let patched = c.kubectl(&[
        "patch",
        "greeting",
        "hello",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"message":"Goodbye"}}"#,
    ]);
    assert!(patched.ok, "{}", patched.stderr);
    wait_config_map(&c, "hello", "Goodbye!!", "v2");
    c.wait("status of generation 2", || {
        let s = jsonpath(
            &c,
            &["greeting", "hello"],
            "{.status.observedGeneration} {.status.conditions[?(@.type==\"Ready\")].message}",
        );
        (s == "2 greeting written by v2").then_some(())
    });
    // What the controller did is on record for `kubectl describe`.
    let describe = c.k(&["describe", "greeting", "hello"]);
    assert!(
        describe.contains("Written") && describe.contains("updated ConfigMap hello"),
        "{describe}"
    );

    // Deleting the Greeting deletes its ConfigMap (garbage collection by owner reference).
    let deleted = c.kubectl(&["delete", "greeting", "hello"]);
    assert!(deleted.ok, "{}", deleted.stderr);
    c.wait("the ConfigMap to be garbage-collected", || {
        let out = c.kubectl(&["get", "configmap", "hello"]);
        (!out.ok && out.stderr.contains("NotFound")).then_some(())
    });
    // The other Greeting's ConfigMap stays.
    assert_eq!(
        c.k(&[
            "get",
            "configmap",
            "plain",
            "-o",
            "jsonpath={.data.greeting}"
        ]),
        "Good day"
    );
}
