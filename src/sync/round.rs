//! One round of `aegis sync`: read every source from Vault, then bring each target in
//! step, then restart the workloads whose Secrets or ConfigMaps changed, auditing each
//! write. A round never writes anything when a Vault read failed for want of Vault.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;

use super::kube::{Kube, KubeError};
use super::plan::{self, Decision, Synced};
use super::{SyncArgs, SyncError};
use crate::audit::{Actor, AuditEvent, Auditor, EventKind, Outcome};
use crate::config::sync_file::{OnDelete, PublicKeysTarget, SecretTarget, SyncFile, Workload};
use crate::config::Config;
use crate::keys::publish::PublishedKeys;
use crate::keys::KeyCache;
use crate::telemetry::metrics;
use crate::vault::KvEntry;
use crate::vault::VaultClient;

/// Attempts at one target when the object changes between the read and the write.
const ATTEMPTS: usize = 3;

/// What happened to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    Updated,
    Unchanged,
    /// The KV path is gone and the object was deleted (`on_delete = "delete"`).
    Deleted,
    /// The KV path is gone and the object was left (`on_delete = "keep"`).
    Kept,
    /// The KV path is gone; the object exists but Aegis did not make it: left alone.
    NotOwned,
    /// The KV path is gone and so is the object.
    Absent,
    /// A dry run would have written (created, updated or deleted) it.
    WouldWrite,
    Failed,
}

/// One target's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub source: String,
    /// The KV version read (Secrets whose path exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_version: Option<u64>,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the object's data changed (what restarts its workloads).
    #[serde(skip)]
    changed: bool,
    #[serde(skip)]
    failure: Option<SyncError>,
    #[serde(skip)]
    restart: Vec<Workload>,
    /// The audit event's mount and key fields: the KV mount and path, or the Transit
    /// mount and key.
    #[serde(skip)]
    origin: (String, String),
}

/// One workload restart.
#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The targets whose change caused it (`secret/ns/name`).
    pub because: Vec<String>,
    pub restarted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    failure: Option<SyncError>,
}

/// A round's outcome: the `--json` output, stable for jobs.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    /// Set when the round stopped before writing anything (Vault unavailable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    pub dry_run: bool,
    pub targets: Vec<TargetReport>,
    pub restarts: Vec<RestartReport>,
    #[serde(skip)]
    abort: Option<SyncError>,
}

impl Report {
    /// The failure that decides the exit code: an abort, else the most severe failure.
    pub fn failure(&self) -> Option<SyncError> {
        if let Some(e) = &self.abort {
            return Some(e.clone());
        }
        let failures = self.targets.iter().filter_map(|t| t.failure.as_ref());
        let restarts = self.restarts.iter().filter_map(|r| r.failure.as_ref());
        // Severity: audit, unavailable, denied, conflict, data, other.
        let rank = |e: &SyncError| match e.exit_code() {
            74 => 0,
            69 => 1,
            77 => 2,
            75 => 3,
            65 => 4,
            _ => 5,
        };
        failures.chain(restarts).min_by_key(|e| rank(e)).cloned()
    }

    /// The human-readable lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(why) = &self.aborted {
            let _ = writeln!(out, "nothing written: {why}");
        }
        for t in &self.targets {
            let _ = writeln!(
                out,
                "{} {}/{}: {}",
                t.kind,
                t.namespace,
                t.name,
                t.describe(self.dry_run)
            );
        }
        for r in &self.restarts {
            let what = match (&r.error, self.dry_run) {
                (Some(e), _) => format!("restart failed: {e}"),
                (None, true) => "would restart".into(),
                (None, false) => "restarted".into(),
            };
            let _ = writeln!(
                out,
                "{} {}/{}: {what} ({} changed)",
                r.kind,
                r.namespace,
                r.name,
                r.because.join(", ")
            );
        }
        out
    }
}

impl TargetReport {
    fn new(
        kind: &'static str,
        namespace: &str,
        name: &str,
        origin: (&str, &str),
        restart: &[Workload],
    ) -> Self {
        let source = match kind {
            "secret" => format!("kv:{}/{}", origin.0, origin.1),
            _ => format!("transit:{}/{}", origin.0, origin.1),
        };
        TargetReport {
            origin: (origin.0.into(), origin.1.into()),
            kind,
            namespace: namespace.into(),
            name: name.into(),
            source,
            kv_version: None,
            action: Action::Failed,
            error: None,
            changed: false,
            failure: None,
            restart: restart.to_vec(),
        }
    }

