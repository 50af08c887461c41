//! Wiring and serving: builds the shared state, starts background tasks, serves HTTP.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests bind
//! 127.0.0.1:0 and stop the server when they like (mini-redis style). HTTP/1.1 and h2c
//! (HTTP/2 with prior knowledge), and gRPC (by its paths), are served on the same port, and on the Unix socket of
//! `AEGIS_LISTEN_UNIX` (mode 0660 from the moment it is reachable; removed at exit only
//! if the path still names it) when set, where callers are known by their peer
//! credentials. Accepted TCP connections have `TCP_NODELAY` set: an answer is written once
//! and leaves at once, never held back by Nagle's algorithm.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tracing::{error, info, warn};

use crate::api::budget::BodyBudget;
use crate::api::{grpc, http, AppState, Readiness};
use crate::audit::Auditor;
use crate::backoff::Backoff;
use crate::config::{Config, ConfigErrors};
use crate::keys::{snapshot, KeyCache};
use crate::policy::{Peer, Policy};
use crate::sign::Signer;
use crate::telemetry::metrics::{self, GaugeSources, KeyLabels};
use crate::vault::VaultClient;
use crate::verify::Verifier;

mod drain;

/// Builds the state shared by all requests. Fails on configuration that can only be
/// checked by reading files (TLS material): the caller exits with the config exit code.
pub fn build_state(config: Config) -> Result<Arc<AppState>, ConfigErrors> {
    let vault = match (config.keys.require_set(), VaultClient::new(&config.vault)) {
        (Ok(()), Ok(vault)) => Arc::new(vault),
        (keys, vault) => {
            let errors = [keys.err(), vault.err()].into_iter().flatten();
            return Err(ConfigErrors(errors.flat_map(|e| e.0).collect()));
        }
    };
    let config = Arc::new(config);
    let keys = Arc::new(KeyCache::from_config(vault.clone(), &config));
    let readiness = Arc::new(Readiness::default());
    readiness.set_not_ready("starting: the allowlisted keys are not loaded yet");
    let auditor = Auditor::start(&config.audit)
        .map_err(|e| ConfigErrors(vec![format!("cannot start the audit trail: {e}")]))?;
    let key_labels = Arc::new(KeyLabels::new(config.keys.names().cloned()));
    let policy = Policy::new(config.require_request_header, config.policy.as_ref());
    Ok(Arc::new(AppState {
        policy,
        auditor,
        signer: Signer::new(keys.clone(), vault.clone(), config.sign_limits()),
        body_budget: BodyBudget::new(config.max_body_bytes_in_flight),
        verifier: Verifier::new(keys.clone(), vault, key_labels.clone()),
        key_labels,
        keys,
        readiness,
        config,
    }))
}

