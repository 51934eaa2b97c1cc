//! `trust = "network-key"`: a peer is admitted because it proves it holds the cluster's shared
//! key, not because its device ID is listed. The TLS handshake then admits any certificate
//! (`tls::Admit::AnyCertificate`), and right after it, before a single HTTP/2 or gRPC byte, both
//! sides prove they hold the key:
//!
//! 1. the dialer sends `SNK1` and `MAC(k, "dialer" || exporter || dialer ID || listener ID)`;
//! 2. the listener checks it; if it is wrong it answers `SNK0` and closes, else it answers `SNK1`
//!    and `MAC(k, "listener" || ...)`, which the dialer checks in turn.
//!
//! `k` is derived from the configured key with BLAKE3's key derivation, and MAC is BLAKE3's keyed
//! mode. `exporter` is the TLS session's exporter value (RFC 5705 / RFC 8446 §7.5), which only the
//! two endpoints of that one session know: a proof is useless on any other connection (a relay or
//! a replay), and the role keeps a proof from being reflected back at its sender. The key itself
//! never crosses the wire. The dialer proves first so that anyone who merely connects to a node
//! learns nothing about the key; what remains (a host that gets a node to dial it sees one proof
//! and could try to guess a weak key offline) is why the key must be long and random.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::core::DeviceId;

/// The exporter label (RFC 5705): the value is ours alone, no other protocol derives the same.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-syncnode-network-key-v1";
/// BLAKE3 key-derivation context for the MAC key.
const KDF_CONTEXT: &str = "syncnode 2025 network key v1 proof MAC key";
/// A proof follows.
const PROOF: &[u8; 4] = b"SNK1";
/// The listener refused the dialer's proof.
const REFUSED: &[u8; 4] = b"SNK0";
/// The whole exchange must finish within this (a peer that says nothing is cut).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals remembered for "logged once"; a flood of fresh identities beyond this is logged at debug.
const MAX_REMEMBERED: usize = 4096;

/// Which end of the TLS session a proof speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Listener,
}

impl Role {
    fn tag(self) -> &'static [u8] {
        match self {
            Role::Dialer => b"dialer",
            Role::Listener => b"listener",
        }
    }
}

/// What ties a proof to one TLS session: its exporter value and the two certificates' device IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBinding {
    pub exporter: [u8; 32],
    pub dialer: DeviceId,
    pub listener: DeviceId,
}

impl SessionBinding {
    /// The binding of an established TLS 1.3 session (either end).
    pub fn of<D>(
        conn: &rustls::ConnectionCommon<D>,
        dialer: DeviceId,
        listener: DeviceId,
    ) -> Result<SessionBinding, ProofError> {
        let exporter = conn
            .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
            .map_err(|e| ProofError::Exporter(e.to_string()))?;
        Ok(SessionBinding { exporter, dialer, listener })
    }
}

/// Why a network-key exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("the peer sent no network-key proof (is trust = \"network-key\" set there?)")]
    NoProof,
    #[error("the peer's network-key proof is wrong (it holds a different network key)")]
    WrongProof,
    #[error("the peer refused our network-key proof (it holds a different network key)")]
    RefusedByPeer,
    #[error("the peer closed the connection during the network-key exchange (it may hold no key or a different one)")]
    Closed,
    #[error("the network-key exchange timed out")]
    TimedOut,
    #[error("a connection from this node itself")]
    OwnDevice,
    #[error("no TLS exporter value: {0}")]
    Exporter(String),
    #[error("network-key exchange: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for ProofError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProofError::Closed
        } else {
            ProofError::Io(e)
        }
    }
}

/// The cluster's key, ready to make and check proofs, with the memory of refusals already logged.
pub struct NetworkKey {
    mac_key: [u8; 32],
    logged: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkKey(..)")
    }
}

impl NetworkKey {
    pub fn new(secret: &str) -> NetworkKey {
        NetworkKey { mac_key: blake3::derive_key(KDF_CONTEXT, secret.as_bytes()), logged: Mutex::new(HashSet::new()) }
    }

    /// `role`'s proof for the session `binding` describes.
    pub fn proof(&self, role: Role, binding: &SessionBinding) -> [u8; 32] {
        let mut mac = blake3::Hasher::new_keyed(&self.mac_key);
        mac.update(role.tag()).update(&binding.exporter).update(&binding.dialer.0).update(&binding.listener.0);
        *mac.finalize().as_bytes()
    }

