//! Guards the limits on what a peer, or anyone on the network, can make a node hold: a frame
//! body must arrive within `frame_read_timeout`, a connection buffers at most
//! `max_buffered_bytes` of frames, unknown clients prove their address (QUIC Retry) before a
//! handshake, and a flood of connection attempts is handled at most
//! `max_concurrent_handshakes` at a time while the cluster's own links keep working.

mod common;

use std::time::Duration;

use common::{eventually, frame, header, node, node_with, numbered, raw_client, recv};
use raftkit::{Network, NodeId};
use raftkit_quic::certs::identity_name;
use raftkit_quic::{AddressBook, CertAuthority};

const TOO_SLOW: u32 = 4;
const OVER_BUDGET: u32 = 5;

/// The code a stream was stopped with (`stopped`: its `SendStream::stopped()`, which does not
/// borrow it, so the caller may keep writing meanwhile), waiting up to `within`.
async fn stop_code(
    stopped: impl Future<Output = Result<Option<quinn::VarInt>, quinn::StoppedError>>,
    within: Duration,
) -> Option<u32> {
    match tokio::time::timeout(within, stopped).await {
        Ok(Ok(Some(code))) => Some(code.into_inner() as u32),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_frames_are_cut_off_and_buffered_bytes_are_bounded() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let mut a = node_with(&ca, NodeId(1), &book, |c| {
        c.max_frame_bytes = 200_000;
        c.large_message_bytes = 100_000;
        c.max_buffered_bytes = 300_000;
        c.frame_read_timeout = Duration::from_secs(2);
    })
    .await;
    book.insert(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let three = ca.issue(NodeId(3)).unwrap();
    let client = raw_client(ca.cert_pem(), &three.cert_pem, &three.key_pem);
    let conn = client
        .connect(book.get(NodeId(1)).unwrap(), &identity_name(NodeId(1)))
        .unwrap()
        .await
        .expect("handshake");

    // Stream A announces a 200,000 byte frame and sends only a little of it.
    let mut slow = conn.open_uni().await.unwrap();
    slow.write_all(&header(NodeId(3), 1)).await.unwrap();
    slow.write_all(&200_000u32.to_be_bytes()).await.unwrap();
    slow.write_all(&[0u8; 1000]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || a.net.stats().bytes_buffered == 200_000).await,
        "the frame did not reserve its length"
    );

    // Stream B's frame does not fit in what is left of the budget: refused at once.
    let mut greedy = conn.open_uni().await.unwrap();
    greedy.write_all(&header(NodeId(3), 1)).await.unwrap();
    greedy.write_all(&200_000u32.to_be_bytes()).await.unwrap();
    assert_eq!(stop_code(greedy.stopped(), Duration::from_secs(10)).await, Some(OVER_BUDGET));
    assert_eq!(a.net.stats().frames_over_budget, 1);

    // Stream A keeps trickling, but its deadline passes: its stream is stopped and the budget
    // freed.
    let stopped = stop_code(slow.stopped(), Duration::from_secs(20));
    let trickle = async {
        for _ in 0..100 {
            if slow.write_all(&[0u8; 10]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (_, code) = tokio::join!(trickle, stopped);
    assert_eq!(code, Some(TOO_SLOW));
    assert_eq!(a.net.stats().frames_too_slow, 1);
    assert!(eventually(Duration::from_secs(5), || a.net.stats().bytes_buffered == 0).await);

    // The connection is fine: a frame sent promptly is delivered.
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&header(NodeId(3), 1)).await.unwrap();
    s.write_all(&frame(&numbered(5))).await.unwrap();
    let m = recv(&mut a.rx, Duration::from_secs(10)).await.expect("delivered");
    assert_eq!((m.from, common::number(&m.message)), (NodeId(3), Some(5)));
    assert!(a.rx.try_recv().is_err(), "a refused frame reached the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_bounded_and_the_cluster_link_survives() {
    let ca = CertAuthority::generate().unwrap();
    let rogue_ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    const LIMIT: usize = 4;
    let mut a = node_with(&ca, NodeId(1), &book, |c| {
        c.max_concurrent_handshakes = LIMIT;
        c.connect_timeout = Duration::from_secs(5);
    })
    .await;
    let b = node(&ca, NodeId(2), &book).await;
    common::until_delivered(&b.net, NodeId(1), &mut a.rx).await;
    let addr = book.get(NodeId(1)).unwrap();
    // Every client so far proved its address first.
    assert!(a.net.stats().address_validations >= 1);

    // Clients with certificates from another CA, many at once...
    let forged = rogue_ca.issue(NodeId(3)).unwrap();
    let rogue = raw_client(ca.cert_pem(), &forged.cert_pem, &forged.key_pem);
    let mut attempts = Vec::new();
    for _ in 0..100 {
        let connecting = rogue.connect(addr, &identity_name(NodeId(1))).unwrap();
        attempts.push(tokio::spawn(async move {
            if let Ok(conn) = connecting.await {
                let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
            }
        }));
    }
    // ...and clients that pass the handshake and then say nothing, each holding its attempt
    // open until the connect timeout.
    book.insert(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let three = ca.issue(NodeId(3)).unwrap();
    let silent = raw_client(ca.cert_pem(), &three.cert_pem, &three.key_pem);
    let mut silent_conns = Vec::new();
    for _ in 0..3 * LIMIT {
        silent_conns.push(silent.connect(addr, &identity_name(NodeId(1))).unwrap());
    }

    // Meanwhile the established link between nodes 1 and 2 carries traffic, and the attempts
    // being handled never exceed the limit.
    let mut peak = 0;
    for i in 0..20u64 {
        b.net.send(NodeId(1), vec![numbered(500 + i)]).await.unwrap();
        loop {
            let m = recv(&mut a.rx, Duration::from_secs(10)).await.expect("the link stalled");
            if m.from == NodeId(2) && common::number(&m.message) == Some(500 + i) {
                break;
            }
        }
        peak = peak.max(a.net.stats().handshakes_in_progress);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peak <= LIMIT as u64, "{peak} handshakes in progress");
    assert!(
        eventually(Duration::from_secs(10), || a.net.stats().handshakes_refused > 0).await,
        "more than {LIMIT} attempts at once were all taken on"
    );
    for c in silent_conns {
        if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(10), c).await {
            drop(conn);
        }
    }
    for t in attempts {
        let _ = t.await;
    }
    while let Ok(m) = a.rx.try_recv() {
        assert_ne!(m.from, NodeId(3), "a flooding client was heard: {m:?}");
    }
    // Once the flood is over, attempts are taken on again.
    assert!(
        eventually(Duration::from_secs(15), || a.net.stats().handshakes_in_progress == 0).await
    );
    let c = node(&ca, NodeId(4), &book).await;
    common::until_delivered(&c.net, NodeId(1), &mut a.rx).await;
}
