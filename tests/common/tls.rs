//! TLS for tests: a throwaway PKI made with rcgen (a CA, a server certificate for
//! 127.0.0.1/localhost, client certificates), written as PEM files to a temp dir, and two
//! REAL OpenBao servers speaking HTTPS:
//!
//! - [`TlsBao`]: a non-dev server (single-node raft, initialised and unsealed like
//!   [`Bao::persistent`](super::Bao::persistent)) whose listener uses the generated
//!   server certificate (`tls_cert_file`/`tls_key_file`) and, per [`TlsOptions`], the
//!   generated CA as `tls_client_ca_file` and `tls_require_and_verify_client_cert`.
//!   `cert` auth needs neither: by default the listener requests (without requiring or
//!   verifying) a client certificate and hands it to the auth method.
//! - [`DevTlsBao`]: `bao server -dev -dev-tls -dev-tls-cert-dir=DIR`, which writes its own
//!   CA to `DIR/vault-ca.pem` (certificate `vault-cert.pem`, key `vault-key.pem`).
//!
//! Both dereference to [`Bao`], whose client trusts the right CA (and, for [`TlsBao`],
//! presents the default client certificate), so `api`/`api_ok`/`create_key` work as usual.
//! [`enable_cert_auth`] and [`cert_login`] drive OpenBao's `cert` auth method.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};

use super::cluster::free_ports;
use super::standins::enable_auth;
use super::{bao_bin, call, free_port, Bao};

/// A certificate and its private key: PEM text and the files they were written to.
#[derive(Clone, Debug)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl PemPair {
    /// A reqwest client identity (certificate + PKCS#8 key) for mutual TLS.
    pub fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes())
            .expect("client identity")
    }
}

