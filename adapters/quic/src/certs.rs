//! Certificates: a cluster CA and one certificate per node, generated here (rcgen) or loaded from
//! PEM files, and checked when loaded; and API client certificates for an application's HTTPS
//! API served with the node's certificate ([`NodeCerts::https_server_config`], [`ClientCerts`]).
//!
//! A node's identity is a DNS subject alternative name `node-<id>.raftkit` (see
//! [`identity_name`]); a certificate must carry exactly one. The names are identities, never
//! resolved: addresses come from the [`AddressBook`](crate::AddressBook).
//!
//! Files written by [`generate_cluster`] (one directory per holder: each machine gets only its
//! own) and read by [`NodeCerts::load_from_dir`]:
//!
//! | file | what |
//! |---|---|
//! | `ca/ca.crt` | the cluster CA certificate |
//! | `ca/ca.key` | the CA's private key: keep it offline; it issues certificates for new nodes ([`issue_node_files`]) and API clients ([`issue_client_files`]) |
//! | `node-<id>/ca.crt` | a copy of the CA certificate, which node `<id>` trusts |
//! | `node-<id>/node.crt` | node `<id>`'s certificate, signed by the CA |
//! | `node-<id>/node.key` | node `<id>`'s private key (PKCS #8), readable by its owner only |
//!
//! A node never needs the CA key, and loading refuses certificates from a directory that holds
//! it ([`CertError::CaKeyPresent`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use raftkit::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use x509_parser::extensions::GeneralName;

mod files;
mod https;

pub use files::{
    CA_CERT_FILE, CA_DIR, CA_KEY_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE, ClientFiles,
    ClusterFiles, NODE_CERT_FILE, NODE_KEY_FILE, NodeFiles, generate_cluster, issue_client_files,
    issue_node_files, node_dir,
};
pub use https::{ClientCerts, HTTPS_ALPN};

/// The suffix of every node identity name.
const IDENTITY_SUFFIX: &str = ".raftkit";
/// The prefix of every node identity name.
const IDENTITY_PREFIX: &str = "node-";

/// How long generated certificates are valid by default: the CA for ten years, nodes for two.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// See [`DEFAULT_CA_VALIDITY`].
pub const DEFAULT_NODE_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

/// Why certificates could not be generated, loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that [`generate_cluster`] would write already exists.
    #[error("{} already exists; refusing to overwrite (use issue_node_files to add a node)", path.display())]
    Exists {
        /// The file or directory.
        path: PathBuf,
    },
    /// A certificate directory holds the cluster CA's private key, which no node (or client)
    /// may have: whoever compromises it could issue any node identity.
    #[error(
        "{} is the cluster CA's private key; refusing to use certificates next to it: a node must \
         not hold the CA key (anyone who compromises the node could issue any node identity). \
         Move it off this machine",
        path.display()
    )]
    CaKeyPresent {
        /// The file holding the CA key.
        path: PathBuf,
    },
    /// A client name unusable as a certificate name and directory name.
    #[error("invalid client name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A PEM input holds no item of the expected kind, or does not parse.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input (a path or a description).
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate does not parse as X.509.
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    Parse {
        /// Which certificate.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A certificate's validity period has ended.
    #[error("{what} expired at {not_after} (unix seconds)")]
    Expired {
        /// Which certificate.
        what: String,
        /// Its `notAfter`, in seconds since the Unix epoch.
        not_after: i64,
    },
    /// A certificate's validity period has not started yet.
    #[error("{what} is not valid before {not_before} (unix seconds); is the clock right?")]
    NotYetValid {
        /// Which certificate.
        what: String,
        /// Its `notBefore`, in seconds since the Unix epoch.
        not_before: i64,
    },
    /// The CA certificate is not a CA (no `CA:TRUE` basic constraint).
    #[error("{what} is not a CA certificate")]
    NotACa {
        /// Which certificate.
        what: String,
    },
    /// A node certificate carries no node identity, or more than one.
    #[error(
        "{what} must carry exactly one node identity (a DNS name node-<id>.raftkit), found {found:?}"
    )]
    NoIdentity {
        /// Which certificate.
        what: String,
        /// The identity names found.
        found: Vec<String>,
    },
    /// A node certificate is for another node than expected.
    #[error("the certificate is for node {found}, but this is node {expected}")]
    WrongNode {
        /// The node the certificate was expected to be for.
        expected: NodeId,
        /// The node it is for.
        found: NodeId,
    },
    /// A node certificate does not chain to the cluster CA, or is not usable for mutual TLS.
    #[error("{what} is not accepted by the cluster CA: {reason}")]
    NotIssuedByCa {
        /// Which certificate.
        what: String,
        /// The verifier's complaint.
        reason: String,
    },
    /// The private key does not belong to the certificate, or is unusable.
    #[error("the private key does not match {what}: {reason}")]
    KeyMismatch {
        /// Which certificate.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS library refused the certificates or settings (for example a key type it does
    /// not support).
    #[error("cannot set up TLS with {what}: {reason}")]
    Tls {
        /// What was being set up.
        what: String,
        /// The TLS library's complaint.
        reason: String,
    },
    /// Generating a key or certificate failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// The generator's error.
        source: rcgen::Error,
    },
}

