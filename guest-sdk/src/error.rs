use crate::ApiError;

/// Why a reconcile failed. The WIT export carries only its text: the host logs it and retries
/// the key with exponential back-off (see [`Controller::error_policy`](crate::Controller)).
///
/// `?` converts the errors a reconcile meets, so a plugin needs no `map_err`:
///
/// ```
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kedge_guest::{Cluster, ClusterExt, Error, FakeCluster, Result};
///
/// fn size(cluster: &dyn Cluster) -> Result<usize> {
///     let cm = cluster.get::<ConfigMap>("default", "settings")?.ok_or("no settings")?;
///     let text = serde_json::to_string(&cm.data)?;
///     Ok(text.len())
/// }
/// let err = size(&FakeCluster::new()).unwrap_err();
/// assert_eq!(err.to_string(), "no settings");
/// assert!(matches!(err, Error::Message(_)));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed; the text is the [`ApiError`]'s.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// Encoding or decoding JSON failed.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// Anything else, in the plugin's own words.
    #[error("{0}")]
    Message(String),
}

/// A reconcile's result: [`Error`] unless told otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error that is only a message.
    ///
    /// ```
    /// let e = kedge_guest::Error::msg(format!("{} replicas is too many", 9000));
    /// assert_eq!(e.to_string(), "9000 replicas is too many");
    /// ```
    pub fn msg(message: impl Into<String>) -> Self {
        Self::Message(message.into())
    }

    /// The API error behind this one, if any: lets an
    /// [`error_policy`](crate::Controller::error_policy) treat, say, `forbidden` differently.
    ///
    /// ```
    /// use kedge_guest::{ApiError, Error};
    /// let e = Error::from(ApiError::Forbidden("pods".into()));
    /// assert!(matches!(e.api(), Some(ApiError::Forbidden(_))));
    /// assert!(Error::msg("x").api().is_none());
    /// ```
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api(e) => Some(e),
            _ => None,
        }
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::Message(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::Message(message.to_owned())
    }
}
