//! Sign coalescing: concurrent single sign requests for the same key and options become
//! one Transit batch call.
//!
//! Each (key, hash in the path, options) has a lane. A request whose lane has fewer than
//! `max_in_flight` calls to Vault in flight is sent at once, alone, in Vault's single mode:
//! a lone request never waits. Otherwise it queues; when a call of its lane returns,
//! everything queued (up to `max_batch` items) goes in the lane's next call. Under load the
//! batches grow by themselves to what Vault can take; idle, nothing changes. There is no
//! timer.
//!
//! Answers go back to each caller in its own single-mode shape. A per-item error goes to
//! its own caller only; a batch Vault refuses as a whole (400) is resent item by item, so
//! that each caller gets Vault's own single-mode answer. A failure of the call itself
//! (Vault unreachable, sealed) reaches every caller of that call.
//!
//! Callers' own batches are not coalesced: they pass through, split into calls of at
//! most `max_batch` items (Vault refuses requests of more than about 1 000 JSON strings),
//! sent concurrently and stitched back in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::telemetry::metrics;
use crate::vault::{VaultClient, VaultError};

/// The fields of a sign body that belong to one item; everything else is an option
/// shared by the whole batch.
const ITEM_FIELDS: [&str; 3] = ["input", "context", "reference"];

/// Requests that may share one Transit call.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Lane {
    key: String,
    hash: Option<String>,
    /// The body without its item fields, serialized: equal options, equal text.
    options: String,
}

impl Lane {
    fn of(key: &str, hash: Option<&str>, body: &Map<String, Value>) -> Lane {
        let options: Map<String, Value> = body
            .iter()
            .filter(|(k, _)| !ITEM_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Lane {
            key: key.to_string(),
            hash: hash.map(str::to_string),
            options: Value::Object(options).to_string(),
        }
    }
}

/// One caller waiting for its signature.
struct Waiter {
    /// The caller's single-mode body, sent as is when it goes alone.
    body: Map<String, Value>,
    reply: oneshot::Sender<Result<Value, VaultError>>,
}

impl Waiter {
    /// This caller's entry in a `batch_input`.
    fn item(&self) -> Value {
        let item: Map<String, Value> = self
            .body
            .iter()
            .filter(|(k, _)| ITEM_FIELDS[..2].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Value::Object(item)
    }
}

#[derive(Default)]
struct LaneState {
    in_flight: usize,
    queue: VecDeque<Waiter>,
}

impl LaneState {
    fn take(&mut self, max: usize) -> Vec<Waiter> {
        let n = self.queue.len().min(max);
        self.queue.drain(..n).collect()
    }
}

/// Joins concurrent sign requests into Transit batch calls (see the module docs).
pub struct Coalescer {
    vault: Arc<VaultClient>,
    mount: String,
    max_batch: usize,
    max_in_flight: usize,
    lanes: Mutex<HashMap<Lane, LaneState>>,
}

impl Coalescer {
    pub fn new(
        vault: Arc<VaultClient>,
        mount: String,
        max_batch: usize,
        max_in_flight: usize,
    ) -> Arc<Self> {
        Arc::new(Coalescer {
            vault,
            mount,
            max_batch: max_batch.max(1),
            max_in_flight: max_in_flight.max(1),
            lanes: Mutex::new(HashMap::new()),
        })
    }

