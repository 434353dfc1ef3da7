//! TLS and QUIC configuration: mutual TLS 1.3 against the cluster CA, and the transport settings
//! taken from [`QuicConfig`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use raftkit::NodeId;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

use crate::certs::{self, CertError, NodeCerts};
use crate::config::QuicConfig;

/// The ALPN protocol both sides must offer: a QUIC peer speaking anything else is refused during
/// the handshake.
pub(crate) const ALPN: &[u8] = b"raftkit/1";

/// The one crypto provider used everywhere (ring), passed explicitly so that the process-wide
/// default never matters.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> CertError {
    CertError::Tls { what: what.to_string(), reason: e.to_string() }
}

/// The server side: present our certificate, require one from the client that chains to the CA.
pub(crate) fn server_config(cfg: &QuicConfig) -> Result<quinn::ServerConfig, CertError> {
    let tls = server_tls(cfg)?;
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| tls_error("the TLS configuration", e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport(cfg));
    Ok(server)
}

fn server_tls(cfg: &QuicConfig) -> Result<rustls::ServerConfig, CertError> {
    let certs = &cfg.certs;
    let roots = certs::root_store(certs.ca()).map_err(|e| tls_error("the CA certificate", e))?;
    let verifier = certs::client_verifier(roots).map_err(|e| tls_error("the CA certificate", e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("the TLS configuration", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.chain(), certs.key())
        .map_err(|e| tls_error("the node certificate", e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No session resumption and no 0-RTT: a resumed session would skip the client certificate
    // check (an expired or replaced certificate would still get in), and cluster links connect
    // too rarely to gain from it.
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.max_early_data_size = 0;
    Ok(tls)
}

/// The client side: present our certificate, and accept the server only if its certificate
/// chains to the CA and names the node we dialed (checked through the TLS server name).
pub(crate) fn client_config(cfg: &QuicConfig) -> Result<quinn::ClientConfig, CertError> {
    let tls = client_tls(cfg)?;
    let quic =
        QuicClientConfig::try_from(tls).map_err(|e| tls_error("the TLS configuration", e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport(cfg));
    Ok(client)
}

fn client_tls(cfg: &QuicConfig) -> Result<rustls::ClientConfig, CertError> {
    let certs = &cfg.certs;
    let roots = certs::root_store(certs.ca()).map_err(|e| tls_error("the CA certificate", e))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("the TLS configuration", e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs.chain(), certs.key())
        .map_err(|e| tls_error("the node certificate", e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // Every connection gets a full handshake (see `server_config`).
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    Ok(tls)
}

/// Transport settings shared by both sides. Anything not set here keeps quinn's default (notably
/// Cubic congestion control and its flow-control windows).
fn transport(cfg: &QuicConfig) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Validated in `QuicConfig::validate`, so the conversion cannot fail there; fall back to
    // quinn's default rather than panic if it ever did.
    if let Ok(idle) = quinn::IdleTimeout::try_from(cfg.idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(cfg.keep_alive));
    // One ordered stream per direction plus one per large message in flight.
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(crate::wire::MAX_STREAMS));
    // No bidirectional streams and no datagrams in this protocol.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    t.datagram_receive_buffer_size(None);
    Arc::new(t)
}

/// The stateless-reset key, derived from the node's private key so that it survives restarts:
/// a peer still holding a connection to our previous incarnation gets a reset it can verify as
/// soon as it sends to our (same) address, instead of waiting for the idle timeout.
pub(crate) fn endpoint_config(certs: &NodeCerts) -> quinn::EndpointConfig {
    let key = certs.key();
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"raftkit-quic stateless reset v1")
        .extract(key.secret_der());
    let reset_key = match prk.expand(&[b"reset key"], ring::hmac::HMAC_SHA256) {
        Ok(okm) => ring::hmac::Key::from(okm),
        // Cannot happen (expansion fails only past 255 hash lengths); an arbitrary fixed key
        // would be guessable, so fall back to a random one, which only loses the shortcut.
        Err(_) => random_hmac_key(),
    };
    quinn::EndpointConfig::new(Arc::new(reset_key))
}

fn random_hmac_key() -> ring::hmac::Key {
    let rng = ring::rand::SystemRandom::new();
    let mut bytes = [0u8; 32];
    // If even the system RNG fails, the process has bigger problems; a zero key only weakens
    // the stateless-reset shortcut (a forged reset can at worst close a connection).
    let _ = ring::rand::SecureRandom::fill(&rng, &mut bytes);
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes)
}

/// The authenticated node id of a connection's peer: the identity in the certificate it
/// presented (already verified against the CA by the handshake).
pub(crate) fn peer_node(conn: &quinn::Connection) -> Result<NodeId, String> {
    let identity = conn.peer_identity().ok_or("the peer presented no certificate")?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "unexpected peer identity type".to_string())?;
    let leaf = chain.first().ok_or("the peer presented an empty certificate chain")?;
    certs::identity_of(leaf).map_err(|e| e.to_string())
}

/// When the certificate the peer presented on `conn` expires, if it can be read.
pub(crate) fn peer_not_after(conn: &quinn::Connection) -> Option<SystemTime> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let secs = cert.validity().not_after.timestamp();
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertAuthority;

    fn config() -> QuicConfig {
        let ca = CertAuthority::generate().unwrap();
        let certs = ca.node_certs(NodeId(1)).unwrap();
        QuicConfig::new(NodeId(1), "127.0.0.1:0".parse().unwrap(), certs)
    }

    /// A resumed TLS session skips the certificate check, so neither side may offer one.
    #[test]
    fn neither_side_resumes_sessions_or_sends_early_data() {
        let cfg = config();
        let server = server_tls(&cfg).unwrap();
        assert_eq!(server.send_tls13_tickets, 0);
        assert!(!server.session_storage.can_cache());
        assert!(!server.ticketer.enabled());
        assert_eq!(server.max_early_data_size, 0);
        let client = client_tls(&cfg).unwrap();
        assert!(!client.enable_early_data);
        let resumption = format!("{:?}", client.resumption);
        assert!(resumption.contains("NoClientSessionStorage"), "{resumption}");
    }
}
