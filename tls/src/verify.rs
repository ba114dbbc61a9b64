//! How a component checks the server it calls inside the cluster: the certificate must chain
//! to the cluster CA and name one of the roles the caller expects there (an agent calling the
//! tracker accepts only `tracker`). The host name is not checked: components are reached by IP
//! address, and the role is the identity that matters. An agent's certificate therefore cannot
//! pose as an origin or a build-index.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

use crate::identity::{Identities, Roles};

#[derive(Debug)]
pub(crate) struct RoleVerifier {
    roots: Arc<RootCertStore>,
    identities: Identities,
    expected: Roles,
    algorithms: WebPkiSupportedAlgorithms,
}

impl RoleVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        identities: Identities,
        expected: Roles,
    ) -> RoleVerifier {
        let algorithms = rustls::crypto::CryptoProvider::get_default()
            .map(|provider| provider.signature_verification_algorithms)
            .unwrap_or(rustls::crypto::ring::default_provider().signature_verification_algorithms);
        RoleVerifier {
            roots,
            identities,
            expected,
            algorithms,
        }
    }
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let roles = self.identities.roles_of(end_entity);
        if !roles.intersects(self.expected) {
            return Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
