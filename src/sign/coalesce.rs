//! Sign coalescing: concurrent single sign requests for the same key and options become
//! one Transit batch call.
//!
//! Each (key, hash in the path, options) has a lane. A request whose lane has fewer than
//! `max_in_flight` calls to Vault in flight is sent at once, alone, in Vault's single mode,
//! on the caller's own task: a lone request never waits, not even for a task hop.
//! Otherwise it queues; when a call of its lane returns, what queued meanwhile goes in the
//! lane's next call, up to `max_batch` items and `max_batch_bytes` of body (a request
//! larger than that goes alone), so a batch never exceeds what Vault takes in one request.
//! Under load the batches grow by themselves to the number of waiting callers; idle,
//! nothing changes. There is no timer.
//!
//! Batches are driven by a task of their own, so a caller that goes away never cancels
//! the others' answers. A lone call driven on its caller's task carries that caller only;
//! when it ends (answered, or its caller gone) the lane's queue, if any, is handed to a new
//! driver task (the `Turn` guard does this in both cases).
//!
//! What goes to Vault is the callers' own JSON text: a lone request's body as received;
//! a batch made of the lane's options and each caller's `input`/`context` texts, never
//! re-encoded. Answers go back to each caller in its own single-mode shape. A per-item
//! error goes to its own caller only; a batch Vault refuses as a whole (400) is resent
//! item by item, so that each caller gets Vault's own single-mode answer. A failure of the
//! call itself (Vault unreachable, sealed) reaches every caller of that call.
//!
//! Callers' own batches are not coalesced: they pass through as received, or, when over
//! `max_batch` items or `max_batch_bytes`, split into calls within both bounds (Vault
//! refuses requests of more than about 1 000 JSON strings, and bodies over its
//! `max_request_size`), sent concurrently and stitched back in order.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::telemetry::metrics;
use crate::transit::{TransitRequest, SIGN_ITEM_FIELDS};
use crate::vault::{VaultClient, VaultError};

/// Requests that may share one Transit call.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Lane {
    key: String,
    hash: Option<String>,
    /// The body's option members as sent ([`TransitRequest::option_members`]): equal
    /// options, equal text. Also the start of the lane's batch bodies.
    options: String,
}

impl Lane {
    fn of(key: &str, hash: Option<&str>, req: &TransitRequest) -> Lane {
        Lane {
            key: key.to_string(),
            hash: hash.map(str::to_string),
            options: req.option_members(),
        }
    }
}

/// The limits of one Transit sign call made by the coalescer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Items per call (`AEGIS_SIGN_MAX_BATCH`).
    pub max_batch: usize,
    /// Body bytes per call (`AEGIS_SIGN_MAX_BATCH_BYTES`); a request over it goes alone.
    pub max_batch_bytes: usize,
    /// Calls in flight per lane (`AEGIS_SIGN_MAX_IN_FLIGHT`).
    pub max_in_flight: usize,
}

/// One caller waiting for its signature.
struct Waiter {
    /// The caller's single-mode body, sent as is when it goes alone.
    raw: Bytes,
    /// Where its `input` and `context` values are in `raw`.
    fields: [Option<Range<usize>>; 2],
    reply: oneshot::Sender<Result<Value, VaultError>>,
}

impl Waiter {
    fn new(req: &TransitRequest, reply: oneshot::Sender<Result<Value, VaultError>>) -> Self {
        Waiter {
            raw: req.raw().clone(),
            fields: SIGN_ITEM_FIELDS.map(|f| req.field_range(f)),
            reply,
        }
    }

    /// Appends this caller's `batch_input` entry, `{"input":...,"context":...}`, to `out`.
    fn push_item(&self, out: &mut String) {
        out.push('{');
        let mut any = false;
        for (name, range) in SIGN_ITEM_FIELDS.iter().zip(&self.fields) {
            if let Some(r) = range {
                let value = std::str::from_utf8(&self.raw[r.clone()]).unwrap_or("null");
                crate::transit::push_member(out, name, value);
                any = true;
            }
        }
        if any {
            out.pop();
        }
        out.push('}');
    }

    /// Bytes this caller adds to a batch body (about its whole body).
    fn size(&self) -> usize {
        self.raw.len()
    }
}

#[derive(Default)]
struct LaneState {
    in_flight: usize,
    queue: VecDeque<Waiter>,
}

