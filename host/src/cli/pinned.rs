//! What the command line trusts when it speaks HTTPS to a daemon: the
//! certificates of a PEM file (`--ca-file`, or the daemon's own
//! certificate file with `--config`) as authorities, and each of them also
//! as the very certificate the daemon may present.
//!
//! The second is for self-signed certificates: `openssl req -x509` marks
//! the certificate it makes as a CA, and a CA's certificate is refused as a
//! server's own by the usual checks, although curl and browsers given the
//! same file accept it. A certificate given exactly is trusted as the
//! daemon's whatever its flags say, though not outside its validity period:
//! the daemon must still prove it holds the key, in the handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// A client configuration trusting the certificates in `pem` (errors name
/// the file).
pub fn client_config(pem: &Path) -> Result<rustls::ClientConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pem)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", pem.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in it (a PEM file with `-----BEGIN CERTIFICATE-----`)",
            pem.display()
        ));
    }
    let mut roots = RootCertStore::empty();
    let (_, unusable) = roots.add_parsable_certificates(certs.iter().cloned());
    if unusable == certs.len() {
        return Err(format!(
            "{}: none of its certificates can be used",
            pem.display()
        ));
    }
    let provider = Arc::new(crate::api::tls::provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("{}: {e}", pem.display()))?;
    let verifier = Pinned {
        webpki,
        pinned: certs,
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

/// The usual checks, then an exact match with a given certificate.
#[derive(Debug)]
struct Pinned {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verdict = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verdict {
            Ok(verified) => Ok(verified),
            Err(Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            )) => verdict,
            Err(_)
                if self
                    .pinned
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