/// Serves until `shutdown` completes, then shuts down gracefully (see `drain`): not
/// ready, listeners closed, in-flight requests finished within `AEGIS_SHUTDOWN_GRACE`,
/// audit flushed. Background tasks stop with it.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let metrics_listener = match state.config.telemetry.metrics_listen {
        Some(at) => Some(TcpListener::bind(at).await.inspect_err(
            |e| error!(addr = %at, error = %e, "cannot listen for metrics (AEGIS_METRICS_LISTEN)"),
        )?),
        None => None,
    };
    let (unix_listener, unix_socket) = match &state.config.listen_unix {
        Some(path) => {
            let (listener, socket) = bind_unix(path).inspect_err(
                |e| error!(path = %path.display(), error = %e, "cannot listen on the Unix socket (AEGIS_LISTEN_UNIX)"),
            )?;
            (Some(listener), Some(socket))
        }
        None => (None, None),
    };
    register_gauges(&state);
    restore_snapshot(&state).await;
    let vault = state.keys.vault_arc();
    let mut tasks = vec![
        tokio::spawn(vault.run_auth()),
        tokio::spawn(become_ready(state.clone())),
        tokio::spawn(
            state
                .keys
                .clone()
                .run_refresher(state.config.refresh_interval),
        ),
    ];
    if let Some(every) = state.config.keyset.watch_interval {
        let keys = state.keys.clone();
        tasks.push(tokio::spawn(
            keys.run_watcher(every, state.config.refresh_interval),
        ));
    }
    if let Some(dir) = &state.config.cache_dir {
        tasks.push(tokio::spawn(
            state
                .keys
                .clone()
                .run_snapshotter(dir.clone(), state.config.vault.addrs.clone()),
        ));
    }
    let auditor = state.auditor.clone();
    let state_flush = state.config.audit.flush_timeout;
    info!(%addr, unix = ?state.config.listen_unix, vault = ?state.config.vault.addrs, auth = state.config.vault.auth.method(), mount = %state.config.transit_mount, "aegis listening");
    if state.config.policy.is_none() && !addr.ip().is_loopback() {
        warn!(%addr, "listening beyond loopback without a caller policy (AEGIS_POLICY_FILE): anyone who reaches this address may sign with the allowlisted keys");
    }
    // One shutdown sequence for every listener (see `drain`).
    let control = drain::Control::new();
    let mut servers = tokio::task::JoinSet::new();
    // The HTTP API and the gRPC services on one router, served on every listener.
    let (grpc_routes, health) = grpc::routes(state.clone());
    tasks.push(tokio::spawn(grpc::report_health(state.clone(), health)));
    let app = control.track(http::router(state.clone()).merge(grpc_routes));
    servers.spawn(serve(
        axum::serve(
            no_delay(listener),
            app.clone().into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(control.draining()),
    ));
    if let Some(unix) = unix_listener {
        servers.spawn(serve(
            axum::serve(unix, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(control.draining()),
        ));
    }
    if let Some(listener) = metrics_listener {
        let at = listener.local_addr()?;
        info!(addr = %at, "serving /metrics, /healthz and /readyz");
        let router = control.track(http::admin_router(state.clone()));
        servers.spawn(serve(
            axum::serve(listener, router).with_graceful_shutdown(control.draining()),
        ));
    }
    shutdown.await;
    let outcome = control
        .run(
            &state.readiness,
            &mut servers,
            state.config.shutdown_delay,
            state.config.shutdown_grace,
        )
        .await;
    if let Some(socket) = &unix_socket {
        socket.remove_if_ours();
    }
    for t in tasks {
        t.abort();
    }
    let pending = auditor.flush(state_flush).await;
    if pending > 0 {
        warn!(
            pending,
            "audit events not yet delivered; they stay spooled for the next start"
        );
    }
    if outcome.cut > 0 || outcome.unfinished_listeners > 0 {
        warn!(
            cut_requests = outcome.cut,
            unfinished_listeners = outcome.unfinished_listeners,
            audit_pending = pending,
            "stopped; requests were cut by the end of the shutdown grace period"
        );
    } else {
        info!(
            audit_pending = pending,
            "stopped; every in-flight request finished"
        );
    }
    Ok(())
}

/// The TCP listener with `TCP_NODELAY` set on each accepted connection (axum's `serve`
/// leaves Nagle's algorithm on).
struct NoDelay(TcpListener);

fn no_delay(listener: TcpListener) -> NoDelay {
    NoDelay(listener)
}

impl Listener for NoDelay {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
        (stream, addr)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Listener::local_addr(&self.0)
    }
}

impl Connected<IncomingStream<'_, NoDelay>> for Peer {
    fn connect_info(stream: IncomingStream<'_, NoDelay>) -> Self {
        Peer::Tcp(*stream.remote_addr())
    }
}

/// Serves one listener until its graceful shutdown completes (axum's serve only ends
/// that way: accept errors are retried).
async fn serve<F>(server: F)
where
    F: std::future::IntoFuture<Output = std::io::Result<()>>,
{
    if let Err(e) = server.await {
        error!(error = %e, "listener failed");
    }
}

/// The Unix socket this process bound: its path, and the identity (device, inode) that
/// tells it apart from whatever another process may put at the path later.
struct BoundSocket {
    path: PathBuf,
    id: (u64, u64),
}

impl BoundSocket {
    /// Removes the socket at exit, only if the path still names the socket bound here: a
    /// newer sidecar's socket (or any other file) that replaced it is left alone.
    fn remove_if_ours(&self) {
        use std::os::unix::fs::MetadataExt as _;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), error = %e, "cannot remove the Unix socket");
                }
            }
            Ok(_) => {
                info!(path = %self.path.display(), "the Unix socket path was replaced by another process; left in place")
            }
            Err(_) => {}
        }
    }
}

