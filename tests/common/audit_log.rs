//! The Vault requests one sidecar makes, read from OpenBao's own file audit log (a dev
//! server started with `Bao::dev_audited`), told apart by the display name of a token made
//! for the sidecar alone.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::Bao;

/// The display name OpenBao records for [`sidecar_token`]'s token (`token-` + the name).
pub const SIDECAR_TOKEN_NAME: &str = "token-aegis-under-test";

/// A root token of the sidecar's own, so that the audit log tells its requests apart.
pub async fn sidecar_token(bao: &Bao) -> String {
    let (s, body) = bao
        .api(
            "POST",
            "auth/token/create",
            Some(json!({"display_name": "aegis-under-test", "policies": ["root"]})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    body["auth"]["client_token"].as_str().unwrap().to_string()
}

/// One request as OpenBao audited it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `read`, `list`, `update`, ...
    pub operation: String,
    pub path: String,
}

/// The sidecar's requests in OpenBao's audit log, read as the log grows.
pub struct VaultCalls {
    log: PathBuf,
    /// Bytes of the log already read (whole lines only).
    read: u64,
}

impl VaultCalls {
    pub fn new(log: &Path) -> Self {
        VaultCalls {
            log: log.to_path_buf(),
            read: 0,
        }
    }

    /// The paths of the sidecar's requests logged since the last call.
    pub fn since_last(&mut self) -> Vec<String> {
        self.calls_since_last()
            .into_iter()
            .map(|c| c.path)
            .collect()
    }

    /// The sidecar's requests logged since the last call. OpenBao writes a request's
    /// audit entries before it answers, so a request the sidecar has answered has all its
    /// Vault requests in the log.
    pub fn calls_since_last(&mut self) -> Vec<Call> {
        let mut file = std::fs::File::open(&self.log).expect("OpenBao's audit log");
        file.seek(SeekFrom::Start(self.read)).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        self.read += whole as u64;
        text[..whole]
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("an audit entry is JSON"))
            .filter(|e| e["type"] == "request" && e["auth"]["display_name"] == SIDECAR_TOKEN_NAME)
            .map(|e| Call {
                operation: e["request"]["operation"].as_str().unwrap().to_string(),
                path: e["request"]["path"].as_str().unwrap().to_string(),
            })
            .collect()
    }
}
