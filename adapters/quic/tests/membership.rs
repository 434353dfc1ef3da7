//! A node that was in nobody's address book joins a running QUIC cluster: the leader adds it
//! as a learner with its address as node information, every node learns the address from the
//! membership (`Network::update_peers`), and the new node catches up, is promoted and takes
//! part in commits — without restarting anyone.

mod common;

use std::time::Duration;

use common::loopback;
use raftkit::{ChangeMembers, ChangeOptions, Config, NodeId, Raft, Role};
use raftkit_mem::{KvCommand, MemKv, MemLogStore};
use raftkit_quic::{AddressBook, CertAuthority, QuicConfig, QuicNetwork};

type Node = Raft<QuicNetwork, MemLogStore, MemKv>;

fn config(id: u64, members: &[u64]) -> Config {
    let mut c = Config::new(NodeId(id), members.iter().map(|m| NodeId(*m)));
    c.heartbeat_interval = Duration::from_millis(100);
    c.election_timeout_min = Duration::from_millis(1000);
    c.election_timeout_max = Duration::from_millis(2000);
    c.seed = id;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_every_address_book_joins_through_the_membership() {
    let ca = CertAuthority::generate().unwrap();
    let mut nets = Vec::new();
    let mut books = Vec::new();
    for id in 1..=4u64 {
        let book = AddressBook::new();
        let cfg = QuicConfig::new(NodeId(id), loopback(), ca.node_certs(NodeId(id)).unwrap())
            .with_addresses(book.clone());
        let net = QuicNetwork::bind(cfg).expect("bind");
        nets.push(net);
        books.push(book);
    }
    let addr4 = nets[3].local_addr();
    // Nodes 1-3 know each other only; node 4 knows them (it was told where to join).
    for (i, book) in books.iter().enumerate() {
        for (j, net) in nets.iter().enumerate().take(3) {
            if i != j {
                book.insert(NodeId(j as u64 + 1), net.local_addr());
            }
        }
    }
    assert!(books[0].get(NodeId(4)).is_none());
    let mut nodes: Vec<Node> = Vec::new();
    for (i, net) in nets.into_iter().enumerate() {
        let id = i as u64 + 1;
        let members: &[u64] = if id <= 3 { &[1, 2, 3] } else { &[] };
        let node = Raft::start(config(id, members), net, MemLogStore::new(), MemKv::new())
            .await
            .expect("start");
        nodes.push(node);
    }
    // A leader among 1-3.
    let mut leader = None;
    for _ in 0..100 {
        leader = nodes[..3].iter().position(|n| {
            let m = n.metrics().borrow().clone();
            m.role == Role::Leader && m.applied >= m.commit && m.commit.0 > 0
        });
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = &nodes[leader.expect("a leader")];
    l.client_write(KvCommand::put("a", "1")).await.expect("write");

    let added = tokio::time::timeout(
        Duration::from_secs(20),
        l.add_learner(NodeId(4), addr4.to_string(), true),
    )
    .await
    .expect("the learner catches up in time")
    .expect("add learner");
    assert_eq!(added.node_info(NodeId(4)), Some(addr4.to_string().as_str()));
    for book in &books[..3] {
        assert_eq!(book.get(NodeId(4)), Some(addr4), "every node learned the new address");
    }
    tokio::time::timeout(
        Duration::from_secs(20),
        l.change_membership(
            ChangeMembers::PromoteLearners([NodeId(4)].into()),
            ChangeOptions::default(),
        ),
    )
    .await
    .expect("promotion in time")
    .expect("promote");
    l.client_write(KvCommand::put("b", "2")).await.expect("write after the change");
    let target = l.metrics().borrow().commit;
    let applied = nodes[3].wait_for(Duration::from_secs(20), |m| m.applied >= target).await;
    assert!(applied.is_some(), "the new voter applies what was committed");
    let m4 = nodes[3].metrics().borrow().clone();
    assert!(m4.membership.is_voter(NodeId(4)));
    for n in &nodes {
        n.shutdown().await.expect("shutdown");
    }
}
