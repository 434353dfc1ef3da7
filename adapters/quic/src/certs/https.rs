//! HTTPS with the cluster's certificates, for an application's own API next to the Raft
//! traffic (the `kv` example serves its HTTP API this way).
//!
//! The server presents its node certificate and requires a client certificate that chains to
//! the cluster CA ([`NodeCerts::https_server_config`]); a client holds such a certificate
//! ([`ClientCerts`], issued by [`CertAuthority::issue_client`](super::CertAuthority::issue_client))
//! and accepts any server whose certificate chains to the CA and carries a node identity
//! ([`ClientCerts::https_client_config`]). Clients dial by address, so the identity is taken
//! from the certificate rather than from a server name. TLS 1.3 only, ALPN [`HTTPS_ALPN`].

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::files::{self, CA_CERT_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE};
use super::{
    CertError, NodeCerts, check_ca, check_dates, check_key, client_verifier, identity_name,
    identity_of, not_after_of, parse, pem_certs, pem_key, read, root_store, server_verifier,
};

/// The ALPN protocol of the HTTPS configurations: HTTP/1.1.
pub const HTTPS_ALPN: &[u8] = b"http/1.1";

fn tls_error(what: &str, e: impl std::fmt::Display) -> CertError {
    CertError::Tls { what: what.to_string(), reason: e.to_string() }
}

impl NodeCerts {
    /// A TLS server configuration for an HTTPS API served with this node's certificate, which
    /// requires every client to present a certificate issued by the cluster CA (an API client
    /// certificate, [`ClientCerts`], or a node's). A client without one fails the handshake.
    ///
    /// # Errors
    /// [`Tls`](CertError::Tls) if the TLS library refuses the certificates.
    pub fn https_server_config(&self) -> Result<rustls::ServerConfig, CertError> {
        let roots = root_store(self.ca()).map_err(|e| tls_error("the CA certificate", e))?;
        let verifier = client_verifier(roots).map_err(|e| tls_error("the CA certificate", e))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("the TLS configuration", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain(), self.key())
            .map_err(|e| tls_error("the node certificate", e))?;
        tls.alpn_protocols = vec![HTTPS_ALPN.to_vec()];
        Ok(tls)
    }
}

/// What an API client needs for HTTPS with client authentication: the cluster CA, its client
/// certificate (chain) and private key, checked together. Cheap to clone.
#[derive(Clone)]
pub struct ClientCerts {
    inner: Arc<ClientCertsInner>,
}

struct ClientCertsInner {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_after: SystemTime,
}

impl std::fmt::Debug for ClientCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientCerts")
            .field("not_after", &self.inner.not_after)
            .finish_non_exhaustive()
    }
}

impl ClientCerts {
    /// Checks and bundles PEM text: the CA certificate, the client certificate (optionally
    /// followed by intermediates) and its private key.
    ///
    /// # Errors
    /// Unparsable PEM or X.509; a CA that is not a CA; a certificate outside its validity
    /// period, not issued by the CA or unusable for TLS client authentication; a key that does
    /// not match the certificate.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ClientCerts, CertError> {
        Self::check(
            pem_certs(ca_pem.as_bytes(), "the CA certificate")?,
            pem_certs(cert_pem.as_bytes(), "the client certificate")?,
            pem_key(key_pem.as_bytes(), "the client key")?,
            ("the CA certificate", "the client certificate"),
        )
    }

    /// Loads and checks PEM files: the CA certificate, the client certificate and its key.
    ///
    /// # Errors
    /// As [`from_pem`](Self::from_pem), plus [`Io`](CertError::Io) for a missing or unreadable
    /// file and [`CaKeyPresent`](CertError::CaKeyPresent) if the files sit next to the CA key.
    pub fn load(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<ClientCerts, CertError> {
        let (ca, cert, key) = (ca.as_ref(), cert.as_ref(), key.as_ref());
        let dirs = [ca, cert, key].map(|p| p.parent().unwrap_or(Path::new("")));
        files::refuse_ca_key(&dirs, None)?;
        let (ca_what, cert_what) =
            (format!("CA certificate {}", ca.display()), format!("certificate {}", cert.display()));
        let certs = Self::check(
            pem_certs(&read(ca)?, &ca_what)?,
            pem_certs(&read(cert)?, &cert_what)?,
            pem_key(&read(key)?, &format!("key {}", key.display()))?,
            (&ca_what, &cert_what),
        )?;
        files::refuse_ca_key(&dirs, Some(&certs.inner.ca))?;
        Ok(certs)
    }

    /// Loads `ca.crt`, `client.crt` and `client.key` from `dir` (as
    /// [`issue_client_files`](super::issue_client_files) writes them).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_from_dir(dir: impl AsRef<Path>) -> Result<ClientCerts, CertError> {
        let dir = dir.as_ref();
        Self::load(dir.join(CA_CERT_FILE), dir.join(CLIENT_CERT_FILE), dir.join(CLIENT_KEY_FILE))
    }

    fn check(
        mut cas: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        (ca_what, cert_what): (&str, &str),
    ) -> Result<ClientCerts, CertError> {
        let now = SystemTime::now();
        let ca = check_ca(&mut cas, ca_what, now)?;
        let leaf = parse(&chain[0], cert_what)?;
        check_dates(&leaf, cert_what, now)?;
        let not_after = not_after_of(&leaf);
        drop(leaf);
        let roots =
            root_store(&ca).map_err(|reason| CertError::Parse { what: ca_what.into(), reason })?;
        let unix_now = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
        );
        client_verifier(roots)
            .map_err(|reason| CertError::Parse { what: ca_what.into(), reason })?
            .verify_client_cert(&chain[0], &chain[1..], unix_now)
            .map_err(|e| CertError::NotIssuedByCa {
                what: cert_what.into(),
                reason: e.to_string(),
            })?;
        check_key(&chain, &key, cert_what)?;
        Ok(ClientCerts { inner: Arc::new(ClientCertsInner { ca, chain, key, not_after }) })
    }

    /// When the client certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.inner.not_after
    }

    /// A TLS client configuration for a node's HTTPS API: presents the client certificate and
    /// accepts a server only if its certificate chains to the cluster CA and carries a node
    /// identity (any node: the client dials addresses, not names). The server name passed to
    /// the connector is ignored.
    ///
    /// # Errors
    /// [`Tls`](CertError::Tls) if the TLS library refuses the certificates.
    pub fn https_client_config(&self) -> Result<rustls::ClientConfig, CertError> {
        let roots = root_store(&self.inner.ca).map_err(|e| tls_error("the CA certificate", e))?;
        let inner = server_verifier(roots).map_err(|e| tls_error("the CA certificate", e))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("the TLS configuration", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyClusterNode(inner)))
            .with_client_auth_cert(self.inner.chain.clone(), self.inner.key.clone_key())
            .map_err(|e| tls_error("the client certificate", e))?;
        tls.alpn_protocols = vec![HTTPS_ALPN.to_vec()];
        Ok(tls)
    }
}

