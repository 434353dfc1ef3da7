//! The on-disk layout of a cluster's certificates, and the rule that keeps the CA key off the
//! nodes.
//!
//! [`generate_cluster`] writes one directory per holder, so each machine gets only its own:
//!
//! ```text
//! <out>/ca/ca.crt, ca.key                      the CA: keep this directory offline
//! <out>/node-<id>/ca.crt, node.crt, node.key   node <id>'s directory: copy it to that node only
//! <out>/<client>/ca.crt, client.crt, client.key  an API client (issue_client_files)
//! ```
//!
//! A node's directory never holds the CA key, and loading refuses one that does
//! ([`CertError::CaKeyPresent`]): whoever compromises a node holding the CA key could mint any
//! node identity.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use raftkit::NodeId;
use rustls::pki_types::CertificateDer;

use super::{CertAuthority, CertError, parse};

/// The CA's directory under a cluster directory.
pub const CA_DIR: &str = "ca";
/// The CA certificate's file name (in the CA's directory and in every node's and client's).
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name, in the CA's directory only.
pub const CA_KEY_FILE: &str = "ca.key";
/// A node's certificate file name, in its own directory.
pub const NODE_CERT_FILE: &str = "node.crt";
/// A node's private key file name, in its own directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// An API client's certificate file name, in its own directory.
pub const CLIENT_CERT_FILE: &str = "client.crt";
/// An API client's private key file name, in its own directory.
pub const CLIENT_KEY_FILE: &str = "client.key";

/// The name of `node`'s directory under a cluster directory: `node-<id>`.
pub fn node_dir(node: NodeId) -> String {
    format!("node-{}", node.0)
}

/// The files of one node, as [`generate_cluster`] and [`issue_node_files`] write them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFiles {
    /// The node.
    pub node: NodeId,
    /// Its directory (`<out>/node-<id>`): what to copy to the node, and pass to
    /// [`NodeCerts::load_from_dir`](super::NodeCerts::load_from_dir).
    pub dir: PathBuf,
    /// The CA certificate, a copy of the CA's.
    pub ca_cert: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// The node's private key (readable by its owner only).
    pub key: PathBuf,
}

/// The files of one API client, as [`issue_client_files`] writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFiles {
    /// Its directory (`<out>/<name>`), for
    /// [`ClientCerts::load_from_dir`](super::ClientCerts::load_from_dir).
    pub dir: PathBuf,
    /// The CA certificate, a copy of the CA's.
    pub ca_cert: PathBuf,
    /// The client's certificate.
    pub cert: PathBuf,
    /// The client's private key (readable by its owner only).
    pub key: PathBuf,
}

/// What [`generate_cluster`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFiles {
    /// The CA's directory (`<out>/ca`), for [`CertAuthority::load_from_dir`].
    pub ca_dir: PathBuf,
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The CA key: keep it offline.
    pub ca_key: PathBuf,
    /// Each node's directory and files.
    pub nodes: Vec<NodeFiles>,
}

/// Creates a cluster CA in `<out>/ca` (`ca.crt`, `ca.key`) and, for each of `nodes`, a directory
/// `<out>/node-<id>` holding `ca.crt`, `node.crt` and `node.key`: everything that node needs and
/// nothing else (no CA key). Directories are created as needed; keys are written readable by
/// the owner only.
///
/// # Errors
/// [`Exists`](CertError::Exists) if `out` already holds a CA or one of the nodes' directories (a
/// new CA would orphan every certificate the old one issued); [`Io`](CertError::Io) if a file
/// cannot be written.
pub fn generate_cluster(
    out: impl AsRef<Path>,
    nodes: &[NodeId],
) -> Result<ClusterFiles, CertError> {
    let out = out.as_ref();
    let ca_dir = out.join(CA_DIR);
    let mut taken = vec![ca_dir.clone()];
    taken.extend(nodes.iter().map(|n| out.join(node_dir(*n))));
    if let Some(p) = taken.iter().find(|p| p.exists()) {
        return Err(CertError::Exists { path: p.clone() });
    }
    let ca = CertAuthority::generate()?;
    let mut files = ClusterFiles {
        ca_cert: ca_dir.join(CA_CERT_FILE),
        ca_key: ca_dir.join(CA_KEY_FILE),
        ca_dir,
        nodes: Vec::new(),
    };
    // Node directories first and the CA last: a half-finished run never leaves a CA behind that
    // the `Exists` check would then refuse to replace without its nodes.
    for n in nodes {
        files.nodes.push(write_node_files(out, &ca, *n)?);
    }
    create_dir(&files.ca_dir)?;
    write_file(&files.ca_key, ca.key_pem().as_bytes(), true)?;
    write_file(&files.ca_cert, ca.cert_pem().as_bytes(), false)?;
    Ok(files)
}