/// A CA with a server certificate (SANs `localhost`, `127.0.0.1`) and a client
/// certificate (CN `aegis-test-client`, clientAuth), all ECDSA P-256, in a temp dir.
pub struct TestPki {
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub server: PemPair,
    pub client: PemPair,
    issuer: Issuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn("aegis test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca_pem).unwrap();
        let issuer = Issuer::new(params, key);
        let server = issue(
            &issuer,
            dir.path(),
            "server",
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = issue_client(&issuer, dir.path(), "aegis-test-client");
        TestPki {
            ca_pem,
            ca_path,
            server,
            client,
            issuer,
            dir,
        }
    }

    /// Another client certificate from this CA, written as `<cn>.pem` / `<cn>-key.pem`.
    pub fn issue_client(&self, common_name: &str) -> PemPair {
        issue_client(&self.issuer, self.dir.path(), common_name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An HTTPS client trusting only this CA, presenting `identity` if given.
    pub fn https_client(&self, identity: Option<&PemPair>) -> reqwest::Client {
        https_client(&self.ca_pem, identity)
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn issue_client(issuer: &Issuer<'static, KeyPair>, dir: &Path, common_name: &str) -> PemPair {
    issue(
        issuer,
        dir,
        common_name,
        common_name,
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    )
}

/// Issues a certificate signed by `issuer` and writes `<file>.pem` / `<file>-key.pem`.
fn issue(
    issuer: &Issuer<'static, KeyPair>,
    dir: &Path,
    file: &str,
    common_name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> PemPair {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name = dn(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let pair = PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_path: dir.join(format!("{file}.pem")),
        key_path: dir.join(format!("{file}-key.pem")),
    };
    std::fs::write(&pair.cert_path, &pair.cert_pem).unwrap();
    std::fs::write(&pair.key_path, &pair.key_pem).unwrap();
    pair
}

/// An HTTPS client trusting only `ca_pem` (no system roots), presenting `identity` if given.
pub fn https_client(ca_pem: &str, identity: Option<&PemPair>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
    let mut builder = super::client_builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(30));
    if let Some(id) = identity {
        builder = builder.identity(id.identity());
    }
    builder.build().unwrap()
}

/// Listener settings for [`TlsBao`]. With neither set, the listener still *requests* a
/// client certificate (OpenBao's default), which is all `cert` auth needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsOptions {
    /// `tls_client_ca_file = <test CA>`: the CA that client certificates are verified
    /// against when they are required; alone it changes nothing for `cert` auth.
    pub client_ca_file: bool,
    /// `tls_require_and_verify_client_cert = true` (needs `client_ca_file`, or client
    /// certificates are verified against the system roots): the handshake fails without a
    /// client certificate from the test CA.
    pub require_client_cert: bool,
}

/// A non-dev OpenBao on `https://127.0.0.1:PORT` using a [`TestPki`]; see the module docs.
/// Its [`Bao`] client trusts the test CA and presents `pki.client`.
pub struct TlsBao {
    pub bao: Bao,
    pub pki: TestPki,
    _storage: tempfile::TempDir,
}

impl TlsBao {
    pub async fn start(opts: TlsOptions) -> TlsBao {
        assert!(
            opts.client_ca_file || !opts.require_client_cert,
            "require_client_cert without client_ca_file: no test client could connect"
        );
        let pki = TestPki::generate();
        let storage = tempfile::tempdir().unwrap();
        let ports = free_ports(2);
        let (port, cluster_port) = (ports[0], ports[1]);
        let config = storage.path().join("bao.hcl");
        let raft = storage.path().join("raft");
        std::fs::create_dir_all(&raft).unwrap();
        let mut listener_extra = String::new();
        if opts.client_ca_file {
            listener_extra.push_str(&format!(
                "  tls_client_ca_file = \"{}\"\n",
                pki.ca_path.display()
            ));
        }
        if opts.require_client_cert {
            listener_extra.push_str("  tls_require_and_verify_client_cert = true\n");
        }
        std::fs::write(
            &config,
            format!(
                r#"storage "raft" {{
  path = "{raft}"
  node_id = "tls0"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file = "{cert}"
  tls_key_file = "{key}"
{listener_extra}}}
api_addr = "https://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cluster_port}"
"#,
                raft = raft.display(),
                cert = pki.server.cert_path.display(),
                key = pki.server.key_path.display(),
            ),
        )
        .unwrap();
        let child = Command::new(bao_bin())
            .arg("server")
            .arg(format!("-config={}", config.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao server (TLS)");
        let mut bao = Bao {
            child: Some(child),
            port,
            addr: format!("https://127.0.0.1:{port}"),
            token: String::new(),
            storage: None, // not restartable through Bao::restart (that writes a plain-HTTP config)
            cluster_port,
            unseal_key: String::new(),
            client: pki.https_client(Some(&pki.client)),
        };
        bao.init_unseal_and_mount_transit().await;
        TlsBao {
            bao,
            pki,
            _storage: storage,
        }
    }

    /// An HTTPS client for this server presenting `identity` (or no client certificate).
    pub fn client(&self, identity: Option<&PemPair>) -> reqwest::Client {
        self.pki.https_client(identity)
    }
}

impl Deref for TlsBao {
    type Target = Bao;
    fn deref(&self) -> &Bao {
        &self.bao
    }
}

/// `bao server -dev -dev-tls`: HTTPS with OpenBao's own generated CA; Transit enabled.
/// Its listener requests (does not require) client certificates, so `cert` auth works.
pub struct DevTlsBao {
    pub bao: Bao,
    /// OpenBao's generated CA, `DIR/vault-ca.pem`.
    pub ca_pem: String,
    pub ca_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl DevTlsBao {
    pub async fn start() -> DevTlsBao {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let token = format!("root-{}", super::uuid_like());
        let child = Command::new(bao_bin())
            .args(["server", "-dev", "-dev-tls", "-dev-no-store-token"])
            .arg(format!("-dev-tls-cert-dir={}", dir.path().display()))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-dev-root-token-id={token}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao -dev -dev-tls");
        let ca_path = dir.path().join("vault-ca.pem");
        let ca_pem = wait_for_file(&ca_path).await;
        let bao = Bao {
            child: Some(child),
            port,
            addr: format!("https://127.0.0.1:{port}"),
            token,
            storage: None,
            cluster_port: 0,
            unseal_key: String::new(),
            client: https_client(&ca_pem, None),
        };
        bao.wait_healthy().await;
        bao.api_ok("POST", "sys/mounts/transit", json!({"type": "transit"}))
            .await;
        DevTlsBao {
            bao,
            ca_pem,
            ca_path,
            _dir: dir,
        }
    }

    /// An HTTPS client trusting OpenBao's CA, presenting `identity` if given.
    pub fn client(&self, identity: Option<&PemPair>) -> reqwest::Client {
        https_client(&self.ca_pem, identity)
    }
}

impl Deref for DevTlsBao {
    type Target = Bao;
    fn deref(&self) -> &Bao {
        &self.bao
    }
}

/// Polls until `path` exists with complete PEM content; returns it.
async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.contains("-----END CERTIFICATE-----") {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} not written within 30 s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Enables `auth/cert` (if needed) and trusts client certificates issued by `ca_pem` as
/// `auth/cert/certs/<name>` with the given token policies.
pub async fn enable_cert_auth(bao: &Bao, name: &str, ca_pem: &str, policies: &[&str]) {
    enable_auth(bao, "cert", "cert").await;
    bao.api_ok(
        "POST",
        &format!("auth/cert/certs/{name}"),
        json!({"certificate": ca_pem, "token_policies": policies}),
    )
    .await;
}

/// `POST /v1/auth/cert/login` with whatever client certificate `client` presents;
/// `name` restricts the match to one `auth/cert/certs/<name>` entry.
pub async fn cert_login(client: &reqwest::Client, addr: &str, name: Option<&str>) -> (u16, Value) {
    let body = match name {
        Some(n) => json!({"name": n}),
        None => json!({}),
    };
    call(
        client,
        "POST",
        &format!("{addr}/v1/auth/cert/login"),
        None,
        Some(&body),
    )
    .await
}