/// Accepts a server certificate that the CA's WebPKI verifier accepts for the node identity the
/// certificate itself carries: chain, dates, server-auth usage and the name are all checked,
/// only the expected name comes from the certificate (a certificate without exactly one node
/// identity, such as a client certificate, is refused).
#[derive(Debug)]
struct AnyClusterNode(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for AnyClusterNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let node = identity_of(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        let name = ServerName::try_from(identity_name(node))
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.0.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use raftkit::NodeId;

    use super::super::CertAuthority;
    use super::*;

    /// Which side of a handshake failed.
    #[derive(Debug)]
    enum Side {
        Client(#[allow(dead_code)] rustls::Error),
        Server(#[allow(dead_code)] rustls::Error),
    }

    /// Runs a TLS handshake in memory; the first side to fail ends it.
    fn handshake(client: rustls::ClientConfig, server: rustls::ServerConfig) -> Result<(), Side> {
        handshake_named(client, server, "kv.example")
    }

    fn handshake_named(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
        name: &'static str,
    ) -> Result<(), Side> {
        let name = ServerName::try_from(name).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().map_err(Side::Server)?;
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().map_err(Side::Client)?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn a_client_certificate_of_the_cluster_ca_is_accepted() {
        let ca = CertAuthority::generate().unwrap();
        let server = ca.node_certs(NodeId(1)).unwrap().https_server_config().unwrap();
        let client = ca.client_certs("ops").unwrap().https_client_config().unwrap();
        handshake(client, server).unwrap();
    }

    #[test]
    fn a_client_without_a_certificate_or_from_another_ca_is_refused() {
        let ca = CertAuthority::generate().unwrap();
        let node = ca.node_certs(NodeId(1)).unwrap();
        let roots = root_store(node.ca()).unwrap();
        let anonymous = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = node.https_server_config().unwrap();
        let err = handshake_named(anonymous, server, "node-1.raftkit").unwrap_err();
        assert!(matches!(err, Side::Server(_)), "{err:?}");
        // Trusts this cluster's CA, but its certificate is another CA's: the server refuses.
        let other = CertAuthority::generate().unwrap();
        let issued = other.issue_client("ops").unwrap();
        let stranger = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(root_store(node.ca()).unwrap())
            .with_client_auth_cert(
                pem_certs(issued.cert_pem.as_bytes(), "cert").unwrap(),
                pem_key(issued.key_pem.as_bytes(), "key").unwrap(),
            )
            .unwrap();
        let server = node.https_server_config().unwrap();
        let err = handshake_named(stranger, server, "node-1.raftkit").unwrap_err();
        assert!(matches!(err, Side::Server(_)), "{err:?}");
    }

    #[test]
    fn the_client_accepts_only_cluster_nodes_as_servers() {
        let (ca, other) = (CertAuthority::generate().unwrap(), CertAuthority::generate().unwrap());
        let client = ca.client_certs("ops").unwrap();
        // A node of another cluster.
        let foreign = other.node_certs(NodeId(1)).unwrap().https_server_config().unwrap();
        let err = handshake(client.https_client_config().unwrap(), foreign).unwrap_err();
        assert!(matches!(err, Side::Client(_)), "{err:?}");
        // A client certificate of this cluster presented as a server's: no node identity, and
        // not for server authentication.
        let issued = ca.issue_client("mallory").unwrap();
        let chain = pem_certs(issued.cert_pem.as_bytes(), "cert").unwrap();
        let key = pem_key(issued.key_pem.as_bytes(), "key").unwrap();
        let fake = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let err = handshake(client.https_client_config().unwrap(), fake).unwrap_err();
        assert!(matches!(err, Side::Client(_)), "{err:?}");
    }

    #[test]
    fn client_certificates_cannot_be_node_certificates() {
        let ca = CertAuthority::generate().unwrap();
        let issued = ca.issue_client("ops").unwrap();
        let err = NodeCerts::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem);
        assert!(matches!(err, Err(CertError::NoIdentity { .. })), "{err:?}");
    }
}
