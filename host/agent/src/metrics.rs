//! The agent's metrics, served at the kubelet endpoint's `/metrics` (so through the API
//! server proxy: `kubectl get --raw /api/v1/nodes/NAME/proxy/metrics`, which RBAC guards as
//! `nodes/proxy`): container starts, image pulls and probe results, under kubelet's names
//! where it has one.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::probe::ProbeKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    container_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    container_type: &'static str,
    /// kubelet's reason: `RunContainerError`, `CreateContainerConfigError`.
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe_type: &'static str,
    result: &'static str,
}

/// The agent's registry and what records into it. Cloning shares them.
#[derive(Clone, Debug)]
pub(crate) struct AgentMetrics {
    registry: Arc<Registry>,
    started: Family<StartLabels, Counter>,
    start_errors: Family<ErrorLabels, Counter>,
    pulls: Family<ResultLabels, Counter>,
    pull_duration: Histogram,
    probes: Family<ProbeLabels, Counter>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let started = Family::<StartLabels, Counter>::default();
        let start_errors = Family::<ErrorLabels, Counter>::default();
        let pulls = Family::<ResultLabels, Counter>::default();
        // 10 ms (a cached layer) to ~10 min (a big image on a slow link).
        let pull_duration = Histogram::new(exponential_buckets(0.01, 2.0, 17));
        let probes = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "kubelet_started_containers",
            "Containers started (init containers as container_type=init_container)",
            started.clone(),
        );
        registry.register(
            "kubelet_started_containers_errors",
            "Container runs that failed to start, by kubelet's reason",
            start_errors.clone(),
        );
        registry.register(
            "kedge_agent_image_pulls",
            "Image pulls by result: pulled, present (no pull needed) or failed",
            pulls.clone(),
        );
        registry.register(
            "kedge_agent_image_pull_duration_seconds",
            "Time an image pull from a registry takes",
            pull_duration.clone(),
        );
        registry.register(
            "prober_probe",
            "Probe attempts by probe type and result (successful, failed)",
            probes.clone(),
        );
        AgentMetrics {
            registry: Arc::new(registry),
            started,
            start_errors,
            pulls,
            pull_duration,
            probes,
        }
    }
}

fn container_type(init: bool) -> StartLabels {
    StartLabels {
        container_type: if init { "init_container" } else { "container" },
    }
}

impl AgentMetrics {
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn container_started(&self, init: bool) {
        self.started.get_or_create(&container_type(init)).inc();
    }

    pub(crate) fn container_start_failed(&self, init: bool, code: &'static str) {
        let container_type = container_type(init).container_type;
        self.start_errors
            .get_or_create(&ErrorLabels {
                container_type,
                code,
            })
            .inc();
    }

    /// One image made ready: `pulled` says whether a registry was asked (then `took` is
    /// the pull's time).
    pub(crate) fn image(&self, ok: bool, pulled: bool, took: std::time::Duration) {
        let result = match (ok, pulled) {
            (false, _) => "failed",
            (true, true) => "pulled",
            (true, false) => "present",
        };
        if pulled && ok {
            self.pull_duration.observe(took.as_secs_f64());
        }
        self.pulls.get_or_create(&ResultLabels { result }).inc();
    }

    pub(crate) fn probe(&self, kind: ProbeKind, ok: bool) {
        let probe_type = match kind {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        };
        let result = if ok { "successful" } else { "failed" };
        self.probes
            .get_or_create(&ProbeLabels { probe_type, result })
            .inc();
    }
}

/// `GET /metrics` on the kubelet endpoint.
pub(crate) async fn serve(
    axum::extract::State(kubelet): axum::extract::State<Arc<crate::kubelet::Kubelet>>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, kubelet.metrics.registry())
    {
        return (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response();
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    /// What the agent records shows at the kubelet endpoint's `/metrics`, in the text format.
    #[tokio::test]
    async fn the_kubelet_endpoint_serves_what_was_recorded() {
        let metrics = AgentMetrics::default();
        metrics.container_started(false);
        metrics.container_started(true);
        metrics.container_start_failed(false, "RunContainerError");
        metrics.image(true, true, std::time::Duration::from_millis(30));
        metrics.image(true, false, std::time::Duration::ZERO);
        metrics.probe(ProbeKind::Readiness, false);
        let router = crate::kubelet::kubelet_router(Arc::new(crate::kubelet::Kubelet {
            logs: Default::default(),
            oci: None,
            wasm: kedge_runtime::wasm::WasmRuntime::new().unwrap(),
            cancel: tokio_util::sync::CancellationToken::new(),
            metrics,
        }));
        let req = http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = router.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        for line in [
            "kubelet_started_containers_total{container_type=\"container\"} 1",
            "kubelet_started_containers_total{container_type=\"init_container\"} 1",
            "kubelet_started_containers_errors_total{container_type=\"container\",code=\"RunContainerError\"} 1",
            "kedge_agent_image_pulls_total{result=\"pulled\"} 1",
            "kedge_agent_image_pulls_total{result=\"present\"} 1",
            "kedge_agent_image_pull_duration_seconds_count 1",
            "prober_probe_total{probe_type=\"Readiness\",result=\"failed\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
