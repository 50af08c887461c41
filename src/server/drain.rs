//! Graceful shutdown of `aegis serve`: what happens between SIGTERM (or SIGINT) and exit.
//!
//! 1. **Not ready.** `/readyz` answers 503 (`shutting down`) and gRPC health turns
//!    `NOT_SERVING` at once; the readiness latch keeps it so.
//! 2. **Delay** (`AEGIS_SHUTDOWN_DELAY`, default 0). Every listener still accepts and
//!    serves as usual, so callers routed here before Kubernetes removed the pod from a
//!    Service's endpoints are not refused. Callers on the pod's loopback or Unix socket
//!    need no delay, hence the default.
//! 3. **Drain** (`AEGIS_SHUTDOWN_GRACE`, default 25 s). Every listener (TCP, Unix socket,
//!    metrics) stops accepting: new connections are refused. Each open connection is
//!    closed after the request it is serving (HTTP/1.1 answers with `Connection: close`;
//!    HTTP/2 sends GOAWAY); idle keep-alive connections are closed at once. Requests in
//!    flight run to their end, including signs waiting in a coalescing lane and their
//!    Vault call. Long-lived gRPC streams (`WatchKeys`, health `Watch`) have no end of
//!    their own: they end now with `UNAVAILABLE`, and the client reconnects elsewhere.
//! 4. **Cut**, only if the grace runs out. Requests still running are answered at once,
//!    503 in Vault's error shape (gRPC `UNAVAILABLE`), their connections close, and their
//!    number is logged. A connection still open a second later (a client that does not
//!    read its answer) is left to end with the process.
//!
//! The caller ([`super::run`]) then flushes the audit trail and returns; `cli` exports the
//! last telemetry and exits 0 in both cases: the shutdown was asked for and done, and
//! Kubernetes reports a non-zero exit during termination as a container error.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::Router;
use http::{header, HeaderMap, HeaderValue};
use http_body::Frame;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::api::Readiness;
use crate::error::Error;

/// How long connections get to take their cut answer before the exit goes on without them.
const AFTER_CUT: Duration = Duration::from_secs(1);

const CUT_MESSAGE: &str =
    "aegis is shutting down and the request did not finish within the shutdown grace period (AEGIS_SHUTDOWN_GRACE)";

/// Where the shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    Draining,
    Cut,
}

#[derive(Debug, Default)]
struct Counts {
    in_flight: AtomicUsize,
    cut: AtomicUsize,
}

/// The request side: told the phase, counts the requests it tracks.
#[derive(Debug, Clone)]
pub(super) struct Drain {
    phase: watch::Receiver<Phase>,
    counts: Arc<Counts>,
}

/// The shutdown side: moves the phase on.
#[derive(Debug)]
pub(super) struct Control {
    phase: watch::Sender<Phase>,
    drain: Drain,
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    /// Requests answered with the cut (503 / `UNAVAILABLE`) because the grace ran out.
    pub cut: usize,
    /// Listeners whose connections were still not all closed a second after the cut;
    /// those connections end with the process.
    pub unfinished_listeners: usize,
}

impl Control {
    pub fn new() -> Self {
        let (phase, rx) = watch::channel(Phase::Serving);
        Control {
            phase,
            drain: Drain {
                phase: rx,
                counts: Arc::default(),
            },
        }
    }

    /// `router` with every request tracked: counted while in flight, answered with the
    /// cut when the grace runs out, gRPC streams ended when draining starts.
    pub fn track(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(
            self.drain.clone(),
            track,
        ))
    }

    /// Completes when the listeners are to stop accepting (for `with_graceful_shutdown`).
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        self.drain.clone().reached(Phase::Draining)
    }

    /// Runs steps 1 to 4 of the module docs; `servers` are the listeners' serve tasks,
    /// which end when their connections are closed.
    pub async fn run(
        &self,
        readiness: &Readiness,
        servers: &mut JoinSet<()>,
        delay: Duration,
        grace: Duration,
    ) -> Outcome {
        readiness.begin_shutdown();
        info!(
            delay_ms = delay.as_millis() as u64,
            grace_ms = grace.as_millis() as u64,
            in_flight = self.in_flight(),
            "shutting down: not ready; listeners stop accepting after the delay, then in-flight requests get the grace period"
        );
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.phase.send_replace(Phase::Draining);
        info!(
            in_flight = self.in_flight(),
            "draining: listeners closed, waiting for in-flight requests"
        );
        if join_all(servers, grace).await {
            return Outcome {
                cut: 0,
                unfinished_listeners: 0,
            };
        }
        warn!(
            in_flight = self.in_flight(),
            grace_ms = grace.as_millis() as u64,
            "shutdown grace period over: answering the requests still running with 503 (gRPC UNAVAILABLE)"
        );
        self.phase.send_replace(Phase::Cut);
        let unfinished_listeners = if join_all(servers, AFTER_CUT).await {
            0
        } else {
            servers.len()
        };
        servers.abort_all();
        Outcome {
            cut: self.drain.counts.cut.load(Ordering::Acquire),
            unfinished_listeners,
        }
    }

    fn in_flight(&self) -> usize {
        self.drain.counts.in_flight.load(Ordering::Acquire)
    }
}

/// Waits for every task of `servers`, at most `limit`; true if they all ended.
async fn join_all(servers: &mut JoinSet<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        while servers.join_next().await.is_some() {}
    })
    .await
    .is_ok()
}

impl Drain {
    /// Completes once the phase is `phase` or later; never if the controller is gone
    /// without getting there.
    async fn reached(mut self, phase: Phase) {
        if self.phase.wait_for(|p| *p >= phase).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One request in flight, counted until dropped.
struct InFlight(Arc<Counts>);

impl InFlight {
    fn enter(counts: &Arc<Counts>) -> Self {
        counts.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(counts.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The middleware of [`Control::track`].
async fn track(State(drain): State<Drain>, request: Request, next: Next) -> Response {
    let grpc = is_grpc(request.headers());
    let _in_flight = InFlight::enter(&drain.counts);
    // The request first: one answered at its first poll (a local verify) never registers
    // with the phase channel.
    tokio::select! {
        biased;
        response = next.run(request) => if grpc {
            response.map(|body| Body::new(EndOnDrain::new(body, drain.clone().reached(Phase::Draining))))
        } else {
            response
        },
        () = drain.clone().reached(Phase::Cut) => {
            drain.counts.cut.fetch_add(1, Ordering::AcqRel);
            let error = Error::Unavailable(CUT_MESSAGE.into());
            if grpc {
                tonic::Status::from(error).into_http()
            } else {
                error.into_response()
            }
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A gRPC response body that ends with `UNAVAILABLE` trailers when draining starts while
/// it waits for its next message (a stream); a body with frames ready is never cut short.
struct EndOnDrain {
    inner: Body,
    drained: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
}

impl EndOnDrain {
    fn new(inner: Body, drained: impl Future<Output = ()> + Send + 'static) -> Self {
        EndOnDrain {
            inner,
            drained: Box::pin(drained),
            ended: false,
        }
    }
}

impl HttpBody for EndOnDrain {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {}
            Poll::Ready(frame) => {
                if frame.is_none() {
                    this.ended = true;
                }
                return Poll::Ready(frame);
            }
        }
        if this.drained.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.ended = true;
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "grpc-status",
            HeaderValue::from(tonic::Code::Unavailable as i32),
        );
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("aegis is shutting down"),
        );
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}
