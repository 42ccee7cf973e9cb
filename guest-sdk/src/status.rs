//! Generic access to a kind's `status`, what
//! [`ClusterExt::update_status_if_changed`](crate::ClusterExt::update_status_if_changed) needs
//! (kube-core has the same trait).

use k8s_openapi::api::{apps, autoscaling, batch, core, networking, policy};

/// A kind with a `status` field. Implemented for the k8s-openapi kinds a controller usually
/// writes the status of; a plugin's own types implement it themselves.
///
/// ```
/// use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
/// use kedge_guest::HasStatus;
/// let mut d = Deployment::default();
/// assert!(d.status().is_none());
/// *d.status_mut() = Some(DeploymentStatus { replicas: Some(3), ..Default::default() });
/// assert_eq!(d.status().unwrap().replicas, Some(3));
/// ```
pub trait HasStatus {
    /// The status type; its `Default` is what an absent status means.
    type Status: PartialEq + Default;
    /// The status as stored, if any.
    fn status(&self) -> Option<&Self::Status>;
    /// The status to change.
    fn status_mut(&mut self) -> &mut Option<Self::Status>;
}

macro_rules! has_status {
    ($($kind:path => $status:path),* $(,)?) => {$(
        impl HasStatus for $kind {
            type Status = $status;
            fn status(&self) -> Option<&Self::Status> {
                self.status.as_ref()
            }
            fn status_mut(&mut self) -> &mut Option<Self::Status> {
                &mut self.status
            }
        }
    )*};
}

has_status! {
    apps::v1::DaemonSet => apps::v1::DaemonSetStatus,
    apps::v1::Deployment => apps::v1::DeploymentStatus,
    apps::v1::ReplicaSet => apps::v1::ReplicaSetStatus,
    apps::v1::StatefulSet => apps::v1::StatefulSetStatus,
    autoscaling::v2::HorizontalPodAutoscaler => autoscaling::v2::HorizontalPodAutoscalerStatus,
    batch::v1::CronJob => batch::v1::CronJobStatus,
    batch::v1::Job => batch::v1::JobStatus,
    core::v1::Namespace => core::v1::NamespaceStatus,
    core::v1::Node => core::v1::NodeStatus,
    core::v1::PersistentVolume => core::v1::PersistentVolumeStatus,
    core::v1::PersistentVolumeClaim => core::v1::PersistentVolumeClaimStatus,
    core::v1::Pod => core::v1::PodStatus,
    core::v1::ReplicationController => core::v1::ReplicationControllerStatus,
    core::v1::ResourceQuota => core::v1::ResourceQuotaStatus,
    core::v1::Service => core::v1::ServiceStatus,
    networking::v1::Ingress => networking::v1::IngressStatus,
    policy::v1::PodDisruptionBudget => policy::v1::PodDisruptionBudgetStatus,
}