    fn fail(&mut self, e: SyncError) {
        self.action = Action::Failed;
        self.error = Some(e.to_string());
        self.failure = Some(e);
    }

    fn target(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    fn describe(&self, dry_run: bool) -> String {
        let version = self
            .kv_version
            .map(|v| format!(" version {v}"))
            .unwrap_or_default();
        match self.action {
            Action::Created => format!("created from {}{version}", self.source),
            Action::Updated => format!("updated from {}{version}", self.source),
            Action::Unchanged => format!("unchanged ({}{version})", self.source),
            Action::Deleted => format!("deleted: {} is gone (on_delete = \"delete\")", self.source),
            Action::Kept => format!("kept: {} is gone (on_delete = \"keep\")", self.source),
            Action::NotOwned => format!(
                "left alone: {} is gone, but Aegis did not make this object",
                self.source
            ),
            Action::Absent => format!("absent, and {} is gone", self.source),
            Action::WouldWrite if dry_run => {
                format!("would be written from {}{version} (dry run)", self.source)
            }
            Action::WouldWrite => unreachable!("only dry runs decide without writing"),
            Action::Failed => format!(
                "failed: {}",
                self.error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
}

/// What a round reads from Vault for one Secret target.
enum Source {
    Present(KvEntry),
    Gone,
    Failed(SyncError),
}

/// What a round reads from Vault: every Secret's KV entry, every published key set.
struct Sources {
    secrets: Vec<Source>,
    keys: Vec<Result<PublishedKeys, SyncError>>,
}

/// Everything a round needs.
pub struct Context {
    vault: Arc<VaultClient>,
    kube: Kube,
    auditor: Auditor,
    actor: Actor,
    force: bool,
    dry_run: bool,
    flush_timeout: std::time::Duration,
    /// The keys of `[[public_keys]]` entries, read as the sidecar reads them (the same
    /// validity rule decides what is published).
    keys: KeyCache,
}

impl Context {
    /// Logs in to Vault (the loop keeps the token renewed), connects to Kubernetes,
    /// starts the audit trail.
    pub async fn connect(config: &Config, args: &SyncArgs) -> Result<Self, SyncError> {
        let auditor = super::start_auditor(config)?;
        let kubeconfig = args.kubeconfig.as_deref().or(config.kubeconfig.as_deref());
        let kube = Kube::connect(kubeconfig, args.context.as_deref()).await?;
        let vault = Arc::new(
            VaultClient::new(&config.vault)
                .map_err(|e| SyncError::Config(e.to_string().trim().to_string()))?,
        );
        vault.login().await?;
        if args.interval.is_some() {
            tokio::spawn(vault.clone().run_auth());
        }
        let actor = match vault.lookup_self().await {
            Ok(me) => Actor::token(&me.display_name, &me.entity_id, &me.accessor),
            Err(_) => Actor::caller("unknown"),
        };
        Ok(Context {
            kube,
            auditor,
            actor,
            force: args.force_conflicts,
            dry_run: args.dry_run,
            flush_timeout: config.audit.flush_timeout,
            keys: KeyCache::from_config(vault.clone(), config),
            vault,
        })
    }

    /// Serves `/metrics` on `AEGIS_METRICS_LISTEN`, if set (the `--interval` loop).
    pub async fn serve_metrics(&self, config: &Config) {
        let Some(addr) = config.telemetry.metrics_listen else {
            return;
        };
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async { crate::telemetry::render_metrics() }),
        );
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(async move { axum::serve(l, app).await });
            }
            Err(e) => tracing::error!(%addr, error = %e, "cannot serve metrics"),
        }
    }

    pub async fn flush_audit(&self) {
        let pending = self.auditor.flush(self.flush_timeout).await;
        if pending > 0 {
            eprintln!("aegis: {pending} audit event(s) not yet delivered to AEGIS_AUDIT_URL; they stay spooled and are sent by the next process using the spool");
        }
    }

    /// One round over every target of `file`.
    pub async fn round(&self, file: &SyncFile) -> Report {
        let mut report = Report {
            ok: false,
            aborted: None,
            dry_run: self.dry_run,
            targets: Vec::new(),
            restarts: Vec::new(),
            abort: None,
        };
        let sources = match self.read_sources(file).await {
            Ok(s) => s,
            Err(e) => {
                metrics::get().sync_error(e.stage());
                metrics::get().sync_round("aborted", std::time::SystemTime::now());
                report.aborted = Some(e.to_string());
                report.abort = Some(e);
                return report;
            }
        };
        for (t, source) in file.secrets.iter().zip(sources.secrets) {
            report.targets.push(self.secret(t, source).await);
        }
        for (t, keys) in file.public_keys.iter().zip(sources.keys) {
            report.targets.push(self.public_keys(t, keys).await);
        }
        report.restarts = self.restarts(&report.targets).await;
        let target_failures = report.targets.iter().filter_map(|t| t.failure.as_ref());
        let restart_failures = report.restarts.iter().filter_map(|r| r.failure.as_ref());
        for e in target_failures.chain(restart_failures) {
            metrics::get().sync_error(e.stage());
        }
        report.ok = report.failure().is_none();
        let outcome = if report.ok { "ok" } else { "failed" };
        metrics::get().sync_round(outcome, std::time::SystemTime::now());
        report
    }

