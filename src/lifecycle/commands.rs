//! The lifecycle commands as the CLI runs them: connect, act, audit, print, exit code.

use std::process::ExitCode;

use serde::Serialize;

use super::{
    endorse, key_status, retire, rotate, KeyRef, LifecycleError, Plan, RetireAt, RetireOptions,
    RotateOptions,
};
use crate::audit::{Actor, AuditEvent, Auditor, EventKind, Outcome};
use crate::config::Config;
use crate::keys::retention::parse_time;
use crate::vault::VaultClient;

/// What `aegis retire` was asked.
#[derive(Debug, Clone)]
pub struct RetireArgs {
    pub key: String,
    pub version: u32,
    /// RFC 3339 time, or `None` with `now`.
    pub at: Option<String>,
    pub now: bool,
    pub reason: String,
    /// With `now`: how long lower versions recorded by the revocation keep verifying.
    pub grace: std::time::Duration,
    pub dry_run: bool,
}

/// Logs in with the configured method (the job's own credential) and returns the client.
/// A job writes and reads back at once, so it talks to the active node, never a standby
/// whose reads may lag behind its own writes.
async fn connect(config: &Config) -> Result<VaultClient, LifecycleError> {
    let on_active = crate::config::VaultConfig {
        prefer_standby: false,
        ..config.vault.clone()
    };
    let vault = VaultClient::new(&on_active)
        .map_err(|e| LifecycleError::Config(e.to_string().trim().to_string()))?;
    vault.login().await?;
    Ok(vault)
}

fn key_ref<'a>(config: &'a Config, vault: &'a VaultClient, key: &'a str) -> KeyRef<'a> {
    KeyRef {
        vault,
        mount: &config.transit_mount,
        key,
        retention: &config.retention,
    }
}