/// The identity name of `node`: the DNS subject alternative name its certificate carries.
pub fn identity_name(node: NodeId) -> String {
    format!("{IDENTITY_PREFIX}{}{IDENTITY_SUFFIX}", node.0)
}

/// The node an identity name names, if it is one (canonical decimal only, so one node has one
/// name).
pub fn parse_identity_name(name: &str) -> Option<NodeId> {
    let digits = name.strip_prefix(IDENTITY_PREFIX)?.strip_suffix(IDENTITY_SUFFIX)?;
    let id: u64 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(NodeId(id))
}

/// The node identity a DER certificate carries. Exactly one identity name must be present.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<NodeId, CertError> {
    identity_in(&parse(cert, "the peer certificate")?, "the peer certificate")
}

fn identity_in(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    what: &str,
) -> Result<NodeId, CertError> {
    let san = cert.subject_alternative_name().map_err(|e| CertError::Parse {
        what: what.to_string(),
        reason: format!("subject alternative names: {e}"),
    })?;
    let mut ids = Vec::new();
    let mut names = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::DNSName(dns) = name {
            if dns.starts_with(IDENTITY_PREFIX) && dns.ends_with(IDENTITY_SUFFIX) {
                names.push(dns.to_string());
                if let Some(id) = parse_identity_name(dns) {
                    ids.push(id);
                }
            }
        }
    }
    match (ids.as_slice(), names.len()) {
        ([id], 1) => Ok(*id),
        _ => Err(CertError::NoIdentity { what: what.to_string(), found: names }),
    }
}

fn parse<'a>(
    der: &'a CertificateDer<'_>,
    what: &str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, CertError> {
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertError::Parse { what: what.into(), reason: "trailing bytes".into() }),
        Err(e) => Err(CertError::Parse { what: what.into(), reason: e.to_string() }),
    }
}

/// Checks that `cert` is valid at `now`.
fn check_dates(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    what: &str,
    now: SystemTime,
) -> Result<(), CertError> {
    let now = unix_seconds(now);
    let v = cert.validity();
    if now > v.not_after.timestamp() {
        return Err(CertError::Expired { what: what.into(), not_after: v.not_after.timestamp() });
    }
    if now < v.not_before.timestamp() {
        return Err(CertError::NotYetValid {
            what: what.into(),
            not_before: v.not_before.timestamp(),
        });
    }
    Ok(())
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::Io { path: path.to_path_buf(), source })
}

fn pem_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem { what: what.into(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(CertError::Pem { what: what.into(), reason: "no CERTIFICATE found".into() });
    }
    Ok(certs)
}

fn pem_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| CertError::Pem {
        what: what.into(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY found".into(),
            e => e.to_string(),
        },
    })
}