    /// Whether `proof` is `role`'s proof for this session (compared in constant time).
    pub fn verify(&self, role: Role, binding: &SessionBinding, proof: &[u8; 32]) -> bool {
        blake3::Hash::from_bytes(self.proof(role, binding)) == *proof
    }

    /// True the first time a refusal about `who` is reported: callers log that one at warn and
    /// later ones at debug, so a peer redialing with the wrong key is logged once, not forever.
    pub fn first_refusal(&self, who: &str) -> bool {
        let mut logged = self.logged.lock().expect("refusal log lock");
        if logged.len() >= MAX_REMEMBERED && !logged.contains(who) {
            return false;
        }
        logged.insert(who.to_string())
    }

    /// The dialer's side: prove first, then check the listener's proof.
    pub async fn dialer_exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        binding: &SessionBinding,
    ) -> Result<(), ProofError> {
        let run = async {
            let mut out = PROOF.to_vec();
            out.extend_from_slice(&self.proof(Role::Dialer, binding));
            stream.write_all(&out).await?;
            stream.flush().await?;
            let mut magic = [0u8; 4];
            stream.read_exact(&mut magic).await?;
            match &magic {
                m if m == REFUSED => return Err(ProofError::RefusedByPeer),
                m if m == PROOF => {}
                _ => return Err(ProofError::NoProof),
            }
            let mut proof = [0u8; 32];
            stream.read_exact(&mut proof).await?;
            if self.verify(Role::Listener, binding, &proof) {
                Ok(())
            } else {
                Err(ProofError::WrongProof)
            }
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, run).await.unwrap_or(Err(ProofError::TimedOut))
    }

    /// The listener's side: check the dialer's proof, then prove in turn (never before).
    pub async fn listener_exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        binding: &SessionBinding,
    ) -> Result<(), ProofError> {
        let run = async {
            let mut magic = [0u8; 4];
            stream.read_exact(&mut magic).await?;
            if &magic != PROOF {
                return Err(ProofError::NoProof);
            }
            let mut proof = [0u8; 32];
            stream.read_exact(&mut proof).await?;
            if !self.verify(Role::Dialer, binding, &proof) {
                // Tell the dialer why, so its log says "different key" rather than "closed".
                let _ = stream.write_all(REFUSED).await;
                let _ = stream.flush().await;
                return Err(ProofError::WrongProof);
            }
            let mut out = PROOF.to_vec();
            out.extend_from_slice(&self.proof(Role::Listener, binding));
            stream.write_all(&out).await?;
            stream.flush().await?;
            Ok(())
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, run).await.unwrap_or(Err(ProofError::TimedOut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use crate::net::identity::Identity;
    use crate::net::tls::{client_config, server_config, Admit};

    fn identity() -> Identity {
        let generated = rcgen::generate_simple_self_signed(vec!["syncnode".to_string()]).unwrap();
        let cert = generated.cert.der().to_vec();
        Identity {
            device_id: DeviceId::from_certificate(&cert),
            certificate: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der()),
        }
    }

    /// Two real TLS 1.3 sessions' worth of endpoints, connected in memory.
    type Session = (
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
        tokio_rustls::server::TlsStream<tokio::io::DuplexStream>,
    );

    async fn session(dialer: &Identity, listener: &Identity) -> Session {
        let (a, b) = tokio::io::duplex(1 << 16);
        let connector = TlsConnector::from(Arc::new(client_config(dialer, Admit::AnyCertificate).unwrap()));
        let acceptor = TlsAcceptor::from(Arc::new(server_config(listener, Admit::AnyCertificate).unwrap()));
        let name = ServerName::try_from("syncnode").unwrap();
        let (client, server) = tokio::join!(connector.connect(name, a), acceptor.accept(b));
        (client.unwrap(), server.unwrap())
    }

    fn bindings(s: &Session, dialer: &Identity, listener: &Identity) -> (SessionBinding, SessionBinding) {
        let on_dialer = SessionBinding::of(s.0.get_ref().1, dialer.device_id, listener.device_id).unwrap();
        let on_listener = SessionBinding::of(s.1.get_ref().1, dialer.device_id, listener.device_id).unwrap();
        (on_dialer, on_listener)
    }

    #[tokio::test]
    async fn both_ends_of_one_session_agree_and_a_proof_does_not_verify_on_another_session() {
        let (a, b) = (identity(), identity());
        let key = NetworkKey::new("correct horse battery staple");
        let first = session(&a, &b).await;
        let second = session(&a, &b).await;
        let (first_dialer, first_listener) = bindings(&first, &a, &b);
        let (second_dialer, _) = bindings(&second, &a, &b);
        assert_eq!(first_dialer, first_listener, "both ends derive the same exporter value");
        assert_ne!(first_dialer.exporter, second_dialer.exporter, "each session has its own");

        let proof = key.proof(Role::Dialer, &first_dialer);
        assert!(key.verify(Role::Dialer, &first_listener, &proof));
        // Replayed or relayed onto another session between the same two devices: refused.
        assert!(!key.verify(Role::Dialer, &second_dialer, &proof));
        // Reflected back as the other role: refused.
        assert!(!key.verify(Role::Listener, &first_listener, &proof));
        // Made with another key: refused.
        assert!(!key.verify(
            Role::Dialer,
            &first_listener,
            &NetworkKey::new("another key").proof(Role::Dialer, &first_dialer)
        ));
        // Claimed for other identities on the same session: refused.
        let c = identity();
        let other_ids = SessionBinding { dialer: c.device_id, ..first_listener.clone() };
        assert!(!key.verify(Role::Dialer, &other_ids, &proof));
    }

    #[tokio::test]
    async fn the_exchange_admits_a_peer_with_the_same_key() {
        let (a, b) = (identity(), identity());
        let key = NetworkKey::new("one cluster key");
        let (mut client, mut server) = session(&a, &b).await;
        let dialer_binding = SessionBinding::of(client.get_ref().1, a.device_id, b.device_id).unwrap();
        let listener_binding = SessionBinding::of(server.get_ref().1, a.device_id, b.device_id).unwrap();
        let (d, l) = tokio::join!(
            key.dialer_exchange(&mut client, &dialer_binding),
            key.listener_exchange(&mut server, &listener_binding)
        );
        d.unwrap();
        l.unwrap();
        // The streams are still usable afterwards: nothing of the exchange is left in them.
        client.write_all(b"h2").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"h2");
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_on_both_sides_and_the_listener_never_proves_first() {
        let (a, b) = (identity(), identity());
        let (mut client, mut server) = session(&a, &b).await;
        let dialer_binding = SessionBinding::of(client.get_ref().1, a.device_id, b.device_id).unwrap();
        let listener_binding = SessionBinding::of(server.get_ref().1, a.device_id, b.device_id).unwrap();
        let (wrong, right) = (NetworkKey::new("wrong key"), NetworkKey::new("right key"));
        let (d, l) = tokio::join!(
            wrong.dialer_exchange(&mut client, &dialer_binding),
            right.listener_exchange(&mut server, &listener_binding)
        );
        // The dialer got a refusal, never the listener's proof (which would let it guess offline).
        assert!(matches!(d, Err(ProofError::RefusedByPeer)), "{d:?}");
        assert!(matches!(l, Err(ProofError::WrongProof)), "{l:?}");
    }

    #[tokio::test]
    async fn a_dialer_without_a_key_is_refused() {
        let (a, b) = (identity(), identity());
        let (mut client, mut server) = session(&a, &b).await;
        let listener_binding = SessionBinding::of(server.get_ref().1, a.device_id, b.device_id).unwrap();
        // What a node under trust = "listed" sends first: the HTTP/2 preface.
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        client.flush().await.unwrap();
        let l = NetworkKey::new("right key").listener_exchange(&mut server, &listener_binding).await;
        assert!(matches!(l, Err(ProofError::NoProof)), "{l:?}");
    }

    #[test]
    fn refusals_are_reported_once_per_peer() {
        let key = NetworkKey::new("k");
        assert!(key.first_refusal("peer-a"));
        assert!(!key.first_refusal("peer-a"));
        assert!(key.first_refusal("peer-b"));
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        assert_eq!(format!("{:?}", NetworkKey::new("s3cret")), "NetworkKey(..)");
    }
}
