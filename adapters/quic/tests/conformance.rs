//! The testkit's suites on QUIC over loopback: the network suite (delivery, ordering, failure
//! and reconnection, large and hostile frames, shutdown), and the cluster suite with QUIC
//! endpoints carrying every message between nodes that keep their logs in the in-memory store.
//! Every cluster gets a fresh CA and certificates, and every endpoint a port picked by the OS
//! on 127.0.0.1, published in the cluster's shared address book before it talks to anyone.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use raftkit::{NetworkError, NetworkErrorKind, NodeId};
use raftkit_quic::{AddressBook, CertAuthority, QuicConfig, QuicNetwork};
use raftkit_testkit::NetworkHarness;

/// Endpoints of loopback clusters.
#[derive(Clone, Copy, Debug, Default)]
struct QuicHarness;

/// One cluster: its CA, its address book, and the latest endpoint of each node (to send raw
/// frames from).
struct QuicCluster {
    ca: CertAuthority,
    book: AddressBook,
    endpoints: Mutex<BTreeMap<NodeId, QuicNetwork>>,
}

/// The connect timeout of the test endpoints (the default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[async_trait]
impl NetworkHarness for QuicHarness {
    type Network = QuicNetwork;
    type Cluster = QuicCluster;

    async fn cluster(&self, _nodes: &[NodeId], _seed: u64) -> QuicCluster {
        QuicCluster {
            ca: CertAuthority::generate().expect("generate a CA"),
            book: AddressBook::new(),
            endpoints: Mutex::new(BTreeMap::new()),
        }
    }

    async fn endpoint(&self, cluster: &QuicCluster, node: NodeId) -> QuicNetwork {
        let certs = cluster.ca.node_certs(node).expect("issue a node certificate");
        let listen = "127.0.0.1:0".parse().expect("address");
        let mut config = QuicConfig::new(node, listen, certs).with_addresses(cluster.book.clone());
        config.connect_timeout = CONNECT_TIMEOUT;
        let net = QuicNetwork::bind(config).expect("bind a QUIC endpoint");
        // Published before the endpoint is handed out, so every peer can dial it and accepts
        // its connections (unknown nodes are refused).
        cluster.book.insert(node, net.local_addr());
        cluster.endpoints.lock().unwrap().insert(node, net.clone());
        net
    }

    async fn send_raw(
        &self,
        cluster: &QuicCluster,
        from: NodeId,
        to: NodeId,
        frame: Vec<u8>,
    ) -> Result<(), NetworkError> {
        let net = cluster.endpoints.lock().unwrap().get(&from).cloned();
        let net =
            net.ok_or_else(|| NetworkError::new(NetworkErrorKind::Unreachable, "no endpoint"))?;
        net.send_raw_frame(to, &frame).await
    }

    fn max_frame_bytes(&self) -> usize {
        raftkit_quic::DEFAULT_MAX_FRAME_BYTES
    }

    /// Messages of one class keep their order (see the crate docs); the suite's ordering case
    /// sends heartbeats only, which all travel on the control stream.
    fn ordered(&self) -> bool {
        true
    }

    fn deterministic(&self) -> bool {
        false
    }

    fn unreachable_bound(&self) -> Duration {
        CONNECT_TIMEOUT + Duration::from_secs(1)
    }
}

mod network {
    raftkit_testkit::network_suite!(super::QuicHarness);
}

mod cluster {
    raftkit_testkit::cluster_suite!(
        net: super::QuicHarness,
        logs: raftkit_mem::harness::MemStoreHarness::default()
    );
}