    /// Reads every KV path and key first: a Vault that cannot answer stops the round here.
    async fn read_sources(&self, file: &SyncFile) -> Result<Sources, SyncError> {
        let mut secrets = Vec::with_capacity(file.secrets.len());
        for t in &file.secrets {
            secrets.push(match self.vault.kv2_get(&t.kv_mount, &t.path).await {
                Ok(Some(entry)) => Source::Present(entry),
                Ok(None) => Source::Gone,
                Err(e) => Source::Failed(unless_unavailable(e)?),
            });
        }
        let mut keys = Vec::with_capacity(file.public_keys.len());
        for t in &file.public_keys {
            // A fresh read every round (the `--interval` loop sees rotations and retirements).
            keys.push(
                match self.keys.refresh(&t.key, std::time::Instant::now()).await {
                    Ok(set) => Ok(PublishedKeys::from_keyset(
                        &t.key,
                        &set,
                        std::time::SystemTime::now(),
                    )),
                    Err(e) => Err(unless_unavailable(e)?),
                },
            );
        }
        Ok(Sources { secrets, keys })
    }

    /// A published-keys ConfigMap: the PEM bundle and the JWK Set of what verifies now.
    async fn public_keys(
        &self,
        t: &PublicKeysTarget,
        keys: Result<PublishedKeys, SyncError>,
    ) -> TargetReport {
        let mut r = TargetReport::new(
            "configmap",
            &t.namespace,
            &t.name,
            (self.keys.mount(), &t.key),
            &t.restart,
        );
        let outcome = match keys {
            Err(e) => Err(e),
            Ok(keys) => match keys.no_public_keys() {
                Some(why) => Err(plan::PlanError::NoPublicKeys(why).into()),
                None => {
                    let jwks = serde_json::to_string_pretty(&keys.jwks()).expect("JSON");
                    let want =
                        plan::desired_configmap(self.keys.mount(), t, keys.pem_bundle(), jwks);
                    self.converge(&want, &mut r).await
                }
            },
        };
        if let Err(e) = outcome {
            r.fail(e);
        }
        r
    }

    async fn secret(&self, t: &SecretTarget, source: Source) -> TargetReport {
        let mut r = TargetReport::new(
            "secret",
            &t.namespace,
            &t.name,
            (&t.kv_mount, &t.path),
            &t.restart,
        );
        let outcome = match source {
            Source::Failed(e) => Err(e),
            Source::Gone => self.gone(t, &mut r).await,
            Source::Present(entry) => {
                r.kv_version = Some(entry.version);
                match plan::desired_secret(t, &entry) {
                    Ok(want) => self.converge(&want, &mut r).await,
                    Err(e) => Err(e.into()),
                }
            }
        };
        if let Err(e) = outcome {
            r.fail(e);
        }
        r
    }

