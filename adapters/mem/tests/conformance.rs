//! Runs every testkit suite on the in-memory adapters: the log-store suite on `MemLogStore`,
//! the state-machine suite on `MemKv`, the network suite on `MemNetwork`, and the cluster suite
//! on `MemNetwork` + `MemLogStore` (with writes that take time to become durable, so crashes
//! lose what was not yet durable), including the exact-replay check.

mod log_store {
    raftkit_testkit::log_store_suite!(raftkit_mem::harness::MemStoreHarness {
        sync_delay: std::time::Duration::ZERO
    });
}

mod state_machine {
    raftkit_testkit::state_machine_suite!(raftkit_mem::harness::MemKvHarness);
}

mod network {
    raftkit_testkit::network_suite!(raftkit_mem::harness::MemNetHarness);
}

mod cluster {
    raftkit_testkit::cluster_suite!(
        net: raftkit_mem::harness::MemNetHarness,
        logs: raftkit_mem::harness::MemStoreHarness::default(),
        replay
    );
}
