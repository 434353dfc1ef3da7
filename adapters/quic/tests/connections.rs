//! Guards connection management: one connection per pair of nodes even when they dial each
//! other at once; fail-fast sends and backoff for a dead peer; following a peer that moved or
//! restarted; cutting off a peer removed from the address book; and refused frames (oversized,
//! malformed) counted without harming the connection.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{eventually, node, node_with, numbered, recv, until_delivered};
use raftkit::{
    AppendEntries, Entry, LogId, LogIndex, Message, MessageBody, Network, NetworkErrorKind, NodeId,
    Term,
};
use raftkit_quic::{AddressBook, CertAuthority, QuicConfig, QuicNetwork};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossed_dials_leave_one_connection_per_pair() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(node(&ca, id, &book).await);
    }
    // Everyone dials everyone at the same moment, several times over.
    for round in 0..5u64 {
        let mut sends = Vec::new();
        for n in &nodes {
            for to in ids.into_iter().filter(|to| *to != n.net.node_id()) {
                let net = n.net.clone();
                sends.push(tokio::spawn(async move { net.send(to, vec![numbered(round)]).await }));
            }
        }
        for s in sends {
            let _ = s.await;
        }
    }
    // Whatever crossed, each node ends with exactly one connection to each of the two others,
    // and it carries traffic both ways.
    let settled = eventually(Duration::from_secs(10), || {
        nodes.iter().all(|n| n.net.stats().connections_open == 2)
    })
    .await;
    let open: Vec<u64> = nodes.iter().map(|n| n.net.stats().connections_open).collect();
    assert!(settled, "connections per node: {open:?}");
    for i in 0..nodes.len() {
        for j in 0..nodes.len() {
            if i != j {
                let from = nodes[i].net.clone();
                let to = nodes[j].net.node_id();
                let m = until_delivered(&from, to, &mut nodes[j].rx).await;
                assert_eq!(m.from, from.node_id());
            }
        }
    }
    let open: Vec<u64> = nodes.iter().map(|n| n.net.stats().connections_open).collect();
    assert_eq!(open, [2, 2, 2]);
    for n in &nodes {
        for to in ids.into_iter().filter(|to| *to != n.net.node_id()) {
            assert!(n.net.is_connected(to));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_fails_fast_and_is_retried_after_a_backoff() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    // A socket that swallows every packet: the handshake can only time out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    book.insert(NodeId(2), silent.local_addr().unwrap());
    let mut live = node(&ca, NodeId(3), &book).await;
    let a = node_with(&ca, NodeId(1), &book, |c| {
        c.connect_timeout = Duration::from_millis(300);
        c.backoff_min = Duration::from_millis(200);
        c.backoff_max = Duration::from_millis(400);
    })
    .await;

    // The first send waits for the handshake, up to the connect timeout, and fails.
    let first =
        tokio::time::timeout(Duration::from_secs(5), a.net.send(NodeId(2), vec![numbered(1)]))
            .await
            .expect("bounded by the connect timeout");
    assert_eq!(first.unwrap_err().kind(), NetworkErrorKind::Timeout);
    assert_eq!(a.net.stats().dial_failures, 1);
    // While backing off, sends fail at once without dialing again.
    let refused_before = a.net.stats().sends_refused;
    let second =
        tokio::time::timeout(Duration::from_secs(1), a.net.send(NodeId(2), vec![numbered(2)]))
            .await
            .expect("a send during backoff returns at once");
    assert_eq!(second.unwrap_err().kind(), NetworkErrorKind::Unreachable);
    assert_eq!(a.net.stats().dial_failures, 1, "dialed again during the backoff");
    assert_eq!(a.net.stats().sends_refused, refused_before + 1);
    // The dead peer does not hold up a live one.
    until_delivered(&a.net, NodeId(3), &mut live.rx).await;
    // After the backoff, the next send tries again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let third = a.net.send(NodeId(2), vec![numbered(3)]).await;
    assert!(third.is_err());
    assert_eq!(a.net.stats().dial_failures, 2);
    // Unknown peers fail at once too.
    let err = a.net.send(NodeId(77), vec![numbered(4)]).await.unwrap_err();
    assert_eq!(err.kind(), NetworkErrorKind::Unreachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_moves_is_followed_through_the_address_book() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let a = node(&ca, NodeId(1), &book).await;
    let mut old = node(&ca, NodeId(2), &book).await;
    until_delivered(&a.net, NodeId(2), &mut old.rx).await;
    // Node 2 comes up elsewhere (same identity) and the book is updated at runtime.
    let mut new = node(&ca, NodeId(2), &book).await;
    assert_ne!(book.get(NodeId(2)), Some(old.net.local_addr()));
    until_delivered(&a.net, NodeId(2), &mut new.rx).await;
    a.net.send(NodeId(2), vec![numbered(42)]).await.unwrap();
    loop {
        let m = recv(&mut new.rx, Duration::from_secs(5)).await.expect("the moved node hears us");
        if common::number(&m.message) == Some(42) {
            break;
        }
    }
    while let Some(m) = recv(&mut old.rx, Duration::from_millis(200)).await {
        assert_ne!(common::number(&m.message), Some(42), "the old address still got traffic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_on_the_same_port_is_reconnected() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let a = node(&ca, NodeId(1), &book).await;
    let mut b = node(&ca, NodeId(2), &book).await;
    until_delivered(&a.net, NodeId(2), &mut b.rx).await;
    let port = b.net.local_addr();
    b.net.shutdown().await;
    // A handle to the old network outlives its shutdown (as an engine handle held elsewhere
    // would); the port must be free all the same, as after a process exit.
    let _still_held = b;
    let mut rebound = None;
    for _ in 0..100 {
        let config = QuicConfig::new(NodeId(2), port, ca.node_certs(NodeId(2)).unwrap())
            .with_addresses(book.clone());
        if let Ok(net) = QuicNetwork::bind(config) {
            rebound = Some(net);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let net = rebound.expect("rebind the same port");
    let (inbox, mut rx) = raftkit::Inbox::channel(1024);
    net.start(inbox).await.unwrap();
    let m = until_delivered(&a.net, NodeId(2), &mut rx).await;
    assert_eq!(m.from, NodeId(1));
    assert!(a.net.stats().reconnects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_frames_are_counted_and_the_connection_survives() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let limit = 64 << 10;
    let small = |c: &mut QuicConfig| {
        c.max_frame_bytes = limit;
        c.large_message_bytes = limit / 2;
    };
    let a = node_with(&ca, NodeId(1), &book, small).await;
    let mut b = node_with(&ca, NodeId(2), &book, small).await;
    until_delivered(&a.net, NodeId(2), &mut b.rx).await;
    let open = b.net.stats().connections_open;

    // Oversized (refused on its length prefix), malformed, of an unknown codec version, empty.
    // The sender may or may not learn of the refusal (the peer's transport can acknowledge the
    // bytes before the peer reads them); the receiver's counters tell.
    let mut big = vec![0u8; limit + 1];
    big[0] = raftkit::codec::VERSION;
    let mut soup = vec![raftkit::codec::VERSION];
    soup.extend((0..64u8).map(|i| i.wrapping_mul(37) | 0x80));
    for bad in [&big[..], &soup[..], &[99, 1, 2, 3], &[]] {
        let _ = a.net.send_raw_frame(NodeId(2), bad).await;
    }
    // A well-formed raw frame goes through: the refusals above were about the bytes.
    let good = raftkit::codec::encode_message(&numbered(5)).unwrap();
    a.net.send_raw_frame(NodeId(2), &good).await.unwrap();

    let counted = eventually(Duration::from_secs(5), || {
        let s = b.net.stats();
        (s.frames_oversized, s.frames_malformed) == (1, 3)
    })
    .await;
    assert!(counted, "{:?}", b.net.stats());
    assert!(a.net.is_connected(NodeId(2)) && b.net.is_connected(NodeId(1)));
    assert_eq!(b.net.stats().connections_open, open, "the connection was replaced");
    a.net.send(NodeId(2), vec![numbered(6)]).await.unwrap();
    let mut got = Vec::new();
    while !got.contains(&6) {
        let m = recv(&mut b.rx, Duration::from_secs(5)).await.expect("traffic continues");
        got.extend(common::number(&m.message));
    }
    assert!(got.contains(&5));

    // A message over the limit is not sent at all, and the sender says so.
    let huge = Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::new(1, 1),
            entries: vec![Entry::normal(LogId::new(1, 2), Bytes::from(vec![7u8; limit]))],
            leader_commit: LogIndex(1),
        }),
    };
    let err = a.net.send(NodeId(2), vec![huge]).await.unwrap_err();
    assert_eq!(err.kind(), NetworkErrorKind::InvalidFrame);
    assert_eq!(a.net.stats().frames_unsendable, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_and_small_ones_all_arrive_intact() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let lane = |c: &mut QuicConfig| c.large_message_bytes = 32 << 10;
    let a = node_with(&ca, NodeId(1), &book, lane).await;
    let mut b = node_with(&ca, NodeId(2), &book, lane).await;
    until_delivered(&a.net, NodeId(2), &mut b.rx).await;
    let append = |i: u64, size: usize| Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::new(1, i),
            entries: vec![Entry::normal(LogId::new(1, i + 1), Bytes::from(vec![i as u8; size]))],
            leader_commit: LogIndex(0),
        }),
    };
    // Large ones (own streams), small appends (replication lane) and heartbeats (control
    // lane), interleaved.
    let mut sent = Vec::new();
    for i in 0..20u64 {
        let m = if i % 4 == 0 { append(i, 200 << 10) } else { append(i, 100) };
        sent.push(m.clone());
        a.net.send(NodeId(2), vec![m, numbered(i)]).await.unwrap();
    }
    let mut appends = Vec::new();
    let mut beats = Vec::new();
    while appends.len() < sent.len() || beats.len() < 20 {
        let m = recv(&mut b.rx, Duration::from_secs(10)).await.expect("everything arrives");
        match common::number(&m.message) {
            Some(n) if n < 1_000_000 => beats.push(n),
            Some(_) => {}
            None => appends.push(m.message),
        }
    }
    assert_eq!(beats, (0..20).collect::<Vec<_>>(), "control messages reordered");
    // Small appends keep their order; large ones may overtake or fall behind them.
    let small: Vec<&Message> =
        sent.iter().enumerate().filter(|(i, _)| i % 4 != 0).map(|(_, m)| m).collect();
    let got_small: Vec<&Message> = appends.iter().filter(|m| small.contains(m)).collect();
    assert_eq!(got_small, small, "replication messages reordered or altered");
    for m in &sent {
        assert!(appends.contains(m), "a message was lost or altered");
    }
    assert_eq!(appends.len(), sent.len(), "duplicates");
}

#[test]
fn bind_errors_name_the_problem() {
    let ca = CertAuthority::generate().unwrap();
    let config =
        || QuicConfig::new(NodeId(1), common::loopback(), ca.node_certs(NodeId(1)).unwrap());
    // Outside a runtime.
    let err = QuicNetwork::bind(config()).unwrap_err();
    assert!(matches!(err, raftkit_quic::QuicError::NoRuntime), "{err}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // An invalid field.
        let mut bad = config();
        bad.keep_alive = bad.idle_timeout * 2;
        let err = QuicNetwork::bind(bad).unwrap_err();
        assert!(err.to_string().contains("`keep_alive`"), "{err}");
        // Certificates of another node.
        let mut other = config();
        other.certs = ca.node_certs(NodeId(2)).unwrap();
        let err = QuicNetwork::bind(other).unwrap_err();
        assert!(err.to_string().contains("`certs`"), "{err}");
        // A port in use.
        let first = QuicNetwork::bind(config()).unwrap();
        let mut taken = config();
        taken.listen = first.local_addr();
        let err = QuicNetwork::bind(taken).unwrap_err();
        assert!(matches!(err, raftkit_quic::QuicError::Bind { .. }), "{err}");
        assert!(err.to_string().contains(&first.local_addr().to_string()), "{err}");
    });
}

/// A peer removed from a node's address book is cut off at once, even over a connection that
/// was already open: sends to it fail, and what it sends no longer reaches the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_removed_from_the_address_book_is_cut_off() {
    let ca = CertAuthority::generate().unwrap();
    let (book_a, book_b) = (AddressBook::new(), AddressBook::new());
    let mut a = node(&ca, NodeId(1), &book_a).await;
    let mut b = node(&ca, NodeId(2), &book_b).await;
    book_a.insert(NodeId(2), b.net.local_addr());
    book_b.insert(NodeId(1), a.net.local_addr());
    until_delivered(&a.net, NodeId(2), &mut b.rx).await;
    until_delivered(&b.net, NodeId(1), &mut a.rx).await;

    book_a.remove(NodeId(2));
    let err = a.net.send(NodeId(2), vec![numbered(7)]).await.unwrap_err();
    assert_eq!(err.kind(), NetworkErrorKind::Unreachable);
    // Node 2 keeps trying (it still has node 1 in its book); none of it gets through.
    for i in 0..20 {
        let _ = b.net.send(NodeId(1), vec![numbered(500 + i)]).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    while let Some(m) = recv(&mut a.rx, Duration::from_millis(300)).await {
        assert_ne!(m.from, NodeId(2), "a removed peer's message reached the node: {m:?}");
    }
    // Put back, it is heard again.
    book_a.insert(NodeId(2), b.net.local_addr());
    let m = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let _ = b.net.send(NodeId(1), vec![numbered(900)]).await;
            if let Some(m) = recv(&mut a.rx, Duration::from_millis(200)).await {
                if m.from == NodeId(2) {
                    return m;
                }
            }
        }
    })
    .await
    .expect("the re-added peer is heard again");
    assert_eq!(m.from, NodeId(2));
}
