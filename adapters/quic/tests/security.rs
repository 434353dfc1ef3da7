//! Guards the security model: a peer gets nothing to the engine unless its certificate chains
//! to the cluster CA, names a node in the address book, and matches the id it claims on every
//! stream; a node that dials checks that whoever answers is the node it dialed. Refusals are
//! counted, and a node closes its connections with an application code when it shuts down.

mod common;

use std::time::Duration;

use common::{frame, header, node, numbered, raw_client, recv, until_delivered};
use raftkit::{Network, NetworkErrorKind, NodeId};
use raftkit_quic::certs::identity_name;
use raftkit_quic::{AddressBook, CertAuthority};

const QUIET: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_another_ca_cannot_join() {
    let (ca, rogue_ca) = (CertAuthority::generate().unwrap(), CertAuthority::generate().unwrap());
    let book = AddressBook::new();
    let mut a = node(&ca, NodeId(1), &book).await;
    let b = node(&ca, NodeId(2), &book).await;
    until_delivered(&b.net, NodeId(1), &mut a.rx).await;

    // A node of another cluster, listed in our book as node 3 so that only the CA can stop it.
    let rogue_book: AddressBook = book.entries().into_iter().collect();
    let rogue = node(&rogue_ca, NodeId(3), &rogue_book).await;
    book.insert(NodeId(3), rogue.net.local_addr());
    let err = rogue.net.send(NodeId(1), vec![numbered(7)]).await.unwrap_err();
    assert_eq!(err.kind(), NetworkErrorKind::Unauthenticated, "{err}");
    let err = a.net.send(NodeId(3), vec![numbered(8)]).await.unwrap_err();
    assert_eq!(err.kind(), NetworkErrorKind::Unauthenticated, "{err}");

    // A client that trusts our CA (its certificate is no secret) but holds a certificate from
    // another CA: our node's check of the client certificate is what refuses it.
    let before = a.net.stats().handshake_rejections;
    let forged = rogue_ca.issue(NodeId(3)).unwrap();
    let client = raw_client(ca.cert_pem(), &forged.cert_pem, &forged.key_pem);
    let connecting = client.connect(book.get(NodeId(1)).unwrap(), &identity_name(NodeId(1)));
    // TLS 1.3 clients finish the handshake before the server has judged their certificate, so
    // the client may get as far as writing; the server must still take nothing from it.
    if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), connecting.unwrap()).await {
        if let Ok(mut s) = conn.open_uni().await {
            let _ = s.write_all(&header(NodeId(3), 1)).await;
            let _ = s.write_all(&frame(&numbered(9))).await;
            let _ = s.finish();
        }
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        assert!(closed.is_ok(), "the forged client's connection stayed open");
    }
    let mut a = a;
    if let Some(m) = recv(&mut a.rx, QUIET).await {
        panic!("a message from outside the cluster was delivered: {m:?}");
    }
    assert!(a.net.stats().handshake_rejections > before, "the refusal was not counted");
    assert!(rogue.net.stats().handshake_rejections > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_another_node_id_is_refused() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let mut a = node(&ca, NodeId(1), &book).await;
    let _b = node(&ca, NodeId(2), &book).await;
    // Node 3 has a valid certificate and is in the book.
    book.insert(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let three = ca.issue(NodeId(3)).unwrap();
    let client = raw_client(ca.cert_pem(), &three.cert_pem, &three.key_pem);
    let addr = book.get(NodeId(1)).unwrap();
    let connect = || async {
        client.connect(addr, &identity_name(NodeId(1))).unwrap().await.expect("handshake")
    };

    // Control: claiming its own id, node 3 is heard, as node 3.
    let conn = connect().await;
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&header(NodeId(3), 1)).await.unwrap();
    s.write_all(&frame(&numbered(1))).await.unwrap();
    let m = recv(&mut a.rx, Duration::from_secs(5)).await.expect("node 3 is heard");
    assert_eq!((m.from, common::number(&m.message)), (NodeId(3), Some(1)));

    // A later stream on the same connection claiming to be node 2 closes the connection.
    let before = a.net.stats().handshake_rejections;
    let mut s2 = conn.open_uni().await.unwrap();
    s2.write_all(&header(NodeId(2), 1)).await.unwrap();
    let _ = s2.write_all(&frame(&numbered(2))).await;
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap();
    assert!(
        matches!(&err, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(2)),
        "{err}"
    );

    // A new connection whose first stream claims node 2 is refused outright.
    let conn = connect().await;
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&header(NodeId(2), 1)).await.unwrap();
    let _ = s.write_all(&frame(&numbered(3))).await;
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap();
    assert!(matches!(err, quinn::ConnectionError::ApplicationClosed(_)), "{err}");

    if let Some(m) = recv(&mut a.rx, QUIET).await {
        panic!("a frame under a false identity was delivered: {m:?}");
    }
    assert!(a.net.stats().handshake_rejections >= before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answering_for_another_id_is_refused() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let a = node(&ca, NodeId(1), &book).await;
    let mut c = node(&ca, NodeId(3), &book).await;
    // The book (wrongly, or maliciously) points node 2 at node 3.
    book.insert(NodeId(2), c.net.local_addr());
    let err = a.net.send(NodeId(2), vec![numbered(5)]).await.unwrap_err();
    assert_eq!(err.kind(), NetworkErrorKind::Unauthenticated, "{err}");
    assert!(a.net.stats().handshake_rejections > 0);
    if let Some(m) = recv(&mut c.rx, QUIET).await {
        panic!("a message for node 2 reached node 3: {m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_missing_from_the_address_book_is_refused() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let mut a = node(&ca, NodeId(1), &book).await;
    // Node 9 knows node 1, but node 1's book does not list node 9.
    let own_book: AddressBook = book.entries().into_iter().collect();
    let stranger = node(&ca, NodeId(9), &own_book).await;
    for i in 0..5 {
        let _ = stranger.net.send(NodeId(1), vec![numbered(i)]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(m) = recv(&mut a.rx, QUIET).await {
        panic!("a node outside the address book was heard: {m:?}");
    }
    assert!(a.net.stats().handshake_rejections > 0);
    // The stranger learns it was refused (and backs off rather than redialing every send).
    assert!(stranger.net.stats().handshake_rejections > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_with_an_application_code() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let mut a = node(&ca, NodeId(1), &book).await;
    book.insert(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let three = ca.issue(NodeId(3)).unwrap();
    let client = raw_client(ca.cert_pem(), &three.cert_pem, &three.key_pem);
    let addr = book.get(NodeId(1)).unwrap();
    let conn = client.connect(addr, &identity_name(NodeId(1))).unwrap().await.unwrap();
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&header(NodeId(3), 1)).await.unwrap();
    s.write_all(&frame(&numbered(1))).await.unwrap();
    recv(&mut a.rx, Duration::from_secs(5)).await.expect("connected");
    a.net.shutdown().await;
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap();
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(0));
            assert_eq!(&c.reason[..], b"shutdown");
        }
        other => panic!("closed without the shutdown code: {other}"),
    }
}