/// Binds the Unix socket with mode 0660 (owner and group may connect), and no moment when
/// it is reachable with another mode: it is bound inside a new private directory (mode
/// 0700) next to `path`, given its mode there, then renamed into place (atomic) and the
/// directory removed. A socket left by an earlier process is replaced; any other file at
/// the path is an error. The staging path is `<dir of path>/.aegis-XXXXXXXX/s`: its
/// directory's length plus 18 bytes must fit a socket path's 107.
fn bind_unix(path: &Path) -> std::io::Result<(UnixListener, BoundSocket)> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut name = crate::ids::uuid_v4().simple().to_string();
    name.truncate(8);
    let private = parent.join(format!(".aegis-{name}"));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let bound = stage_socket(&staged).and_then(|listener| {
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    let listener = bound?;
    let m = std::fs::symlink_metadata(path)?;
    let socket = BoundSocket {
        path: path.to_owned(),
        id: (m.dev(), m.ino()),
    };
    Ok((listener, socket))
}

/// Binds at `staged` (in the private directory) and sets the final mode.
fn stage_socket(staged: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let listener = UnixListener::bind(staged)?;
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Starts the alerting series at 0, and lets the state gauges (readiness, credential,
/// keys) read the running sidecar. They hold only a weak reference: a stopped server reads as not ready, with no keys.
fn register_gauges(state: &Arc<AppState>) {
    metrics::get().start_series(
        state.config.vault.auth.method(),
        state
            .config
            .keys
            .names()
            .into_iter()
            .flatten()
            .map(String::as_str),
    );
    let weak = Arc::downgrade(state);
    let (w1, w2, w3) = (weak.clone(), weak.clone(), weak.clone());
    metrics::register_gauges(GaugeSources {
        ready: Box::new(move || w1.upgrade().is_some_and(|s| s.ready().is_ok())),
        auth: Box::new(move || match w2.upgrade() {
            Some(s) => {
                let a = s.keys.vault().auth_status();
                (a.authenticated, a.expires_in)
            }
            None => (false, None),
        }),
        keys: Box::new(move || weak.upgrade().map(|s| s.keys.gauges()).unwrap_or_default()),
        rotation_period: state.config.rotation_period,
        max_keyset_age: state.config.keyset.max_age,
        refresh_interval: state.config.refresh_interval,
        watch: Box::new(move || w3.upgrade().and_then(|s| s.keys.watch_status())),
    });
}

/// Loads the keyset snapshot of `AEGIS_CACHE_DIR`, if any, so verification works before
/// Vault answers. A snapshot of another mount is ignored; a damaged one is refused whole.
async fn restore_snapshot(state: &AppState) {
    let Some(dir) = &state.config.cache_dir else {
        return;
    };
    match snapshot::read(dir) {
        Ok(None) => info!(dir = %dir.display(), "no keyset snapshot yet"),
        Ok(Some(p)) if p.mount != state.config.transit_mount => warn!(
            snapshot_mount = %p.mount,
            mount = %state.config.transit_mount,
            "keyset snapshot is for another Transit mount; ignored"
        ),
        Ok(Some(p)) => {
            let written_at = p.written_at.clone();
            let n = state.keys.restore_aged(p).await;
            info!(keys = n, %written_at, "keysets restored from the snapshot; verifying from them until Vault answers");
        }
        Err(e) => error!(error = %e, "keyset snapshot refused; starting without it"),
    }
}

/// Waits for Vault to accept the credential, loads every allowlisted key (and refreshes
/// keys restored from a snapshot), then marks the sidecar ready. Loading retries quickly
/// at first so readiness follows Vault closely.
async fn become_ready(state: Arc<AppState>) {
    let vault = state.keys.vault();
    vault.wait_authenticated().await;
    state.keys.refresh_all().await;
    // Quick at first (Vault is usually just starting too), at most 5 s apart.
    let mut pauses = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        let delay = pauses.next_pause();
        match load_allowlisted(&state).await {
            Ok(()) => {
                state.readiness.set_ready();
                info!("ready: Vault accepted the credential and the allowlisted keys are loaded");
                return;
            }
            Err(reason) => {
                warn!(%reason, retry_in_ms = delay.as_millis() as u64, "not ready");
                state.readiness.set_not_ready(reason);
            }
        }
        tokio::time::sleep(delay).await;
    }
}

async fn load_allowlisted(state: &AppState) -> Result<(), String> {
    if let Some(keys) = state.config.keys.names() {
        for key in keys {
            state
                .keys
                .preload(key)
                .await
                .map_err(|e| format!("cannot load allowlisted key {key:?}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[tokio::test]
    async fn the_socket_appears_with_its_final_mode_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aegis.sock");
        // Watch the path while it is bound: it must never be seen with another mode.
        let done = Arc::new(AtomicBool::new(false));
        let watcher = std::thread::spawn({
            let (path, done) = (path.clone(), done.clone());
            move || {
                let mut seen = std::collections::BTreeSet::new();
                while !done.load(Ordering::Relaxed) {
                    if let Ok(m) = std::fs::symlink_metadata(&path) {
                        seen.insert(m.permissions().mode() & 0o777);
                    }
                }
                seen
            }
        });
        for _ in 0..50 {
            let (listener, socket) = bind_unix(&path).unwrap();
            assert_eq!(mode(&path), 0o660);
            tokio::net::UnixStream::connect(&path).await.unwrap();
            drop(listener);
            socket.remove_if_ours();
            assert!(!path.exists());
        }
        done.store(true, Ordering::Relaxed);
        let seen = watcher.join().unwrap();
        assert!(seen.iter().all(|m| *m == 0o660), "modes seen: {seen:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn a_socket_replaced_by_another_process_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aegis.sock");
        let (_listener, ours) = bind_unix(&path).unwrap();
        // Another process takes the path over (as a newer sidecar would).
        std::fs::remove_file(&path).unwrap();
        let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let their_inode = std::fs::symlink_metadata(&path).unwrap().ino();
        ours.remove_if_ours();
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), their_inode);
        drop(theirs);
        // A stale socket is replaced at the next start; a regular file is refused.
        let (_again, again) = bind_unix(&path).unwrap();
        assert_ne!(std::fs::symlink_metadata(&path).unwrap().ino(), their_inode);
        again.remove_if_ours();
        std::fs::write(&path, b"not a socket").unwrap();
        let err = bind_unix(&path).err().unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }
}
