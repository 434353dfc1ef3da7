//! Guards fair delivery: every peer has its own bounded share of the node's inbound queue, so
//! a member that floods the node delays only itself; other peers' messages are all delivered,
//! interleaved with the flood, and a peer's votes and heartbeats overtake its own bulk backlog.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{eventually, frame, header, loopback, node, number, numbered, raw_client, recv};
use raftkit::{
    AppendEntries, Entry, Inbound, Inbox, LogId, LogIndex, Message, MessageBody, Network, NodeId,
    Term,
};
use raftkit_quic::certs::identity_name;
use raftkit_quic::{AddressBook, CertAuthority, QuicConfig, QuicNetwork};
use tokio::sync::mpsc;

/// Node 1 with an engine inbox of only `capacity` messages, which the test drains when it
/// chooses (a stalled engine).
async fn stalled_node(
    ca: &CertAuthority,
    book: &AddressBook,
    capacity: usize,
) -> (QuicNetwork, mpsc::Receiver<Inbound>) {
    let config = QuicConfig::new(NodeId(1), loopback(), ca.node_certs(NodeId(1)).unwrap())
        .with_addresses(book.clone());
    let net = QuicNetwork::bind(config).unwrap();
    book.insert(NodeId(1), net.local_addr());
    let (inbox, rx) = Inbox::channel(capacity);
    net.start(inbox).await.unwrap();
    (net, rx)
}

/// Everything the stalled node receives until it has been quiet for a while.
async fn drain(rx: &mut mpsc::Receiver<Inbound>) -> Vec<Inbound> {
    let mut all = Vec::new();
    while let Some(m) = recv(rx, Duration::from_secs(2)).await {
        all.push(m);
    }
    all
}

fn append(i: u64) -> Message {
    Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::new(1, i),
            entries: vec![Entry::normal(LogId::new(1, i + 1), Bytes::from(vec![1u8; 64]))],
            leader_commit: LogIndex(0),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_cannot_crowd_out_the_others() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let (net, mut rx) = stalled_node(&ca, &book, 64).await;
    let two = node(&ca, NodeId(2), &book).await;
    common::until_delivered(&two.net, NodeId(1), &mut rx).await;

    // Node 3 (a member, with a valid certificate) floods node 1 with raw frames on one stream,
    // far more than node 1's engine takes.
    book.insert(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let three = ca.issue(NodeId(3)).unwrap();
    let client = raw_client(ca.cert_pem(), &three.cert_pem, &three.key_pem);
    let conn = client
        .connect(net.local_addr(), &identity_name(NodeId(1)))
        .unwrap()
        .await
        .expect("handshake");
    let flood = tokio::spawn(async move {
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&header(NodeId(3), 1)).await.unwrap();
        let mut batch = Vec::new();
        for i in 0..20_000 {
            batch.extend_from_slice(&frame(&numbered(i)));
        }
        // Node 1 may stop reading (backpressure): this write may never finish.
        let _ = s.write_all(&batch).await;
        conn
    });
    assert!(
        eventually(Duration::from_secs(30), || net.stats().frames_received >= 500).await,
        "the flood did not arrive"
    );

    // Now node 2 sends 100 heartbeats while node 1's engine is still stalled.
    let before = net.stats().frames_received;
    for chunk in 0..10u64 {
        let batch = (0..10).map(|i| numbered(10_000_000 + chunk * 10 + i)).collect();
        two.net.send(NodeId(1), batch).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(30), || net.stats().frames_received >= before + 100).await,
        "node 2's messages were not read"
    );

    // The engine wakes up: every one of node 2's messages arrives, early, in order.
    let all = drain(&mut rx).await;
    let from_two: Vec<(usize, u64)> = all
        .iter()
        .enumerate()
        .filter(|(_, m)| m.from == NodeId(2))
        .filter_map(|(pos, m)| number(&m.message).map(|n| (pos, n)))
        .filter(|(_, n)| *n >= 10_000_000)
        .collect();
    let numbers: Vec<u64> = from_two.iter().map(|(_, n)| *n).collect();
    let expected: Vec<u64> = (10_000_000..10_000_100).collect();
    assert_eq!(numbers, expected, "node 2's messages were lost or reordered");
    let last = from_two.last().unwrap().0;
    assert!(last < 64 + 2 * 100 + 50, "node 2's last message came at position {last}");
    assert!(all.iter().any(|m| m.from == NodeId(3)), "the flood was not delivered at all");
    flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_and_heartbeats_overtake_the_same_peers_bulk_backlog() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let (net, mut rx) = stalled_node(&ca, &book, 16).await;
    let two = node(&ca, NodeId(2), &book).await;
    common::until_delivered(&two.net, NodeId(1), &mut rx).await;
    let before = net.stats().frames_received;
    // A backlog of 500 appends, then one heartbeat.
    for chunk in 0..10u64 {
        two.net.send(NodeId(1), (0..50).map(|i| append(chunk * 50 + i)).collect()).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(30), || net.stats().frames_received >= before + 500).await,
        "the appends were not read"
    );
    two.net.send(NodeId(1), vec![numbered(77)]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || net.stats().frames_received > before + 500).await,
        "the heartbeat was not read"
    );
    let all = drain(&mut rx).await;
    let heartbeat = all.iter().position(|m| number(&m.message) == Some(77));
    let heartbeat = heartbeat.expect("the heartbeat was dropped behind the appends");
    // Only what already sat in the engine's inbox (16) may come before it.
    assert!(heartbeat <= 16 + 1, "the heartbeat waited behind the backlog: position {heartbeat}");
    let appends = all.iter().filter(|m| matches!(m.message.body, MessageBody::AppendEntries(_)));
    assert_eq!(appends.count(), 500, "appends were dropped");
}