/// Issues a certificate for `node` with the CA in `<out>/ca` and writes `<out>/node-<id>`
/// (`ca.crt`, `node.crt`, `node.key`), for a node added to an existing cluster.
///
/// # Errors
/// [`Exists`](CertError::Exists) if the node's directory already exists; the CA's load errors.
pub fn issue_node_files(out: impl AsRef<Path>, node: NodeId) -> Result<NodeFiles, CertError> {
    let out = out.as_ref();
    let dir = out.join(node_dir(node));
    if dir.exists() {
        return Err(CertError::Exists { path: dir });
    }
    let ca = CertAuthority::load_from_dir(out.join(CA_DIR))?;
    write_node_files(out, &ca, node)
}

/// Issues an API client certificate named `name` with the CA in `<out>/ca` and writes
/// `<out>/<name>` (`ca.crt`, `client.crt`, `client.key`). Such a certificate authenticates a
/// client to an API served with
/// [`NodeCerts::https_server_config`](super::NodeCerts::https_server_config); it carries no node
/// identity, so it cannot join the cluster.
///
/// # Errors
/// [`BadName`](CertError::BadName) unless `name` is 1 to 64 of `[A-Za-z0-9_-]`, not `ca` and not
/// starting with `node-`; [`Exists`](CertError::Exists) if the directory exists; the CA's load
/// errors.
pub fn issue_client_files(out: impl AsRef<Path>, name: &str) -> Result<ClientFiles, CertError> {
    let out = out.as_ref();
    check_client_name(name)?;
    let dir = out.join(name);
    if dir.exists() {
        return Err(CertError::Exists { path: dir });
    }
    let ca = CertAuthority::load_from_dir(out.join(CA_DIR))?;
    let issued = ca.issue_client(name)?;
    create_dir(&dir)?;
    let files = ClientFiles {
        ca_cert: dir.join(CA_CERT_FILE),
        cert: dir.join(CLIENT_CERT_FILE),
        key: dir.join(CLIENT_KEY_FILE),
        dir,
    };
    write_file(&files.key, issued.key_pem.as_bytes(), true)?;
    write_file(&files.cert, issued.cert_pem.as_bytes(), false)?;
    write_file(&files.ca_cert, ca.cert_pem().as_bytes(), false)?;
    Ok(files)
}

pub(super) fn check_client_name(name: &str) -> Result<(), CertError> {
    let bad = |reason: &str| Err(CertError::BadName { name: name.into(), reason: reason.into() });
    if name.is_empty() || name.len() > 64 {
        return bad("it must be 1 to 64 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return bad("only letters, digits, '-' and '_' are allowed");
    }
    if name == CA_DIR || name.starts_with("node-") {
        return bad("`ca` and `node-…` are the CA's and the nodes' directories");
    }
    Ok(())
}

fn write_node_files(out: &Path, ca: &CertAuthority, node: NodeId) -> Result<NodeFiles, CertError> {
    let issued = ca.issue(node)?;
    let dir = out.join(node_dir(node));
    create_dir(&dir)?;
    let files = NodeFiles {
        node,
        ca_cert: dir.join(CA_CERT_FILE),
        cert: dir.join(NODE_CERT_FILE),
        key: dir.join(NODE_KEY_FILE),
        dir,
    };
    write_file(&files.key, issued.key_pem.as_bytes(), true)?;
    write_file(&files.cert, issued.cert_pem.as_bytes(), false)?;
    write_file(&files.ca_cert, ca.cert_pem().as_bytes(), false)?;
    Ok(files)
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.into(), source })
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_path_buf(), source };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// The largest file the CA-key scan reads: PEM keys are a few kilobytes.
const MAX_SCANNED_BYTES: u64 = 64 * 1024;

