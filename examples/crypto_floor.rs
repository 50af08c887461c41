//! The crypto floor for `scripts/bench.py`: what one signature check costs in-process,
//! with no HTTP, JSON or scheduling around it, so the benchmark can print Aegis's CPU per
//! verify request as a multiple of it.
//!
//! For each key type the benchmark uses (ed25519, ecdsa-p256, rsa-2048 with PKCS#1 v1.5
//! and PSS) a key is generated, the benchmark's message is signed once, and the check is
//! timed for at least `MILLISECONDS` (default 500) each, two ways:
//!
//! - `floor`: the aws-lc-rs primitive alone (`ParsedPublicKey::verify_sig`, which hashes
//!   the message as part of the check);
//! - `aegis`: the sidecar's own [`aegis::crypto::PublicKey::verify`] on the same key (parsed
//!   from Transit's format, as the key cache does) and the same signature, with the
//!   parameters a default Transit verify request resolves to.
//!
//! Prints one JSON object: nanoseconds per check, CPU time of this thread where Linux
//! reports it (`/proc/thread-self/schedstat`) and wall time, and the number of checks.
//!
//!     cargo run --release --example crypto_floor -- [MILLISECONDS]

use std::hint::black_box;
use std::time::Instant;

use aegis::crypto::{
    HashAlgorithm, KeyType, Marshaling, PublicKey, RsaScheme, SaltLength, VerifyParams,
};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey, RsaKeyPair, RsaPssSaltLength,
    VerificationAlgorithm,
};
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// What the benchmark signs (scripts/bench.py: `message`).
fn message() -> Vec<u8> {
    let mut m = b"model response to sign: ".to_vec();
    m.extend(std::iter::repeat_n(b'x', 200));
    m
}

/// CPU time this thread has run, in ns, if the kernel exposes it.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// ns per call of `f`, calling it in rounds until `min_ms` of wall time have passed:
/// (CPU if known, wall, calls). The CPU figure comes from a counter the kernel updates
/// at scheduler ticks, so the rounds run long enough for a tick to be noise.
fn time_per_call(min_ms: u64, mut f: impl FnMut() -> bool) -> Value {
    for _ in 0..10 {
        assert!(f(), "the check must pass before it is timed");
    }
    let cpu0 = thread_cpu_ns();
    let wall0 = Instant::now();
    let mut calls: u32 = 0;
    while wall0.elapsed().as_millis() < u128::from(min_ms) {
        for _ in 0..16 {
            black_box(f());
        }
        calls += 16;
    }
    let n = f64::from(calls);
    let wall = wall0.elapsed().as_nanos() as f64 / n;
    let cpu = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) => Value::from((b - a) as f64 / n),
        _ => Value::Null,
    };
    json!({ "cpu_ns": cpu, "wall_ns": wall, "calls": calls })
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// One case: the key as Transit returns it, the signature, and the primitive's algorithm.
struct Case {
    name: &'static str,
    key_type: KeyType,
    transit_public_key: String,
    raw_public_key: Vec<u8>,
    algorithm: &'static dyn VerificationAlgorithm,
    signature: Vec<u8>,
    params: VerifyParams,
}

fn params(rsa_scheme: RsaScheme) -> VerifyParams {
    VerifyParams {
        hash: HashAlgorithm::Sha2_256,
        prehashed: false,
        marshaling: Marshaling::Asn1,
        rsa_scheme,
    }
}

fn cases(msg: &[u8]) -> Vec<Case> {
    let rng = SystemRandom::new();
    let ed = Ed25519KeyPair::generate().expect("ed25519 key");
    let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).expect("p256 key");
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa key");
    let rsa_sig = |padding| {
        let mut sig = vec![0u8; rsa.public_modulus_len()];
        rsa.sign(padding, &rng, msg, &mut sig).expect("rsa sign");
        sig
    };
    let rsa_spki = pem(rsa.public_key().as_der().expect("rsa spki").as_ref());
    vec![
        Case {
            name: "ed25519",
            key_type: KeyType::Ed25519,
            transit_public_key: base64::engine::general_purpose::STANDARD
                .encode(ed.public_key().as_ref()),
            raw_public_key: ed.public_key().as_ref().to_vec(),
            algorithm: &signature::ED25519,
            signature: ed.sign(msg).as_ref().to_vec(),
            params: params(RsaScheme::Pss(SaltLength::Auto)),
        },
        Case {
            name: "ecdsa-p256",
            key_type: KeyType::from_transit("ecdsa-p256").expect("known type"),
            transit_public_key: pem(ec.public_key().as_der().expect("ec spki").as_ref()),
            raw_public_key: ec.public_key().as_ref().to_vec(),
            algorithm: &signature::ECDSA_P256_SHA256_ASN1,
            signature: ec.sign(&rng, msg).expect("ecdsa sign").as_ref().to_vec(),
            params: params(RsaScheme::Pss(SaltLength::Auto)),
        },
        Case {
            name: "rsa-2048-pkcs1v15",
            key_type: KeyType::Rsa(2048),
            transit_public_key: rsa_spki.clone(),
            raw_public_key: rsa.public_key().as_ref().to_vec(),
            algorithm: &signature::RSA_PKCS1_2048_8192_SHA256,
            signature: rsa_sig(&signature::RSA_PKCS1_SHA256),
            params: params(RsaScheme::Pkcs1v15),
        },
        Case {
            // Transit's default for RSA keys (salt_length=auto on verify).
            name: "rsa-2048-pss",
            key_type: KeyType::Rsa(2048),
            transit_public_key: rsa_spki,
            raw_public_key: rsa.public_key().as_ref().to_vec(),
            // Transit signs PSS with the largest salt (Go's PSSSaltLengthAuto on sign).
            algorithm: &const {
                signature::RSA_PSS_2048_8192_SHA256.with_pss_salt_length(RsaPssSaltLength::Max)
            },
            signature: rsa_sig(
                &const { signature::RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Max) },
            ),
            params: params(RsaScheme::Pss(SaltLength::Auto)),
        },
    ]
}

fn main() {
    let min_ms: u64 = match std::env::args().nth(1) {
        None => 500,
        Some(a) => a
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("MILLISECONDS must be a positive number, got {a:?}")),
    };
    let msg = message();
    let mut floor = Map::new();
    let mut aegis = Map::new();
    for case in cases(&msg) {
        let primitive =
            ParsedPublicKey::new(case.algorithm, &case.raw_public_key).expect("aws-lc key");
        floor.insert(
            case.name.into(),
            time_per_call(min_ms, || {
                primitive
                    .verify_sig(black_box(&msg), black_box(&case.signature))
                    .is_ok()
            }),
        );
        let key = PublicKey::parse(case.key_type, &case.transit_public_key).expect("aegis key");
        aegis.insert(
            case.name.into(),
            time_per_call(min_ms, || {
                key.verify(&case.params, black_box(&msg), black_box(&case.signature)) == Ok(true)
            }),
        );
    }
    let out = json!({
        "min_ms_per_figure": min_ms,
        "message_bytes": msg.len(),
        "debug_assertions": cfg!(debug_assertions),
        "floor": floor,
        "aegis": aegis,
    });
    println!("{out}");
}
