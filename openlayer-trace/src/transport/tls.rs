//! TLS: the rustls client configuration on the `ring` provider, with the platform's
//! verifier or, when verification is turned off, one that accepts any certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::Error;

impl super::TransportConfig {
    /// Loads the platform's root certificates when the base URL is HTTPS and verified, so
    /// that `init` fails with a clear error instead of a worker whose every request fails.
    pub(crate) fn check_tls_roots(&self) -> Result<(), Error> {
        let https = self.validate()?.scheme() == "https";
        if https && self.verify_ssl {
            tls_config(true, true)?;
        }
        Ok(())
    }
}

/// The rustls configuration: the `ring` provider (never installed process-wide), HTTP/1.1,
/// and either the platform's verifier or, with `verify_ssl == false`, none. Root
/// certificates that cannot be loaded are an error for an HTTPS base URL; for a plain-HTTP
/// one (the API's client follows no redirect) they only make HTTPS fail.
pub(super) fn tls_config(verify_ssl: bool, https: bool) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = if verify_ssl {
        match rustls_platform_verifier::Verifier::new(provider.clone()) {
            Ok(verifier) => Arc::new(verifier),
            Err(e) if https => {
                return Err(Error::Config(format!(
                    "the TLS root certificates cannot be loaded ({e}); install the system's CA \
                     certificates or point SSL_CERT_FILE at a PEM bundle"
                )));
            }
            Err(e) => {
                // Plain-HTTP endpoints still work; HTTPS fails with this reason.
                let reason = format!("TLS certificates cannot be verified: {e}");
                tracing::warn!(target: "openlayer_trace", "{reason}; HTTPS requests will fail");
                Arc::new(Unverifiable {
                    reason,
                    algorithms: provider.signature_verification_algorithms,
                })
            }
        }
    } else {
        tracing::warn!(
            target: "openlayer_trace",
            "TLS certificate verification is disabled (OPENLAYER_VERIFY_SSL=false)"
        );
        Arc::new(AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        })
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts every certificate (`OPENLAYER_VERIFY_SSL=false`); handshake signatures are
/// still checked, so the connection is encrypted, just not authenticated.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
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
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Rejects every certificate with a fixed reason: used when the platform's roots could
/// not be loaded, so that building the transport still succeeds.
#[derive(Debug)]
struct Unverifiable {
    reason: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Unverifiable {
    fn refusal(&self) -> rustls::Error {
        rustls::Error::General(self.reason.clone())
    }
}

impl ServerCertVerifier for Unverifiable {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(self.refusal())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(self.refusal())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(self.refusal())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