/// Checks that `cas` is exactly one CA certificate, valid at `now`, and returns it.
fn check_ca(
    cas: &mut Vec<CertificateDer<'static>>,
    ca_what: &str,
    now: SystemTime,
) -> Result<CertificateDer<'static>, CertError> {
    if cas.len() != 1 {
        return Err(CertError::Pem {
            what: ca_what.into(),
            reason: format!("expected one CA certificate, found {}", cas.len()),
        });
    }
    let ca = cas.remove(0);
    let parsed_ca = parse(&ca, ca_what)?;
    if !parsed_ca.is_ca() {
        return Err(CertError::NotACa { what: ca_what.into() });
    }
    check_dates(&parsed_ca, ca_what, now)?;
    drop(parsed_ca);
    Ok(ca)
}

fn not_after_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64)
}

/// Checks that `key` is usable and belongs to `chain`'s leaf.
fn check_key(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_what: &str,
) -> Result<(), CertError> {
    let provider = crate::tls::provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| CertError::KeyMismatch { what: cert_what.into(), reason: e.to_string() })?;
    rustls::sign::CertifiedKey::new(chain.to_vec(), signing_key)
        .keys_match()
        .map_err(|e| CertError::KeyMismatch { what: cert_what.into(), reason: e.to_string() })
}

/// What a node needs for mutual TLS: the cluster CA, its own certificate (chain) and private
/// key, checked together. Cheap to clone.
#[derive(Clone)]
pub struct NodeCerts {
    inner: Arc<NodeCertsInner>,
}

struct NodeCertsInner {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    node: NodeId,
    not_after: SystemTime,
}

impl std::fmt::Debug for NodeCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("NodeCerts")
            .field("node", &self.inner.node)
            .field("not_after", &self.inner.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeCerts {
    /// Checks and bundles PEM text: the CA certificate, the node's certificate (optionally
    /// followed by intermediates) and the node's private key.
    ///
    /// # Errors
    /// Unparsable PEM or X.509; a CA that is not a CA; a certificate outside its validity
    /// period ([`Expired`](CertError::Expired), [`NotYetValid`](CertError::NotYetValid)); a
    /// node certificate without exactly one node identity, not issued by the CA or unusable for
    /// both TLS client and server authentication; a key that does not match the certificate.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<NodeCerts, CertError> {
        Self::check(
            pem_certs(ca_pem.as_bytes(), "the CA certificate")?,
            pem_certs(cert_pem.as_bytes(), "the node certificate")?,
            pem_key(key_pem.as_bytes(), "the node key")?,
            ("the CA certificate", "the node certificate"),
            SystemTime::now(),
        )
    }

    /// Loads and checks PEM files: the CA certificate, the node certificate and its key.
    ///
    /// # Errors
    /// As [`from_pem`](Self::from_pem), plus [`Io`](CertError::Io) for a missing or unreadable
    /// file, and [`CaKeyPresent`](CertError::CaKeyPresent) if a directory of the three files holds
    /// `ca.key`, or any file holding the CA's private key. Every message names the file at fault.
    pub fn load(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<NodeCerts, CertError> {
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
            SystemTime::now(),
        )?;
        files::refuse_ca_key(&dirs, Some(certs.ca()))?;
        Ok(certs)
    }

    /// Loads `ca.crt`, `node.crt` and `node.key` from `dir`, node `node`'s own directory (the
    /// `<out>/node-<id>` that [`generate_cluster`] writes), and checks that the certificate is
    /// `node`'s.
    ///
    /// # Errors
    /// As [`load`](Self::load) (so a directory holding the CA key is refused), plus
    /// [`WrongNode`](CertError::WrongNode).
    pub fn load_from_dir(dir: impl AsRef<Path>, node: NodeId) -> Result<NodeCerts, CertError> {
        let dir = dir.as_ref();
        let certs =
            Self::load(dir.join(CA_CERT_FILE), dir.join(NODE_CERT_FILE), dir.join(NODE_KEY_FILE))?;
        if certs.node_id() != node {
            return Err(CertError::WrongNode { expected: node, found: certs.node_id() });
        }
        Ok(certs)
    }

    fn check(
        mut cas: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        (ca_what, cert_what): (&str, &str),
        now: SystemTime,
    ) -> Result<NodeCerts, CertError> {
        let ca = check_ca(&mut cas, ca_what, now)?;
        let leaf = parse(&chain[0], cert_what)?;
        check_dates(&leaf, cert_what, now)?;
        let node = identity_in(&leaf, cert_what)?;
        let not_after = not_after_of(&leaf);
        drop(leaf);

        // The same verifiers the handshakes use: the certificate must pass as a client and as a
        // server, under its own identity.
        let roots =
            root_store(&ca).map_err(|reason| CertError::Parse { what: ca_what.into(), reason })?;
        let unix_now = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
        );
        let not_accepted = |e: rustls::Error| CertError::NotIssuedByCa {
            what: cert_what.into(),
            reason: e.to_string(),
        };
        client_verifier(roots.clone())
            .map_err(|reason| CertError::Parse { what: ca_what.into(), reason })?
            .verify_client_cert(&chain[0], &chain[1..], unix_now)
            .map_err(not_accepted)?;
        let name = ServerName::try_from(identity_name(node))
            .map_err(|e| CertError::Parse { what: cert_what.into(), reason: e.to_string() })?;
        server_verifier(roots)
            .map_err(|reason| CertError::Parse { what: ca_what.into(), reason })?
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], unix_now)
            .map_err(not_accepted)?;

        check_key(&chain, &key, cert_what)?;

        Ok(NodeCerts { inner: Arc::new(NodeCertsInner { ca, chain, key, node, not_after }) })
    }

    /// The node these certificates identify.
    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }

    /// When the node certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.inner.not_after
    }

    pub(crate) fn ca(&self) -> &CertificateDer<'static> {
        &self.inner.ca
    }

    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.inner.chain.clone()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.inner.key.clone_key()
    }
}