/// Prints `value` as JSON or through `text`, and turns the outcome into an exit code.
fn finish<T: Serialize>(
    result: Result<T, LifecycleError>,
    json: bool,
    text: impl FnOnce(&T) -> String,
) -> ExitCode {
    match result {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string(&v).expect("serializable"));
            } else {
                print!("{}", text(&v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aegis: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Exit code when the audit event could not be made durable (EX_IOERR).
const EXIT_AUDIT: u8 = 74;

/// Runs a changing command: connects, acts, writes its audit event durably (also for a
/// failure), flushes the HTTP sink, prints. A dry run is not audited: it changes nothing.
async fn audited<F, Fut>(
    config: &Config,
    kind: EventKind,
    key: &str,
    reason: &str,
    dry_run: bool,
    json: bool,
    act: F,
) -> ExitCode
where
    F: FnOnce(VaultClient) -> Fut,
    Fut: std::future::Future<Output = Result<Plan, LifecycleError>>,
{
    let auditor = match Auditor::start(&config.audit) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("aegis: cannot start the audit trail: {e}");
            return ExitCode::from(EXIT_AUDIT);
        }
    };
    let mut actor = Actor::caller("unauthenticated");
    let result = async {
        let vault = connect(config).await?;
        if let Ok(me) = vault.lookup_self().await {
            actor = Actor::token(&me.display_name, &me.entity_id, &me.accessor);
        }
        act(vault).await
    }
    .await;
    if !dry_run {
        let mut event = AuditEvent::new(
            kind,
            actor,
            &config.transit_mount,
            key,
            Outcome::of(&result),
        )
        .reason(reason);
        if let Ok(plan) = &result {
            let versions = plan
                .recorded
                .iter()
                .chain(&plan.rotated_to)
                .chain(&plan.endorsed)
                .map(|v| u64::from(*v));
            event = event.versions(versions);
            if let Some(t) = plan.retire_after.as_deref().and_then(parse_time) {
                event = event.retire_after(t);
            }
        }
        if let Err(e) = auditor.record_durable(event).await {
            eprintln!("aegis: the audit event could not be written: {e}");
            return ExitCode::from(EXIT_AUDIT);
        }
        let pending = auditor.flush(config.audit.flush_timeout).await;
        if pending > 0 {
            eprintln!("aegis: {pending} audit event(s) not yet delivered to AEGIS_AUDIT_URL; they stay spooled and are sent by the next process using the spool");
        }
    }
    finish(result, json, Plan::render)
}

/// `aegis rotate`.
pub async fn run_rotate(config: &Config, key: &str, opts: RotateOptions, json: bool) -> ExitCode {
    let (reason, dry_run) = (opts.reason.clone(), opts.dry_run);
    audited(
        config,
        EventKind::Rotate,
        key,
        &reason,
        dry_run,
        json,
        |vault| async move { rotate(&key_ref(config, &vault, key), &opts).await },
    )
    .await
}

/// `aegis retire`.
pub async fn run_retire(config: &Config, args: RetireArgs, json: bool) -> ExitCode {
    let at = match (&args.at, args.now) {
        (_, true) => RetireAt::Now,
        (Some(t), false) => match parse_time(t) {
            Some(t) => RetireAt::At(t),
            None => {
                return finish::<Plan>(
                    Err(LifecycleError::Refused(format!(
                        "--at {t:?}: expected an RFC 3339 time such as 2026-12-31T00:00:00Z"
                    ))),
                    json,
                    Plan::render,
                )
            }
        },
        (None, false) => {
            return finish::<Plan>(
                Err(LifecycleError::Refused("give --at TIME or --now".into())),
                json,
                Plan::render,
            )
        }
    };
    let opts = RetireOptions {
        at,
        reason: args.reason.clone(),
        grace: args.grace,
        dry_run: args.dry_run,
    };
    let (key, version) = (args.key.as_str(), args.version);
    audited(
        config,
        EventKind::Retire,
        key,
        &args.reason,
        args.dry_run,
        json,
        |vault| async move { retire(&key_ref(config, &vault, key), version, &opts).await },
    )
    .await
}

/// `aegis retention endorse` (the one-time migration of a record written before
/// endorsements; `mount` overrides `AEGIS_TRANSIT_MOUNT`).
pub async fn run_endorse(
    config: &Config,
    key: &str,
    mount: Option<&str>,
    dry_run: bool,
    json: bool,
) -> ExitCode {
    let reason = "retention record endorsed";
    audited(
        config,
        EventKind::Endorse,
        key,
        reason,
        dry_run,
        json,
        |vault| async move {
            let mut k = key_ref(config, &vault, key);
            if let Some(m) = mount {
                k.mount = m;
            }
            endorse(&k, dry_run).await
        },
    )
    .await
}

/// `aegis keys status`.
pub async fn run_status(config: &Config, key: Option<&str>, json: bool) -> ExitCode {
    let result = async {
        let vault = connect(config).await?;
        let names = match key {
            Some(k) => vec![k.to_string()],
            // Endorsement keys sign retention records, not artifacts: not inventoried.
            None => vault
                .transit_list_keys(&config.transit_mount)
                .await?
                .into_iter()
                .filter(|n| !n.starts_with(&config.retention.endorsement_prefix))
                .collect(),
        };
        let mut out = Vec::new();
        for name in &names {
            match key_status(&key_ref(config, &vault, name), config.rotation_period).await {
                Ok(s) => out.push(s),
                // Keys that do not sign (encryption keys) are not in the signing inventory.
                Err(LifecycleError::Refused(_)) if key.is_none() => {}
                // A least-privilege job may read only its own keys: skip, say so.
                Err(LifecycleError::Denied(e)) if key.is_none() => {
                    eprintln!("aegis: skipping key {name:?}: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
    .await;
    finish(result, json, |all| {
        all.iter()
            .map(|s| s.render())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

impl Plan {
    /// The terminal rendering of what was (or would be) done.
    pub fn render(&self) -> String {
        let mut lines = Vec::new();
        let would = if self.dry_run { "would " } else { "" };
        match (self.rotated_to, &self.rotation_skipped) {
            (Some(v), _) => lines.push(format!("{}: {would}rotate to version {v}", self.key)),
            (None, Some(why)) => lines.push(format!("{}: {why}", self.key)),
            (None, None) => {}
        }
        if !self.recorded.is_empty() {
            lines.push(format!(
                "{}: {would}record versions {:?} with retire_after {}",
                self.key,
                self.recorded,
                self.retire_after.as_deref().unwrap_or("-")
            ));
        }
        if !self.dropped.is_empty() {
            lines.push(format!(
                "{}: {would}drop expired versions {:?} from the retention record",
                self.key, self.dropped
            ));
        }
        if let Some(before) = &self.previously {
            lines.push(format!(
                "{}: the retention record was {before}; {would}endorse versions {:?}",
                self.key, self.endorsed
            ));
            if !self.unchecked.is_empty() {
                lines.push(format!(
                    "{}: versions {:?} are no longer served by Vault: their public keys are taken as the record holds them",
                    self.key, self.unchecked
                ));
            }
        }
        if let Some(g) = self.endorsed_generation {
            lines.push(format!("{}: endorsed as generation {g}", self.key));
        }
        if let Some(v) = self.revoked {
            lines.push(format!("{}: {would}revoke version {v}", self.key));
        }
        if !self.kept_valid.is_empty() {
            lines.push(format!(
                "{}: {would}keep versions {:?} valid through the record until {}",
                self.key,
                self.kept_valid,
                self.kept_valid_until.as_deref().unwrap_or("-")
            ));
        }
        for (name, (before, after)) in [
            ("min_encryption_version", self.min_encryption_version),
            ("min_decryption_version", self.min_decryption_version),
        ] {
            if after != before {
                lines.push(format!(
                    "{}: {would}raise {name} {before} -> {after}",
                    self.key
                ));
            }
        }
        if lines.is_empty() {
            lines.push(format!("{}: nothing to do", self.key));
        } else if self.dry_run {
            lines.push(format!(
                "{}: dry run, nothing changed: run the same command without --dry-run to apply it",
                self.key
            ));
        }
        lines.join("\n") + "\n"
    }
}
