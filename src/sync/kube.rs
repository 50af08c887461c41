//! The Kubernetes side of `aegis sync`, through kube-rs: read a target, write it with
//! server-side apply (field manager `aegis`), delete it with preconditions, restart a
//! workload the way `kubectl rollout restart` does.
//!
//! Transient failures (no answer, 429, 5xx) are retried here, a few times with backoff;
//! everything else (403, 404, 409, 422) is returned to the caller as a [`KubeError`]
//! carrying the API server's own reason and message. Nothing here sees a KV value except
//! inside the object being written, and no object is ever logged.

use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backoff::Backoff;
use crate::config::sync_file::{Workload, WorkloadKind};

/// The field manager of every write, as `kubectl` uses `kubectl`.
pub const FIELD_MANAGER: &str = "aegis";
/// The pod-template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// Attempts of one call when the failure is transient.
const ATTEMPTS: usize = 3;
/// How long one call may wait for the API server's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a Kubernetes call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    /// The API server answered with a failure `Status`.
    #[error("Kubernetes answered {code} {reason}: {message}")]
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer (connection refused, TLS, timeout) after the retries.
    #[error("Kubernetes API unreachable: {0}")]
    Unreachable(String),
    /// The client could not be configured (kubeconfig, in-cluster service account).
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
}

impl KubeError {
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Worth trying again at once: no answer, or the server said it is busy or broken.
    fn transient(&self) -> bool {
        match self {
            KubeError::Unreachable(_) => true,
            KubeError::Status { code, .. } => *code == 429 || *code >= 500,
            KubeError::Config(_) => false,
        }
    }

    /// A 409 from an apply whose field ownership conflicts (not a stale resourceVersion).
    pub fn is_field_conflict(&self) -> bool {
        matches!(self, KubeError::Status { code: 409, message, .. } if message.contains("conflict with"))
    }
}

impl From<kube::Error> for KubeError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => KubeError::Status {
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            kube::Error::Auth(e) => KubeError::Config(e.to_string()),
            other => KubeError::Unreachable(other.to_string()),
        }
    }
}

/// A Kubernetes API client.
#[derive(Clone)]
pub struct Kube {
    client: kube::Client,
}

impl Kube {
    /// From `kubeconfig` (and its `context`) when given, else the pod's service account.
    pub async fn connect(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
    ) -> Result<Self, KubeError> {
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
                let options = KubeConfigOptions {
                    context: context.map(str::to_owned),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::incluster().map_err(|e| {
                KubeError::Config(format!(
                    "not in a pod with a service account ({e}); set KUBECONFIG or --kubeconfig"
                ))
            })?,
        };
        // kube-rs waits up to 295 s for an answer by default: longer than a sync Job lives.
        let mut config = config;
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(CALL_TIMEOUT);
        config.write_timeout = Some(CALL_TIMEOUT);
        let client =
            kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(Kube { client })
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The object, or `None` when it does not exist.
    pub async fn get<K>(&self, namespace: &str, name: &str) -> Result<Option<K>, KubeError>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let api = self.api::<K>(namespace);
        retried(|| async { api.get_opt(name).await.map_err(KubeError::from) }).await
    }

    /// Server-side apply of `object` as field manager `aegis`; `force` takes over fields
    /// another manager owns (else the API server answers 409 naming it).
    pub async fn apply<K>(
        &self,
        namespace: &str,
        name: &str,
        object: &K,
        force: bool,
    ) -> Result<K, KubeError>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
        K::DynamicType: Default,
    {
        let api = self.api::<K>(namespace);
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = force;
        retried(|| async {
            api.patch(name, &params, &Patch::Apply(object))
                .await
                .map_err(KubeError::from)
        })
        .await
    }

    /// Deletes the object if it is still the one read (same uid and resourceVersion; the
    /// API server answers 409 otherwise). Already gone is success.
    pub async fn delete<K>(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        version: &str,
    ) -> Result<(), KubeError>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let api = self.api::<K>(namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: Some(version.to_owned()),
            }),
            ..Default::default()
        };
        match retried(|| async { api.delete(name, &params).await.map_err(KubeError::from) }).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `kubectl rollout restart`: a strategic merge patch of the pod template's
    /// `kubectl.kubernetes.io/restartedAt` annotation, so the controller rolls the pods.
    pub async fn restart(&self, w: &Workload, at: &str) -> Result<(), KubeError> {
        let patch = serde_json::json!({
            "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let patch = Patch::Strategic(patch);
        match w.kind {
            WorkloadKind::Deployment => self.patch::<Deployment>(w, &params, &patch).await,
            WorkloadKind::StatefulSet => self.patch::<StatefulSet>(w, &params, &patch).await,
        }
    }

    async fn patch<K>(
        &self,
        w: &Workload,
        params: &PatchParams,
        patch: &Patch<serde_json::Value>,
    ) -> Result<(), KubeError>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let api = self.api::<K>(&w.namespace);
        retried(|| async {
            api.patch(&w.name, params, patch)
                .await
                .map(drop)
                .map_err(KubeError::from)
        })
        .await
    }
}

/// Runs `call` until it succeeds, fails for good, or [`ATTEMPTS`] transient failures.
async fn retried<T, F, Fut>(mut call: F) -> Result<T, KubeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, KubeError>>,
{
    let mut pauses = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.transient() && attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "Kubernetes call failed; retrying");
                attempt += 1;
                tokio::time::sleep(pauses.next_pause()).await;
            }
            other => return other,
        }
    }
}