pub(crate) fn root_store(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    Ok(Arc::new(roots))
}

pub(crate) fn client_verifier(
    roots: Arc<RootCertStore>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crate::tls::provider())
        .build()
        .map_err(|e| e.to_string())
}

pub(crate) fn server_verifier(
    roots: Arc<RootCertStore>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let v =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, crate::tls::provider())
            .build()
            .map_err(|e| e.to_string())?;
    Ok(v)
}

/// When a generated certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// From a minute ago (tolerating small clock differences between machines) for `length`.
    pub fn starting_now(length: Duration) -> Validity {
        let now = SystemTime::now();
        let start = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        Validity { not_before: start, not_after: now + length }
    }
}

/// A cluster certificate authority: its certificate and key, able to issue node certificates.
pub struct CertAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

/// A node certificate and key, PEM encoded, as [`CertAuthority::issue`] returns them.
#[derive(Clone)]
pub struct IssuedCert {
    /// The node.
    pub node: NodeId,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS #8 PEM). Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").field("node", &self.node).finish_non_exhaustive()
    }
}

fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        CertError::Generate {
            what: "a serial number".into(),
            source: rcgen::Error::RingUnspecified,
        }
    })?;
    // A positive INTEGER without a leading zero byte.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn generate_err(what: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Generate { what: what.to_string(), source }
}

impl CertAuthority {
    /// A new CA with a fresh ECDSA P-256 key, valid for [`DEFAULT_CA_VALIDITY`].
    pub fn generate() -> Result<CertAuthority, CertError> {
        Self::generate_with(Validity::starting_now(DEFAULT_CA_VALIDITY))
    }

