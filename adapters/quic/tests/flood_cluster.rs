//! Guards the promise the fair inbound queue makes at the level of a whole cluster: a peer that
//! floods the leader with frames (here a node in the address book but not a Raft member, with a
//! valid certificate) cannot push out the honest members' heartbeat answers, so the leader keeps
//! its quorum (CheckQuorum on), no election happens, and writes keep committing meanwhile.
//! On a fast engine the flood is drained as fast as it arrives, so this end-to-end check also
//! passes with the old shared queue; `fairness.rs` is the deterministic test of the queue itself
//! (a stalled engine), which the old queue fails.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{frame, header, loopback, raw_client};
use raftkit::{
    AppendEntries, Config, Entry, LogId, LogIndex, Message, MessageBody, NodeId, Raft, Role, Term,
};
use raftkit_mem::{KvCommand, MemKv, MemLogStore};
use raftkit_quic::certs::identity_name;
use raftkit_quic::{AddressBook, CertAuthority, QuicConfig, QuicNetwork};

type Node = Raft<QuicNetwork, MemLogStore, MemKv>;

fn config(id: u64) -> Config {
    let mut c = Config::new(NodeId(id), [NodeId(1), NodeId(2), NodeId(3)]);
    // Generous timeouts: the test is about queueing, not about a loaded machine's scheduling.
    c.heartbeat_interval = Duration::from_millis(100);
    c.election_timeout_min = Duration::from_millis(1500);
    c.election_timeout_max = Duration::from_millis(3000);
    c.check_quorum = true;
    c.seed = id;
    c
}

/// A bulk-class frame (AppendEntries with a 1 KiB entry) from a non-member.
fn junk(i: u64) -> Vec<u8> {
    frame(&Message {
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::new(1, i),
            entries: vec![Entry::normal(LogId::new(1, i + 1), Bytes::from(vec![0xEE; 1024]))],
            leader_commit: LogIndex(0),
        }),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_does_not_cost_the_leader_its_quorum() {
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    // Node 4 may connect (it is in the book) but is not a member of the Raft cluster.
    book.insert(NodeId(4), "127.0.0.1:9".parse().unwrap());
    let mut nets = Vec::new();
    for id in 1..=3 {
        let cfg = QuicConfig::new(NodeId(id), loopback(), ca.node_certs(NodeId(id)).unwrap())
            .with_addresses(book.clone());
        let net = QuicNetwork::bind(cfg).expect("bind");
        book.insert(NodeId(id), net.local_addr());
        nets.push(net);
    }
    let mut nodes: Vec<Node> = Vec::new();
    for (i, net) in nets.into_iter().enumerate() {
        let id = i as u64 + 1;
        let node = Raft::start(config(id), net, MemLogStore::new(), MemKv::new()).await.unwrap();
        nodes.push(node);
    }
    let leader = loop {
        if let Some(n) = nodes.iter().find(|n| {
            let m = n.metrics().borrow().clone();
            m.role == Role::Leader && m.applied >= m.commit && m.commit.0 > 0
        }) {
            break n.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let term = leader.metrics().borrow().term;
    let before = leader.network().stats().frames_received;

    // Node 4 floods the leader on several streams for the rest of the test.
    let four = ca.issue(NodeId(4)).unwrap();
    let client = raw_client(ca.cert_pem(), &four.cert_pem, &four.key_pem);
    let conn = client
        .connect(leader.network().local_addr(), &identity_name(leader.id()))
        .unwrap()
        .await
        .expect("handshake");
    let stop = Arc::new(AtomicBool::new(false));
    let mut flooders = Vec::new();
    for s in 0..4u64 {
        let (conn, stop) = (conn.clone(), stop.clone());
        flooders.push(tokio::spawn(async move {
            let Ok(mut stream) = conn.open_uni().await else { return };
            if stream.write_all(&header(NodeId(4), 7)).await.is_err() {
                return;
            }
            let mut i = s << 40;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<u8> = (0..64).flat_map(|k| junk(i + k)).collect();
                i += 64;
                if stream.write_all(&batch).await.is_err() {
                    return;
                }
            }
        }));
    }

    // Meanwhile the cluster keeps working, with the same leader in the same term.
    let mut written = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < end {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            leader.client_write(KvCommand::put(format!("k{written}"), "v")),
        )
        .await;
        assert!(matches!(r, Ok(Ok(_))), "a write failed during the flood: {r:?}");
        written += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flooded = leader.network().stats().frames_received - before;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.abort();
    }
    let m = leader.metrics().borrow().clone();
    assert_eq!((m.role, m.term), (Role::Leader, term), "the flood cost the leader its term");
    for n in &nodes {
        assert_eq!(n.metrics().borrow().term, term, "an election happened during the flood");
    }
    assert!(flooded > 1_000, "the flood did not reach the leader ({flooded} frames)");
    assert!(written > 10, "only {written} writes in 6 s");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
