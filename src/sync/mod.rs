//! `aegis sync`: Vault KV v2 secrets into Kubernetes Secrets, and Transit keys' published
//! public keys into ConfigMaps, once (a CronJob) or every `--interval`.
//!
//! A round reads everything it needs from Vault first (`round`); if Vault cannot be
//! read, nothing is written. Then each target is compared with the object the API server
//! has ([`plan`]) and written with server-side apply only when it differs ([`kube`]);
//! workloads named in `restart` are restarted once per round when a Secret or ConfigMap
//! they depend on changed. Every write (and every failed attempt) is one audit event: the
//! path, the KV version and the target, never a value. No value is ever logged or printed.
//!
//! Exit codes (sysexits, as the lifecycle commands): 0 every target in step; 64 the
//! configuration or mapping file is invalid; 65 a KV secret does not fit its mapping;
//! 69 Vault or the Kubernetes API unavailable; 74 an audit event could not be written;
//! 75 a write conflicted (another field manager owns a field) or kept conflicting;
//! 77 permission denied (Vault or Kubernetes); 1 anything else.

pub mod kube;
pub mod plan;
mod round;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::audit::Auditor;
use crate::config::sync_file::SyncFile;
use crate::config::Config;
use crate::vault::VaultError;

pub use round::{Action, Report, TargetReport};

/// What `aegis sync` was asked to do.
#[derive(Debug, Clone)]
pub struct SyncArgs {
    /// The mapping file.
    pub file: PathBuf,
    /// Run a round every this long (jittered 80-100 %) instead of once.
    pub interval: Option<Duration>,
    /// Take over fields another field manager owns (`kubectl apply --force-conflicts`).
    pub force_conflicts: bool,
    /// Decide and print; write nothing.
    pub dry_run: bool,
    pub json: bool,
    /// `--kubeconfig` (else `KUBECONFIG`, else the service account) and `--context`.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// Why a target (or a whole round) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Config(String),
    #[error("Vault unavailable, nothing written: {0}")]
    VaultUnavailable(String),
    #[error("Vault refused the read: {0}")]
    VaultDenied(String),
    #[error("Vault: {0}")]
    Vault(String),
    #[error("{0}")]
    Mapping(#[from] plan::PlanError),
    #[error(transparent)]
    Kube(#[from] kube::KubeError),
    #[error("the object kept changing while it was written (3 attempts); run again")]
    Contended,
    /// The target exists and Aegis did not make it: taking it over needs `--force-conflicts`.
    #[error("it exists and Aegis did not make it (no label app.kubernetes.io/managed-by=aegis with source {0}); not taking it over")]
    NotOwned(String),
    #[error("the audit event could not be written: {0}")]
    Audit(String),
}

impl SyncError {
    /// The process exit code (see the module docs).
    pub fn exit_code(&self) -> u8 {
        use kube::KubeError as K;
        match self {
            SyncError::Config(_) | SyncError::Kube(K::Config(_)) => 64,
            SyncError::Mapping(_) => 65,
            SyncError::VaultUnavailable(_) | SyncError::Kube(K::Unreachable(_)) => 69,
            SyncError::Audit(_) => 74,
            SyncError::Contended | SyncError::NotOwned(_) => 75,
            SyncError::Kube(e) if e.code() == Some(409) => 75,
            SyncError::VaultDenied(_) => 77,
            SyncError::Kube(e) if matches!(e.code(), Some(401 | 403)) => 77,
            SyncError::Kube(e) if e.code() == Some(422) => 65,
            SyncError::Vault(_) | SyncError::Kube(_) => 1,
        }
    }

    /// The metrics stage label.
    pub fn stage(&self) -> &'static str {
        match self {
            SyncError::Config(_) | SyncError::Mapping(_) => "mapping",
            SyncError::VaultUnavailable(_) | SyncError::VaultDenied(_) | SyncError::Vault(_) => {
                "vault"
            }
            SyncError::Kube(_) | SyncError::Contended | SyncError::NotOwned(_) => "kubernetes",
            SyncError::Audit(_) => "audit",
        }
    }

    /// What to do about it, for the person reading the error.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SyncError::Kube(e) if e.is_field_conflict() => Some(
                "another field manager owns these fields: remove them there, or take them over with --force-conflicts",
            ),
            SyncError::NotOwned(_) => Some(
                "delete the object, rename the target, or take it over with --force-conflicts (Aegis then owns it: on_delete = \"delete\" deletes it whole)",
            ),
            SyncError::Kube(e) if e.code() == Some(403) => {
                Some("the sync's Role lacks this verb or object: see deploy/kubernetes/sync/role.yaml")
            }
            SyncError::VaultDenied(_) => Some("the sync's Vault policy lacks read on this path: see deploy/vault/aegis-sync.hcl"),
            _ => None,
        }
    }
}

impl From<VaultError> for SyncError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Status { status: 403, .. } => SyncError::VaultDenied(e.to_string()),
            VaultError::Status { status, .. } if status >= 500 => {
                SyncError::VaultUnavailable(e.to_string())
            }
            VaultError::Unreachable { .. }
            | VaultError::Unauthenticated(_)
            | VaultError::RateLimited { .. }
            | VaultError::Redirect(_) => SyncError::VaultUnavailable(e.to_string()),
            other => SyncError::Vault(other.to_string()),
        }
    }
}

/// `aegis sync`: runs once, or every `--interval` until SIGTERM.
pub async fn run(config: &Config, args: SyncArgs) -> ExitCode {
    let file = match SyncFile::load(&args.file) {
        Ok(f) => f,
        Err(problems) => {
            eprintln!("aegis: invalid sync file ({} problem(s)):", problems.len());
            problems.iter().for_each(|p| eprintln!("  - {p}"));
            return ExitCode::from(64);
        }
    };
    let ctx = match round::Context::connect(config, &args).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match args.interval {
        None => {
            let report = ctx.round(&file).await;
            finish(&ctx, &report, args.json).await
        }
        Some(every) => {
            ctx.serve_metrics(config).await;
            tokio::select! {
                () = loop_rounds(&ctx, &file, every, args.json) => ExitCode::SUCCESS,
                () = crate::cli::shutdown_signal() => ExitCode::SUCCESS,
            }
        }
    }
}

async fn loop_rounds(ctx: &round::Context, file: &SyncFile, every: Duration, json: bool) {
    loop {
        let report = ctx.round(file).await;
        print(&report, json);
        if let Some(e) = report.failure() {
            tracing::error!(error = %e, "sync round failed; retrying at the next round");
        }
        let wait = every.mul_f64(0.8 + 0.2 * rand::random::<f64>());
        tokio::time::sleep(wait).await;
    }
}

/// Prints the report, flushes the audit trail, and turns the outcome into an exit code.
async fn finish(ctx: &round::Context, report: &Report, json: bool) -> ExitCode {
    print(report, json);
    ctx.flush_audit().await;
    match report.failure() {
        None => ExitCode::SUCCESS,
        Some(e) => fail(&e),
    }
}

fn fail(e: &SyncError) -> ExitCode {
    eprintln!("aegis: sync failed: {e}");
    if let Some(hint) = e.hint() {
        eprintln!("aegis: {hint}");
    }
    ExitCode::from(e.exit_code())
}

fn print(report: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).expect("serializable"));
    } else {
        print!("{}", report.render());
    }
}

/// The audit trail of a sync process.
fn start_auditor(config: &Config) -> Result<Auditor, SyncError> {
    Auditor::start(&config.audit).map_err(|e| SyncError::Audit(e.to_string()))
}

/// The time written into `kubectl.kubernetes.io/restartedAt` (RFC 3339, seconds).
fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