    /// Signs one single-mode request; returns Transit's `data` for it.
    pub async fn sign_one(
        self: &Arc<Self>,
        key: &str,
        hash: Option<&str>,
        body: &Map<String, Value>,
    ) -> Result<Value, VaultError> {
        let lane = Lane::of(key, hash, body);
        let (reply, answer) = oneshot::channel();
        let waiter = Waiter {
            body: body.clone(),
            reply,
        };
        let start = {
            let mut lanes = self.lanes.lock().expect("coalescer lock");
            let state = lanes.entry(lane.clone()).or_default();
            state.queue.push_back(waiter);
            if state.in_flight < self.max_in_flight {
                state.in_flight += 1;
                Some(state.take(self.max_batch))
            } else {
                None
            }
        };
        if let Some(batch) = start {
            // Its own task: a caller that goes away never cancels the others' call.
            tokio::spawn(self.clone().drive(lane, batch).in_current_span());
        }
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

    /// Sends `batch`, then whatever queued meanwhile, until the lane's queue is empty.
    async fn drive(self: Arc<Self>, lane: Lane, mut batch: Vec<Waiter>) {
        loop {
            self.send(&lane, batch).await;
            let mut lanes = self.lanes.lock().expect("coalescer lock");
            let state = lanes.get_mut(&lane).expect("a lane with a call in flight");
            if state.queue.is_empty() {
                state.in_flight -= 1;
                if state.in_flight == 0 {
                    lanes.remove(&lane);
                }
                return;
            }
            batch = state.take(self.max_batch);
        }
    }

    /// One Transit call for `batch` (single mode for one waiter), answers to each waiter.
    async fn send(&self, lane: &Lane, mut batch: Vec<Waiter>) {
        metrics::get().sign_batch(batch.len());
        if batch.len() == 1 {
            let waiter = batch.pop().expect("one waiter");
            let answer = self.call(lane, &waiter.body).await;
            let _ = waiter.reply.send(answer);
            return;
        }
        let mut body = batch[0].body.clone();
        for field in ITEM_FIELDS {
            body.remove(field);
        }
        body.insert(
            "batch_input".into(),
            Value::Array(batch.iter().map(Waiter::item).collect()),
        );
        match self.call(lane, &body).await {
            Ok(data) => {
                let results = data
                    .get("batch_results")
                    .and_then(Value::as_array)
                    .filter(|r| r.len() == batch.len());
                let Some(results) = results else {
                    let e = VaultError::Decode(format!(
                        "Vault answered a batch of {} with something else",
                        batch.len()
                    ));
                    for w in batch {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                    return;
                };
                for (waiter, result) in batch.into_iter().zip(results) {
                    let _ = waiter.reply.send(single_answer(result));
                }
            }
            // Refused as a whole: each caller gets Vault's answer to its own request.
            Err(VaultError::Status { status: 400, .. }) => {
                futures_util::future::join_all(batch.into_iter().map(|w| async move {
                    let answer = self.call(lane, &w.body).await;
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

    async fn call(&self, lane: &Lane, body: &Map<String, Value>) -> Result<Value, VaultError> {
        self.vault
            .transit_write(
                "sign",
                &self.mount,
                &lane.key,
                lane.hash.as_deref(),
                &Value::Object(body.clone()),
            )
            .await
    }

    /// A caller's own batch: split into calls of at most `max_batch` items, sent
    /// concurrently, answered as one `batch_results` in order.
    pub async fn sign_batch(
        &self,
        key: &str,
        hash: Option<&str>,
        body: &Map<String, Value>,
    ) -> Result<Value, VaultError> {
        let lane = Lane {
            key: key.to_string(),
            hash: hash.map(str::to_string),
            options: String::new(),
        };
        let items = body
            .get("batch_input")
            .and_then(Value::as_array)
            .filter(|items| items.len() > self.max_batch);
        let Some(items) = items else {
            metrics::get().sign_batch(
                body.get("batch_input")
                    .and_then(Value::as_array)
                    .map_or(1, Vec::len),
            );
            return self.call(&lane, body).await;
        };
        let calls = items.chunks(self.max_batch).map(|chunk| {
            let mut part = body.clone();
            part.insert("batch_input".into(), Value::Array(chunk.to_vec()));
            metrics::get().sign_batch(chunk.len());
            let lane = &lane;
            async move { self.call(lane, &part).await }
        });
        let mut results = Vec::with_capacity(items.len());
        for answer in futures_util::future::join_all(calls).await {
            let data = answer?;
            match data.get("batch_results").and_then(Value::as_array) {
                Some(part) => results.extend(part.iter().cloned()),
                None => {
                    return Err(VaultError::Decode(
                        "Vault answered a batch without batch_results".into(),
                    ))
                }
            }
        }
        Ok(serde_json::json!({ "batch_results": results }))
    }
}

/// A batch item's result as Vault answers the same request in single mode: the fields
/// without `reference`, or a 400 with the item's error.
fn single_answer(result: &Value) -> Result<Value, VaultError> {
    match result.get("error").and_then(Value::as_str) {
        Some(e) if !e.is_empty() => Err(VaultError::Status {
            status: 400,
            errors: vec![e.to_string()],
        }),
        _ => {
            let mut data = result.as_object().cloned().unwrap_or_default();
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

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn lanes_share_options_and_ignore_item_fields() {
        let a = Lane::of(
            "k",
            None,
            &map(json!({"input": "YQ==", "hash_algorithm": "sha2-512", "reference": "1"})),
        );
        let b = Lane::of(
            "k",
            None,
            &map(json!({"input": "Yg==", "hash_algorithm": "sha2-512", "context": "Yw=="})),
        );
        assert_eq!(a, b);
        let other_hash = Lane::of(
            "k",
            None,
            &map(json!({"input": "YQ==", "hash_algorithm": "sha2-256"})),
        );
        assert_ne!(a, other_hash);
        let other_key = Lane::of(
            "j",
            None,
            &map(json!({"input": "YQ==", "hash_algorithm": "sha2-512"})),
        );
        assert_ne!(a, other_key);
        let path_hash = Lane::of(
            "k",
            Some("sha2-512"),
            &map(json!({"input": "YQ==", "hash_algorithm": "sha2-512"})),
        );
        assert_ne!(a, path_hash);
    }

    #[test]
    fn batch_results_become_single_answers() {
        let ok =
            single_answer(&json!({"signature": "vault:v1:x", "key_version": 1, "reference": ""}))
                .unwrap();
        assert_eq!(ok, json!({"signature": "vault:v1:x", "key_version": 1}));
        let err =
            single_answer(&json!({"error": "unable to decode input as base64", "reference": ""}))
                .unwrap_err();
        assert!(
            matches!(&err, VaultError::Status { status: 400, errors } if errors[0].contains("base64")),
            "{err:?}"
        );
    }

    #[test]
    fn items_carry_input_and_context_only() {
        let (reply, _) = oneshot::channel();
        let w = Waiter {
            body: map(
                json!({"input": "YQ==", "context": "Yw==", "reference": "r", "prehashed": true}),
            ),
            reply,
        };
        assert_eq!(w.item(), json!({"input": "YQ==", "context": "Yw=="}));
    }
}
