//! TLS towards Vault: one rustls configuration built from Vault's own variables.
//!
//! `VAULT_CACERT` / `VAULT_CAPATH` replace the system roots (as in Vault's CLI), a client
//! certificate enables mTLS and the cert auth method, `VAULT_TLS_SERVER_NAME` checks
//! Vault's certificate against a fixed name, and `VAULT_SKIP_VERIFY` accepts any
//! certificate (handshake signatures are still checked). ALPN offers `h2`, so Vault is
//! spoken to over HTTP/2 when it offers it.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::TlsConfig;

/// Builds the client configuration, or every problem found in the TLS settings.
pub fn client_config(cfg: &TlsConfig) -> Result<rustls::ClientConfig, Vec<String>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut errors = Vec::new();
    let roots = custom_roots(cfg, &mut errors);
    let identity = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => load_identity(cert, key).map_err(|e| errors.push(e)).ok(),
        _ => None,
    };
    let server_name = cfg.server_name.as_ref().and_then(|name| {
        ServerName::try_from(name.clone())
            .map_err(|e| errors.push(format!("VAULT_TLS_SERVER_NAME: {e}")))
            .ok()
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    let verifier: Arc<dyn ServerCertVerifier> = if cfg.skip_verify {
        Arc::new(AcceptAny(provider.clone()))
    } else if let Some(roots) = roots {
        match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()
        {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("VAULT_CACERT / VAULT_CAPATH: {e}"));
                return Err(errors);
            }
        }
    } else {
        match rustls_platform_verifier::Verifier::new(provider.clone()) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                errors.push(format!("cannot load the system's CA certificates: {e}"));
                return Err(errors);
            }
        }
    };
    let verifier = match server_name {
        Some(name) => Arc::new(FixedName {
            inner: verifier,
            name,
        }),
        None => verifier,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| vec![format!("TLS: {e}")])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| vec![format!("VAULT_CLIENT_CERT / VAULT_CLIENT_KEY: {e}")])?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The CA set of `VAULT_CACERT` and `VAULT_CAPATH`, or `None` for the system roots.
fn custom_roots(cfg: &TlsConfig, errors: &mut Vec<String>) -> Option<RootCertStore> {
    if cfg.ca_cert.is_none() && cfg.ca_path.is_none() {
        return None;
    }
    let mut store = RootCertStore::empty();
    let mut add_file = |path: &Path, var: &str, errors: &mut Vec<String>| match load_certs(path) {
        Ok(certs) => {
            for c in certs {
                if let Err(e) = store.add(c) {
                    errors.push(format!("{var} {}: {e}", path.display()));
                }
            }
        }
        Err(e) => errors.push(format!("{var}: {e}")),
    };
    if let Some(file) = &cfg.ca_cert {
        add_file(file, "VAULT_CACERT", errors);
    }
    if let Some(dir) = &cfg.ca_path {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut files: Vec<_> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect();
                files.sort();
                for f in files {
                    add_file(&f, "VAULT_CAPATH", errors);
                }
            }
            Err(e) => errors.push(format!("VAULT_CAPATH {}: {e}", dir.display())),
        }
    }
    if store.is_empty() && errors.is_empty() {
        errors.push("VAULT_CACERT / VAULT_CAPATH: no CA certificate found".into());
    }
    Some(store)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn load_identity(cert: &Path, key: &Path) -> Result<Identity, String> {
    let chain = load_certs(cert).map_err(|e| format!("VAULT_CLIENT_CERT: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("VAULT_CLIENT_KEY: {}: {e}", key.display()))?;
    Ok((chain, key))
}

/// Checks the certificate against `VAULT_TLS_SERVER_NAME` instead of the URL's host.
#[derive(Debug)]
struct FixedName {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `VAULT_SKIP_VERIFY`: any certificate is accepted; the handshake is still signed.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_files_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let cfg = TlsConfig {
            ca_cert: Some(empty),
            client_cert: Some(dir.path().join("missing-cert.pem")),
            client_key: Some(dir.path().join("missing-key.pem")),
            server_name: Some("bad name!".into()),
            ..TlsConfig::default()
        };
        let errors = client_config(&cfg).unwrap_err();
        let text = errors.join("\n");
        assert!(text.contains("VAULT_CACERT"), "{text}");
        assert!(text.contains("VAULT_CLIENT_CERT"), "{text}");
        assert!(text.contains("VAULT_TLS_SERVER_NAME"), "{text}");
    }

    #[test]
    fn defaults_offer_h2() {
        let c = client_config(&TlsConfig::default()).unwrap();
        assert_eq!(c.alpn_protocols[0], b"h2");
    }
}