/// Refuses certificates loaded from `dirs` if any of them holds a `ca.key`, or any file there
/// holds the private key of `ca` under another name.
///
/// A node (or client) needs the CA certificate only; with the CA key next to its own, whoever
/// compromises it can issue certificates for any node identity.
pub(super) fn refuse_ca_key(
    dirs: &[&Path],
    ca: Option<&CertificateDer<'_>>,
) -> Result<(), CertError> {
    let ca_public = match ca {
        Some(ca) => {
            Some(parse(ca, "the CA certificate")?.public_key().subject_public_key.data.to_vec())
        }
        None => None,
    };
    let mut seen: Vec<&Path> = Vec::new();
    for dir in dirs {
        if seen.contains(dir) {
            continue;
        }
        seen.push(dir);
        let by_name = dir.join(CA_KEY_FILE);
        if fs::symlink_metadata(&by_name).is_ok() {
            return Err(CertError::CaKeyPresent { path: by_name });
        }
        let Some(ca_public) = &ca_public else { continue };
        // Unreadable directories and files cannot leak the key to this process: skip them.
        let Ok(entries) =
            fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
        else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::metadata(&path) else { continue };
            if !meta.is_file() || meta.len() > MAX_SCANNED_BYTES {
                continue;
            }
            let Ok(text) = fs::read_to_string(&path) else { continue };
            if !text.contains("PRIVATE KEY-----") {
                continue;
            }
            let Ok(key) = rcgen::KeyPair::from_pem(&text) else { continue };
            if rcgen::PublicKeyData::der_bytes(&key) == ca_public.as_slice() {
                return Err(CertError::CaKeyPresent { path });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{ClientCerts, NodeCerts};
    use super::*;

    #[test]
    fn cluster_files_are_written_loaded_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let files = generate_cluster(dir.path(), &ids).unwrap();
        assert_eq!(files.nodes.len(), 3);
        for n in &files.nodes {
            assert_eq!(n.dir, dir.path().join(node_dir(n.node)));
            assert_eq!(NodeCerts::load_from_dir(&n.dir, n.node).unwrap().node_id(), n.node);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in files.nodes.iter().map(|n| &n.key).chain([&files.ca_key]) {
                let mode = fs::metadata(key).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{} is readable by others", key.display());
            }
        }
        // Another node's directory: the certificate is for the wrong node.
        let err = NodeCerts::load_from_dir(dir.path().join("node-2"), NodeId(1)).unwrap_err();
        assert!(matches!(err, CertError::WrongNode { expected: NodeId(1), found: NodeId(2) }));
        // Missing: the message names the file.
        fs::create_dir(dir.path().join("node-9")).unwrap();
        let err = NodeCerts::load_from_dir(dir.path().join("node-9"), NodeId(9)).unwrap_err();
        assert!(matches!(err, CertError::Io { .. }));
        assert!(err.to_string().contains("node-9/ca.crt"), "{err}");
        fs::remove_dir(dir.path().join("node-9")).unwrap();
        // Refuses to overwrite; adds a node with the existing CA.
        let err = generate_cluster(dir.path(), &[NodeId(4)]).unwrap_err();
        assert!(matches!(err, CertError::Exists { .. }), "{err}");
        let four = issue_node_files(dir.path(), NodeId(4)).unwrap();
        assert_eq!(NodeCerts::load_from_dir(&four.dir, NodeId(4)).unwrap().node_id(), NodeId(4));
        assert!(matches!(issue_node_files(dir.path(), NodeId(4)), Err(CertError::Exists { .. })));
    }

    /// Security: the CA key must be on no node. Old code wrote `ca.key` into the one directory
    /// every node loaded from.
    #[test]
    fn node_directories_hold_no_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_cluster(dir.path(), &[NodeId(1), NodeId(2)]).unwrap();
        assert_eq!(files.ca_key, dir.path().join("ca").join("ca.key"));
        for n in &files.nodes {
            let mut names: Vec<String> = fs::read_dir(&n.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["ca.crt", "node.crt", "node.key"], "{}", n.dir.display());
        }
        let client = issue_client_files(dir.path(), "client").unwrap();
        assert!(!client.dir.join(CA_KEY_FILE).exists());
        ClientCerts::load_from_dir(&client.dir).unwrap();
        for bad in ["", "ca", "node-1", "a/b", ".."] {
            assert!(matches!(
                issue_client_files(dir.path(), bad),
                Err(CertError::BadName { .. } | CertError::Exists { .. })
            ));
        }
    }

    /// Security: a node refuses to start from a directory where it can read the CA key, whether
    /// it is called `ca.key` or not; the error names the file.
    #[test]
    fn a_certificate_directory_holding_the_ca_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_cluster(dir.path(), &[NodeId(1)]).unwrap();
        let node = &files.nodes[0];
        // The old layout: everything in one directory.
        let planted = node.dir.join(CA_KEY_FILE);
        fs::copy(&files.ca_key, &planted).unwrap();
        let err = NodeCerts::load_from_dir(&node.dir, NodeId(1)).unwrap_err();
        assert!(matches!(&err, CertError::CaKeyPresent { path } if *path == planted), "{err}");
        assert!(err.to_string().contains(&planted.display().to_string()), "{err}");
        // Explicit files are checked the same way.
        let err = NodeCerts::load(&node.ca_cert, &node.cert, &node.key).unwrap_err();
        assert!(matches!(err, CertError::CaKeyPresent { .. }), "{err}");
        // Renamed, it is still the CA's key.
        let renamed = node.dir.join("backup.pem");
        fs::rename(&planted, &renamed).unwrap();
        let err = NodeCerts::load_from_dir(&node.dir, NodeId(1)).unwrap_err();
        assert!(matches!(&err, CertError::CaKeyPresent { path } if *path == renamed), "{err}");
        // Without it the node loads; its own key is not mistaken for the CA's.
        fs::remove_file(&renamed).unwrap();
        NodeCerts::load_from_dir(&node.dir, NodeId(1)).unwrap();
        // The CA directory itself is the extreme case: a node pointed there is refused.
        let err = NodeCerts::load(&files.ca_cert, &node.cert, &node.key).unwrap_err();
        assert!(matches!(err, CertError::CaKeyPresent { .. }), "{err}");
    }
}
