//! Mutual TLS 1.3 between devices. There is no certificate authority: each side presents its
//! self-signed certificate, and the other accepts it only if the certificate's hash is a device ID
//! it trusts. A stranger is refused during the handshake, before any gRPC byte is exchanged.
//! Under `trust = "network-key"` any certificate passes here (its signature is still checked, so
//! the device ID still names whoever holds its private key), and the peer must then prove that it
//! holds the network key before the connection is used (`network_key.rs`).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::identity::Identity;
use crate::core::DeviceId;

/// The device IDs this node accepts. Shared by the TLS verifiers and the supervisor.
#[derive(Debug, Clone, Default)]
pub struct TrustedDevices(Arc<RwLock<HashSet<DeviceId>>>);

impl TrustedDevices {
    pub fn new(ids: impl IntoIterator<Item = DeviceId>) -> Self {
        TrustedDevices(Arc::new(RwLock::new(ids.into_iter().collect())))
    }

    pub fn contains(&self, id: &DeviceId) -> bool {
        self.0.read().expect("trust lock").contains(id)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn untrusted(id: DeviceId) -> rustls::Error {
    rustls::Error::General(format!("device {id} is not trusted"))
}

/// Which certificates the handshake admits.
#[derive(Debug, Clone)]
pub enum Admit {
    /// Any device in this set (a listener under trust = "listed").
    Listed(TrustedDevices),
    /// Exactly this device (a dialer that knows whom it dials).
    Device(DeviceId),
    /// Any certificate. Only ever used under trust = "network-key", where the network-key proof
    /// that follows the handshake is what admits the peer.
    AnyCertificate,
}

#[derive(Debug)]
struct DeviceVerifier {
    admit: Admit,
    provider: Arc<CryptoProvider>,
}

impl DeviceVerifier {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let id = DeviceId::from_certificate(cert);
        let ok = match &self.admit {
            Admit::Device(expected) => *expected == id,
            Admit::Listed(trusted) => trusted.contains(&id),
            Admit::AnyCertificate => true,
        };
        if ok {
            Ok(())
        } else {
            Err(untrusted(id))
        }
    }

    fn tls12(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn tls13(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for DeviceVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ServerCertVerifier for DeviceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// The listener's TLS config: TLS 1.3 only, client certificate required and checked against `admit`.
pub fn server_config(identity: &Identity, admit: Admit) -> anyhow::Result<rustls::ServerConfig> {
    let provider = provider();
    let verifier = Arc::new(DeviceVerifier { admit, provider: provider.clone() });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.certificate.clone()], identity.private_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The dialer's TLS config: one expected device, or (network-key only) any certificate.
pub fn client_config(identity: &Identity, admit: Admit) -> anyhow::Result<rustls::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(DeviceVerifier { admit, provider: provider.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.certificate.clone()], identity.private_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The device ID of the peer on an established TLS connection.
pub fn peer_device(certs: Option<&[CertificateDer<'_>]>) -> Option<DeviceId> {
    certs.and_then(|c| c.first()).map(|c| DeviceId::from_certificate(c))
}