impl LaneState {
    /// The next call's waiters: in order, at most `limits.max_batch` of them and
    /// `limits.max_batch_bytes` of body, at least one.
    fn take(&mut self, limits: &Limits) -> Vec<Waiter> {
        let mut bytes = 0usize;
        let mut n = 0usize;
        for w in &self.queue {
            if n == limits.max_batch || (n > 0 && bytes + w.size() > limits.max_batch_bytes) {
                break;
            }
            bytes += w.size();
            n += 1;
        }
        metrics::get().sign_queued(-i64::try_from(n).unwrap_or(i64::MAX));
        self.queue.drain(..n).collect()
    }
}

/// Joins concurrent sign requests into Transit batch calls (see the module docs).
pub struct Coalescer {
    vault: Arc<VaultClient>,
    mount: String,
    limits: Limits,
    lanes: Mutex<HashMap<Lane, LaneState>>,
}

/// A lane's call in flight on its caller's task. When it ends, however it ends, the
/// lane's queue is handed to a driver task or, when empty, the call is no longer counted.
struct Turn<'a> {
    coalescer: &'a Arc<Coalescer>,
    lane: &'a Lane,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.coalescer.next_or_done(self.lane) {
            tokio::spawn(
                self.coalescer
                    .clone()
                    .drive(self.lane.clone(), batch)
                    .in_current_span(),
            );
        }
    }
}

impl Coalescer {
    pub fn new(vault: Arc<VaultClient>, mount: String, limits: Limits) -> Arc<Self> {
        Arc::new(Coalescer {
            vault,
            mount,
            limits: Limits {
                max_batch: limits.max_batch.max(1),
                max_batch_bytes: limits.max_batch_bytes.max(1),
                max_in_flight: limits.max_in_flight.max(1),
            },
            lanes: Mutex::new(HashMap::new()),
        })
    }

    /// Signs one single-mode request; returns Transit's `data` for it.
    pub async fn sign_one(
        self: &Arc<Self>,
        key: &str,
        hash: Option<&str>,
        req: &TransitRequest,
    ) -> Result<Value, VaultError> {
        let lane = Lane::of(key, hash, req);
        let queued = {
            let mut lanes = self.lanes.lock().expect("coalescer lock");
            match lanes.get_mut(&lane) {
                Some(state) if state.in_flight >= self.limits.max_in_flight => {
                    let (reply, answer) = oneshot::channel();
                    state.queue.push_back(Waiter::new(req, reply));
                    metrics::get().sign_queued(1);
                    Some(answer)
                }
                Some(state) => {
                    state.in_flight += 1;
                    None
                }
                None => {
                    let state = LaneState {
                        in_flight: 1,
                        queue: VecDeque::new(),
                    };
                    lanes.insert(lane.clone(), state);
                    None
                }
            }
        };
        let Some(answer) = queued else {
            // Alone, on this task: the call carries this caller only.
            let _turn = Turn {
                coalescer: self,
                lane: &lane,
            };
            metrics::get().sign_batch(1);
            return self.call(&lane, req.raw()).await;
        };
        answer
            .instrument(tracing::info_span!("sign.coalesce", key))
            .await
            .unwrap_or_else(|_| {
                Err(VaultError::Unreachable {
                    message: "the sign call was abandoned".into(),
                    sent: true,
                })
            })
    }

    /// After a call of `lane`: the next batch from its queue (the call stays counted), or
    /// `None` when nothing waits (the call is no longer counted; an idle lane is removed).
    fn next_or_done(&self, lane: &Lane) -> Option<Vec<Waiter>> {
        let mut lanes = self.lanes.lock().expect("coalescer lock");
        let state = lanes.get_mut(lane).expect("a lane with a call in flight");
        if state.queue.is_empty() {
            state.in_flight -= 1;
            if state.in_flight == 0 {
                lanes.remove(lane);
            }
            return None;
        }
        Some(state.take(&self.limits))
    }