    /// Applies `want` unless the API server already has it; retried when the object
    /// changed between the read and the write (409 on its resourceVersion).
    async fn converge<K: Synced>(&self, want: &K, r: &mut TargetReport) -> Result<(), SyncError> {
        for _ in 0..ATTEMPTS {
            let have: Option<K> = self.kube.get(&r.namespace, &r.name).await?;
            let decision = K::decide(want, have.as_ref());
            if decision == Decision::Unchanged {
                r.action = Action::Unchanged;
                return Ok(());
            }
            // Someone else's object of that name is never merged into silently.
            let foreign = have
                .as_ref()
                .is_some_and(|h| !plan::owned_by_aegis(h.meta(), &r.source));
            if foreign && !self.force {
                return Err(SyncError::NotOwned(r.source.clone()));
            }
            if self.dry_run {
                r.action = Action::WouldWrite;
                r.changed = have.as_ref().is_some_and(|h| !K::same_data(h, want));
                return Ok(());
            }
            let mut object = want.clone();
            object.meta_mut().resource_version = have
                .as_ref()
                .and_then(|h| h.meta().resource_version.clone());
            let written = self
                .kube
                .apply(&r.namespace, &r.name, &object, self.force)
                .await;
            let action = if decision == Decision::Create {
                "create"
            } else {
                "update"
            };
            self.audit(r, action, written.as_ref().map(drop).map_err(Clone::clone))
                .await?;
            match written {
                Ok(after) => {
                    metrics::get().sync_write(r.kind, action);
                    r.action = if decision == Decision::Create {
                        Action::Created
                    } else {
                        Action::Updated
                    };
                    r.changed = have.is_some_and(|h| !K::same_data(&h, &after));
                    return Ok(());
                }
                Err(e) if e.code() == Some(409) && !e.is_field_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SyncError::Contended)
    }

    /// The KV path is gone: keep the Secret, or delete it if Aegis made it from that path.
    async fn gone(&self, t: &SecretTarget, r: &mut TargetReport) -> Result<(), SyncError> {
        let have: Option<Secret> = self.kube.get(&t.namespace, &t.name).await?;
        let Some(have) = have else {
            r.action = Action::Absent;
            return Ok(());
        };
        if t.on_delete == OnDelete::Keep {
            r.action = Action::Kept;
            return Ok(());
        }
        if !plan::owned_by_aegis(&have.metadata, &r.source) {
            r.action = Action::NotOwned;
            return Ok(());
        }
        if self.dry_run {
            r.action = Action::WouldWrite;
            return Ok(());
        }
        let (uid, version) = (
            have.metadata.uid.unwrap_or_default(),
            have.metadata.resource_version.unwrap_or_default(),
        );
        let deleted = self
            .kube
            .delete::<Secret>(&t.namespace, &t.name, &uid, &version)
            .await;
        self.audit(r, "delete", deleted.clone()).await?;
        deleted?;
        metrics::get().sync_write(r.kind, "delete");
        r.action = Action::Deleted;
        Ok(())
    }

    /// Restarts, once each, the workloads of the targets whose data changed.
    async fn restarts(&self, targets: &[TargetReport]) -> Vec<RestartReport> {
        let mut due: BTreeMap<&Workload, BTreeSet<String>> = BTreeMap::new();
        for t in targets.iter().filter(|t| t.changed) {
            for w in &t.restart {
                due.entry(w).or_default().insert(t.target());
            }
        }
        let at = super::now_rfc3339();
        let mut out = Vec::new();
        for (w, because) in due {
            let mut r = RestartReport {
                kind: w.kind.as_str(),
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                because: because.into_iter().collect(),
                restarted: false,
                error: None,
                failure: None,
            };
            if !self.dry_run {
                let outcome = self.restart(w, &at, &r.because).await;
                r.restarted = outcome.is_ok();
                if let Err(e) = outcome {
                    r.error = Some(e.to_string());
                    r.failure = Some(e);
                }
            }
            out.push(r);
        }
        out
    }

    async fn restart(&self, w: &Workload, at: &str, because: &[String]) -> Result<(), SyncError> {
        let done = self.kube.restart(w, at).await;
        let event = AuditEvent::new(
            EventKind::Sync,
            self.actor.clone(),
            "",
            "",
            Outcome::of(&done),
        )
        .target(format!("{}/{}/{}", w.kind.as_str(), w.namespace, w.name))
        .reason(format!("restart: {} changed", because.join(", ")));
        self.record(event).await?;
        done?;
        metrics::get().sync_write(w.kind.as_str(), "restart");
        Ok(())
    }

    /// One audit event for one write to `r`'s target (its outcome included).
    async fn audit(
        &self,
        r: &TargetReport,
        action: &str,
        outcome: Result<(), KubeError>,
    ) -> Result<(), SyncError> {
        let (mount, path) = &r.origin;
        let event = AuditEvent::new(
            EventKind::Sync,
            self.actor.clone(),
            mount,
            path,
            Outcome::of(&outcome),
        )
        .versions(r.kv_version)
        .target(r.target())
        .reason(action);
        self.record(event).await
    }

    async fn record(&self, event: AuditEvent) -> Result<(), SyncError> {
        self.auditor.record_durable(event).await.map_err(|e| {
            metrics::get().sync_error("audit");
            SyncError::Audit(e.to_string())
        })
    }
}

/// A Vault failure that stops the round (Vault could not answer), or the target's own.
fn unless_unavailable(e: crate::vault::VaultError) -> Result<SyncError, SyncError> {
    match SyncError::from(e) {
        e @ SyncError::VaultUnavailable(_) => Err(e),
        e => Ok(e),
    }
}