    /// A new CA valid for `validity`.
    pub fn generate_with(validity: Validity) -> Result<CertAuthority, CertError> {
        let key = KeyPair::generate().map_err(generate_err("the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "raftkit cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(generate_err("the CA certificate"))?;
        Ok(CertAuthority { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// A CA from its PEM certificate and key (as [`generate_cluster`] writes them).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertAuthority, CertError> {
        let ca = pem_certs(cert_pem.as_bytes(), "the CA certificate")?;
        let parsed = parse(&ca[0], "the CA certificate")?;
        if !parsed.is_ca() {
            return Err(CertError::NotACa { what: "the CA certificate".into() });
        }
        check_dates(&parsed, "the CA certificate", SystemTime::now())?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CertError::Pem { what: "the CA key".into(), reason: e.to_string() })?;
        if parsed.public_key().subject_public_key.data.as_ref()
            != rcgen::PublicKeyData::der_bytes(&key)
        {
            return Err(CertError::KeyMismatch {
                what: "the CA certificate".into(),
                reason: "the key's public half is not the certificate's".into(),
            });
        }
        drop(parsed);
        let issuer = Issuer::from_ca_cert_der(&ca[0], key)
            .map_err(generate_err("an issuer from the CA certificate"))?;
        Ok(CertAuthority { cert_pem: cert_pem.to_string(), issuer })
    }

    /// Loads `ca.crt` and `ca.key` from `dir`, the CA's directory (`<out>/ca`).
    pub fn load_from_dir(dir: impl AsRef<Path>) -> Result<CertAuthority, CertError> {
        let dir = dir.as_ref();
        let text = |p: PathBuf| -> Result<String, CertError> {
            fs::read_to_string(&p).map_err(|source| CertError::Io { path: p, source })
        };
        Self::from_pem(&text(dir.join(CA_CERT_FILE))?, &text(dir.join(CA_KEY_FILE))?)
    }

    /// The CA certificate (PEM), which every node trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PKCS #8 PEM). Secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a certificate for `node` with a fresh key, valid for [`DEFAULT_NODE_VALIDITY`].
    pub fn issue(&self, node: NodeId) -> Result<IssuedCert, CertError> {
        self.issue_with(node, Validity::starting_now(DEFAULT_NODE_VALIDITY))
    }

    /// Issues a certificate for `node` valid for `validity`.
    pub fn issue_with(&self, node: NodeId, validity: Validity) -> Result<IssuedCert, CertError> {
        let what = format!("the certificate of {node}");
        let key = KeyPair::generate().map_err(generate_err(&what))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("raftkit node {}", node.0));
        let name = identity_name(node).try_into().map_err(generate_err(&what))?;
        params.subject_alt_names = vec![SanType::DnsName(name)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node is both a TLS client (when it dials) and a server (when it accepts).
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_err(&what))?;
        Ok(IssuedCert { node, cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Issues a certificate for `node` and returns it checked and ready for a
    /// [`QuicConfig`](crate::QuicConfig) (for tests and in-process clusters).
    pub fn node_certs(&self, node: NodeId) -> Result<NodeCerts, CertError> {
        let issued = self.issue(node)?;
        NodeCerts::from_pem(&self.cert_pem, &issued.cert_pem, &issued.key_pem)
    }

    /// Issues an API client certificate named `name` (its common name, `raftkit client <name>`)
    /// with a fresh key, valid for [`DEFAULT_NODE_VALIDITY`]. It is for TLS client
    /// authentication only and carries no node identity, so it can neither join the cluster
    /// nor serve as a node.
    ///
    /// # Errors
    /// [`BadName`](CertError::BadName) (see [`issue_client_files`]), or a generation failure.
    pub fn issue_client(&self, name: &str) -> Result<IssuedClientCert, CertError> {
        files::check_client_name(name)?;
        let validity = Validity::starting_now(DEFAULT_NODE_VALIDITY);
        let what = format!("the certificate of client {name}");
        let key = KeyPair::generate().map_err(generate_err(&what))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("raftkit client {name}"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_err(&what))?;
        Ok(IssuedClientCert {
            name: name.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues an API client certificate and returns it checked (for tests and in-process use).
    pub fn client_certs(&self, name: &str) -> Result<ClientCerts, CertError> {
        let issued = self.issue_client(name)?;
        ClientCerts::from_pem(&self.cert_pem, &issued.cert_pem, &issued.key_pem)
    }
}

/// An API client certificate and key, PEM encoded, as [`CertAuthority::issue_client`] returns
/// them.
#[derive(Clone)]
pub struct IssuedClientCert {
    /// The client's name.
    pub name: String,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS #8 PEM). Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedClientCert").field("name", &self.name).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names_round_trip_and_are_canonical() {
        assert_eq!(identity_name(NodeId(42)), "node-42.raftkit");
        assert_eq!(parse_identity_name("node-42.raftkit"), Some(NodeId(42)));
        for bad in ["node-042.raftkit", "node-.raftkit", "node-4x.raftkit", "node-1.example", "x"] {
            assert_eq!(parse_identity_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn issued_certificates_load_and_carry_their_identity() {
        let ca = CertAuthority::generate().unwrap();
        let issued = ca.issue(NodeId(7)).unwrap();
        let certs = NodeCerts::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
        assert_eq!(certs.node_id(), NodeId(7));
        assert!(certs.not_after() > SystemTime::now());
        // A CA reloaded from its PEM issues certificates the original CA's certificate accepts.
        let again = CertAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let later = again.issue(NodeId(8)).unwrap();
        let certs = NodeCerts::from_pem(ca.cert_pem(), &later.cert_pem, &later.key_pem).unwrap();
        assert_eq!(certs.node_id(), NodeId(8));
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let (ca, other) = (CertAuthority::generate().unwrap(), CertAuthority::generate().unwrap());
        let issued = other.issue(NodeId(1)).unwrap();
        let err =
            NodeCerts::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap_err();
        assert!(matches!(err, CertError::NotIssuedByCa { .. }), "{err}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let ca = CertAuthority::generate().unwrap();
        let (a, b) = (ca.issue(NodeId(1)).unwrap(), ca.issue(NodeId(2)).unwrap());
        let err = NodeCerts::from_pem(ca.cert_pem(), &a.cert_pem, &b.key_pem).unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let ca = CertAuthority::generate().unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let old = Validity { not_before: now - 10 * day, not_after: now - day };
        let expired = ca.issue_with(NodeId(1), old).unwrap();
        let err =
            NodeCerts::from_pem(ca.cert_pem(), &expired.cert_pem, &expired.key_pem).unwrap_err();
        assert!(matches!(err, CertError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("expired"), "{err}");
        let future = Validity { not_before: now + day, not_after: now + 10 * day };
        let early = ca.issue_with(NodeId(1), future).unwrap();
        let err = NodeCerts::from_pem(ca.cert_pem(), &early.cert_pem, &early.key_pem).unwrap_err();
        assert!(matches!(err, CertError::NotYetValid { .. }), "{err}");
        let old_ca = CertAuthority::generate_with(old).unwrap();
        let issued = old_ca.issue(NodeId(1)).unwrap();
        let err =
            NodeCerts::from_pem(old_ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap_err();
        assert!(matches!(&err, CertError::Expired { what, .. } if what.contains("CA")), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let ca = CertAuthority::generate().unwrap();
        let issued = ca.issue(NodeId(1)).unwrap();
        for (a, b, c) in [
            ("", issued.cert_pem.as_str(), issued.key_pem.as_str()),
            (ca.cert_pem(), "", issued.key_pem.as_str()),
            (ca.cert_pem(), issued.cert_pem.as_str(), ""),
            (ca.cert_pem(), issued.key_pem.as_str(), issued.cert_pem.as_str()),
            (issued.cert_pem.as_str(), issued.cert_pem.as_str(), issued.key_pem.as_str()),
            (
                "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
                issued.cert_pem.as_str(),
                issued.key_pem.as_str(),
            ),
        ] {
            assert!(NodeCerts::from_pem(a, b, c).is_err());
        }
    }
}