    /// Sends `batch`, then whatever queued meanwhile, until the lane's queue is empty.
    async fn drive(self: Arc<Self>, lane: Lane, mut batch: Vec<Waiter>) {
        loop {
            self.send(&lane, batch).await;
            match self.next_or_done(&lane) {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    /// One Transit call for `batch` (single mode for one waiter), answers to each waiter.
    async fn send(&self, lane: &Lane, mut batch: Vec<Waiter>) {
        metrics::get().sign_batch(batch.len());
        if batch.len() == 1 {
            let waiter = batch.pop().expect("one waiter");
            let answer = self.call(lane, &waiter.raw).await;
            let _ = waiter.reply.send(answer);
            return;
        }
        let body = batch_body(lane, &batch);
        match self.call(lane, &body).await {
            Ok(mut data) => {
                let results = match data.get_mut("batch_results").map(Value::take) {
                    Some(Value::Array(results)) if results.len() == batch.len() => results,
                    _ => {
                        let e = VaultError::Decode(format!(
                            "Vault answered a batch of {} with something else",
                            batch.len()
                        ));
                        for w in batch {
                            let _ = w.reply.send(Err(e.clone()));
                        }
                        return;
                    }
                };
                for (waiter, result) in batch.into_iter().zip(results) {
                    let _ = waiter.reply.send(single_answer(result));
                }
            }
            // Refused as a whole: each caller gets Vault's answer to its own request.
            Err(VaultError::Status { status: 400, .. }) => {
                futures_util::future::join_all(batch.into_iter().map(|w| async move {
                    let answer = self.call(lane, &w.raw).await;
                    let _ = w.reply.send(answer);
                }))
                .await;
            }
            Err(e) => {
                for w in batch {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn call(&self, lane: &Lane, body: &Bytes) -> Result<Value, VaultError> {
        self.vault
            .transit_write_raw("sign", &self.mount, &lane.key, lane.hash.as_deref(), body)
            .await
    }

    /// A caller's own batch: as received when within both bounds, else split into calls
    /// within them, sent concurrently, answered as one `batch_results` in order.
    pub async fn sign_batch(
        &self,
        key: &str,
        hash: Option<&str>,
        req: &TransitRequest,
    ) -> Result<Value, VaultError> {
        let lane = Lane {
            key: key.to_string(),
            hash: hash.map(str::to_string),
            options: String::new(),
        };
        let n = req.items.len();
        if n <= self.limits.max_batch && req.len() <= self.limits.max_batch_bytes {
            metrics::get().sign_batch(n);
            return self.call(&lane, req.raw()).await;
        }
        let chunks = chunks(
            (0..n).map(|i| req.batch_item(i).len()),
            self.limits.max_batch,
            self.limits.max_batch_bytes,
        );
        let calls = chunks.into_iter().map(|chunk| {
            metrics::get().sign_batch(chunk.len());
            let body = Bytes::from(req.with_batch(chunk.map(|i| req.batch_item(i))));
            let lane = &lane;
            async move { self.call(lane, &body).await }
        });
        let mut results = Vec::with_capacity(n);
        for answer in futures_util::future::join_all(calls).await {
            match answer?.get_mut("batch_results").map(Value::take) {
                Some(Value::Array(part)) => results.extend(part),
                _ => {
                    return Err(VaultError::Decode(
                        "Vault answered a batch without batch_results".into(),
                    ))
                }
            }
        }
        Ok(serde_json::json!({ "batch_results": results }))
    }
}

/// A coalesced batch's body: the lane's options and each waiter's item, as sent.
fn batch_body(lane: &Lane, batch: &[Waiter]) -> Bytes {
    let size: usize = batch.iter().map(Waiter::size).sum();
    let mut out = String::with_capacity(lane.options.len() + size + 32);
    out.push('{');
    out.push_str(&lane.options);
    out.push_str("\"batch_input\":[");
    for (i, w) in batch.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        w.push_item(&mut out);
    }
    out.push_str("]}");
    Bytes::from(out.into_bytes())
}

/// Consecutive index ranges over items of the given sizes, each of at most `max_items`
/// items and `max_bytes` (at least one item each).
fn chunks(
    sizes: impl Iterator<Item = usize>,
    max_items: usize,
    max_bytes: usize,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    let mut end = 0usize;
    for (i, size) in sizes.enumerate() {
        let n = i - start;
        if n > 0 && (n == max_items || bytes + size > max_bytes) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size + 1;
        end = i + 1;
    }
    if end > start {
        out.push(start..end);
    }
    out
}

/// A batch item's result as Vault answers the same request in single mode: the fields
/// without `reference`, or a 400 with the item's error.
fn single_answer(result: Value) -> Result<Value, VaultError> {
    match result.get("error").and_then(Value::as_str) {
        Some(e) if !e.is_empty() => Err(VaultError::Status {
            status: 400,
            errors: vec![e.to_string()],
        }),
        _ => {
            let mut data = match result {
                Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            data.remove("reference");
            data.remove("error");
            Ok(Value::Object(data))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> TransitRequest {
        TransitRequest::parse(Bytes::from(v.to_string()), 10).unwrap()
    }

    #[test]
    fn lanes_share_options_and_ignore_item_fields() {
        let a = Lane::of(
            "k",
            None,
            &req(json!({"input": "YQ==", "hash_algorithm": "sha2-512", "reference": "1"})),
        );
        let b = Lane::of(
            "k",
            None,
            &req(json!({"input": "Yg==", "hash_algorithm": "sha2-512", "context": "Yw=="})),
        );
        assert_eq!(a, b);
        let other_hash = Lane::of(
            "k",
            None,
            &req(json!({"input": "YQ==", "hash_algorithm": "sha2-256"})),
        );
        assert_ne!(a, other_hash);
        let other_key = Lane::of(
            "j",
            None,
            &req(json!({"input": "YQ==", "hash_algorithm": "sha2-512"})),
        );
        assert_ne!(a, other_key);
        let path_hash = Lane::of(
            "k",
            Some("sha2-512"),
            &req(json!({"input": "YQ==", "hash_algorithm": "sha2-512"})),
        );
        assert_ne!(a, path_hash);
        // Same options in another order, and duplicates (the last wins, as for Vault).
        let raw = |s: &str| TransitRequest::parse(Bytes::from(s.to_string()), 10).unwrap();
        let c = Lane::of(
            "k",
            None,
            &raw(r#"{"prehashed":true,"input":"YQ==","hash_algorithm":"sha2-512"}"#),
        );
        let d = Lane::of(
            "k",
            None,
            &raw(r#"{"hash_algorithm":"x","hash_algorithm":"sha2-512","prehashed":true}"#),
        );
        assert_eq!(c, d);
        assert_eq!(
            c.options,
            r#""hash_algorithm":"sha2-512","prehashed":true,"#
        );
    }

    #[test]
    fn batch_bodies_are_the_callers_texts() {
        let a = req(json!({"input": "YQ==", "prehashed": true, "reference": "r"}));
        let b = req(json!({"input": "Yg==", "context": "Yw==", "prehashed": true}));
        let lane = Lane::of("k", None, &a);
        let waiters: Vec<Waiter> = [&a, &b]
            .into_iter()
            .map(|r| Waiter::new(r, oneshot::channel().0))
            .collect();
        let body = batch_body(&lane, &waiters);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"prehashed":true,"batch_input":[{"input":"YQ=="},{"input":"Yg==","context":"Yw=="}]}"#
        );
    }

    #[test]
    fn batches_are_bounded_by_items_and_bytes() {
        let limits = Limits {
            max_batch: 3,
            max_batch_bytes: 100,
            max_in_flight: 1,
        };
        let mut state = LaneState::default();
        for size in [20, 20, 20, 20, 95, 200, 20] {
            let body = json!({ "input": "a".repeat(size - 12) }).to_string();
            assert_eq!(body.len(), size);
            state.queue.push_back(Waiter::new(
                &req(serde_json::from_str(&body).unwrap()),
                oneshot::channel().0,
            ));
        }
        let sizes = |b: Vec<Waiter>| b.iter().map(Waiter::size).collect::<Vec<_>>();
        assert_eq!(sizes(state.take(&limits)), [20, 20, 20]);
        assert_eq!(sizes(state.take(&limits)), [20]);
        assert_eq!(sizes(state.take(&limits)), [95]);
        assert_eq!(sizes(state.take(&limits)), [200]);
        assert_eq!(sizes(state.take(&limits)), [20]);
        assert!(state.take(&limits).is_empty());
        assert_eq!(
            chunks([10, 10, 10, 10, 95, 200, 10].into_iter(), 3, 100),
            vec![0..3, 3..4, 4..5, 5..6, 6..7]
        );
        assert_eq!(chunks([1, 1, 1].into_iter(), 2, 100), vec![0..2, 2..3]);
    }

    #[test]
    fn batch_results_become_single_answers() {
        let ok =
            single_answer(json!({"signature": "vault:v1:x", "key_version": 1, "reference": ""}))
                .unwrap();
        assert_eq!(ok, json!({"signature": "vault:v1:x", "key_version": 1}));
        let err =
            single_answer(json!({"error": "unable to decode input as base64", "reference": ""}))
                .unwrap_err();
        assert!(
            matches!(&err, VaultError::Status { status: 400, errors } if errors[0].contains("base64")),
            "{err:?}"
        );
    }
}
