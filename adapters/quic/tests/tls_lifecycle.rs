//! Guards certificate checks over a connection's whole life: an expired certificate is refused
//! on every new connection (no TLS session resumption skips the check), a connection is closed
//! when its peer's certificate expires, and reloaded certificates are used for new connections.

mod common;

use std::time::{Duration, SystemTime};

use common::{
    eventually, frame, header, node, node_with, numbered, raw_client, recv, until_delivered,
};
use raftkit::NodeId;
use raftkit_quic::certs::{IssuedCert, Validity, identity_name};
use raftkit_quic::{AddressBook, CertAuthority, NodeCerts};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A certificate for `node` that expires `secs` seconds from now.
fn short_lived(ca: &CertAuthority, node: NodeId, secs: u64) -> (IssuedCert, SystemTime) {
    let now = SystemTime::now();
    let not_after = now + Duration::from_secs(secs);
    let validity = Validity { not_before: now - Duration::from_secs(60), not_after };
    (ca.issue_with(node, validity).unwrap(), not_after)
}

/// Sleeps until `t` has passed by a margin (X.509 times have one-second precision).
async fn sleep_past(t: SystemTime) {
    let wait = t.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_on_reconnect() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let mut a = node(&ca, NodeId(1), &book).await;
    book.insert(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let (three, expiry) = short_lived(&ca, NodeId(3), 4);
    // A client that keeps TLS session tickets (rustls' default), as an attacker would.
    let client = raw_client(ca.cert_pem(), &three.cert_pem, &three.key_pem);
    let addr = book.get(NodeId(1)).unwrap();

    // A full handshake while the certificate is valid: heard.
    let conn = client.connect(addr, &identity_name(NodeId(1))).unwrap().await.expect("handshake");
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&header(NodeId(3), 1)).await.unwrap();
    s.write_all(&frame(&numbered(1))).await.unwrap();
    let m = recv(&mut a.rx, Duration::from_secs(5)).await.expect("node 3 is heard");
    assert_eq!(m.from, NodeId(3));
    // Session tickets (if any) follow the handshake; give them time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    conn.close(0u32.into(), b"bye");
    drop(s);

    sleep_past(expiry).await;
    // The certificate has expired: a new connection must fail its check, resumed or not.
    let before = a.net.stats().handshake_rejections;
    let attempt = async {
        let conn = client.connect(addr, &identity_name(NodeId(1))).unwrap().await?;
        if let Ok(mut s) = conn.open_uni().await {
            let _ = s.write_all(&header(NodeId(3), 1)).await;
            let _ = s.write_all(&frame(&numbered(2))).await;
            let _ = s.finish();
        }
        Err::<(), _>(conn.closed().await)
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), attempt).await;
    if let Some(m) = recv(&mut a.rx, Duration::from_millis(500)).await {
        panic!("a peer with an expired certificate was heard: {m:?}");
    }
    assert!(a.net.stats().handshake_rejections > before, "the refusal was not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_when_the_peer_certificate_expires() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let mut a = node(&ca, NodeId(1), &book).await;
    book.insert(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let (three, expiry) = short_lived(&ca, NodeId(3), 4);
    let client = raw_client(ca.cert_pem(), &three.cert_pem, &three.key_pem);
    let addr = book.get(NodeId(1)).unwrap();
    let conn = client.connect(addr, &identity_name(NodeId(1))).unwrap().await.expect("handshake");
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&header(NodeId(3), 1)).await.unwrap();
    s.write_all(&frame(&numbered(1))).await.unwrap();
    recv(&mut a.rx, Duration::from_secs(5)).await.expect("node 3 is heard");

    // Keep talking past the expiry; node 1 must close the connection with its
    // "certificate expired" code (6) soon after, and hear nothing sent after the expiry.
    let talk = async {
        for i in 2.. {
            if s.write_all(&frame(&numbered(i))).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(talk, conn.closed()).1
    })
    .await
    .expect("the connection outlived its peer's certificate");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(6)),
        "closed for another reason: {closed}"
    );
    assert!(SystemTime::now() > expiry, "closed before the certificate expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_certificates_are_used_for_new_connections() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    // Node 1 starts with a certificate about to expire.
    let (old, expiry) = short_lived(&ca, NodeId(1), 4);
    let old = NodeCerts::from_pem(ca.cert_pem(), &old.cert_pem, &old.key_pem).unwrap();
    let mut a = node_with(&ca, NodeId(1), &book, |c| c.certs = old).await;
    let mut b = node(&ca, NodeId(2), &book).await;
    until_delivered(&b.net, NodeId(1), &mut a.rx).await;

    // A certificate for another node is refused and changes nothing.
    let err = a.net.reload_certs(ca.node_certs(NodeId(2)).unwrap()).unwrap_err();
    assert!(err.to_string().contains("certs"), "{err}");
    let fresh = ca.issue(NodeId(1)).unwrap();
    a.net
        .reload_certs(NodeCerts::from_pem(ca.cert_pem(), &fresh.cert_pem, &fresh.key_pem).unwrap())
        .unwrap();

    // As a server, node 1 now presents the new certificate.
    book.insert(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let three = ca.issue(NodeId(3)).unwrap();
    let client = raw_client(ca.cert_pem(), &three.cert_pem, &three.key_pem);
    let addr = book.get(NodeId(1)).unwrap();
    let conn = client.connect(addr, &identity_name(NodeId(1))).unwrap().await.expect("handshake");
    let chain = conn.peer_identity().unwrap().downcast::<Vec<CertificateDer<'static>>>().unwrap();
    let presented = chain[0].as_ref().to_vec();
    let expected = CertificateDer::from_pem_slice(fresh.cert_pem.as_bytes()).unwrap();
    assert_eq!(presented, expected.as_ref(), "node 1 still presents its old certificate");
    conn.close(0u32.into(), b"done");

    // Once the old certificate has expired, node 2 closes the connection made with it; new
    // connections, in both directions, authenticate with the new one.
    sleep_past(expiry).await;
    assert!(
        eventually(Duration::from_secs(10), || b.net.stats().certificates_expired >= 1).await,
        "node 2 kept a connection authenticated by an expired certificate"
    );
    until_delivered(&a.net, NodeId(2), &mut b.rx).await;
    until_delivered(&b.net, NodeId(1), &mut a.rx).await;
}
