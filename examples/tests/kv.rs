//! The `kv` service end to end, as its users run it: node processes started from the command
//! line on 127.0.0.1, and the `kv` client commands (or the library client) talking HTTP/JSON
//! to them.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    KV, NodeProcess, free_tcp_ports, free_udp_ports, http_get, kv, make_certs, names_in, node_args,
    raw_post, stdout_of,
};
use raftkit_examples::client::KvClient;

#[test]
fn every_client_command_works_on_an_in_process_cluster() {
    let node = NodeProcess::start(
        &["--id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"]
            .iter()
            .chain(&["--api", "127.0.0.1:0", "--network", "mem", "--log", "mem"])
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    );
    let api = [node.api];
    assert_eq!(stdout_of(&api, &["put", "colour", "red"]), "(none)");
    assert_eq!(stdout_of(&api, &["put", "colour", "green"]), "red");
    assert_eq!(stdout_of(&api, &["get", "colour"]), "green");
    assert_eq!(
        stdout_of(&api, &["cas", "colour", "--expected", "green", "--new", "blue"]),
        "swapped; now blue"
    );
    assert_eq!(
        stdout_of(&api, &["cas", "colour", "--expected", "green", "--new", "pink"]),
        "not swapped; now blue"
    );
    assert_eq!(stdout_of(&api, &["cas", "shape", "--new", "round"]), "swapped; now round");
    assert_eq!(stdout_of(&api, &["delete", "colour"]), "blue");
    assert_eq!(stdout_of(&api, &["get", "colour"]), "(none)");
    let status = stdout_of(&api, &["status"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    let roles: Vec<&str> =
        status.lines().map(|l| l.split_whitespace().nth(3).unwrap_or_default()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{status}");

    // Bad input is refused with a clear message and a failing exit code.
    let empty = kv(&api, &["put", "", "x"]);
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("the key is empty"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let unreachable = Command::new(KV)
        .args(["--nodes", &closed.to_string(), "--timeout", "1s", "get", "k"])
        .output()
        .expect("run kv");
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("no node could serve"));
    node.terminate();
}

#[test]
fn node_options_are_validated() {
    for (args, says) in [
        (
            vec!["--id", "4", "--peers", "1=127.0.0.1:7001", "--api", "127.0.0.1:0"],
            "not in --peers",
        ),
        (vec!["--id", "1", "--peers", "1=nowhere", "--api", "127.0.0.1:0"], "not valid"),
        (
            vec![
                "--id",
                "1",
                "--peers",
                "1=127.0.0.1:7001",
                "--api",
                "127.0.0.1:0",
                "--log",
                "mem",
            ],
            "--certs-dir",
        ),
        (vec!["--id", "1", "--peers", "1=127.0.0.1:7001", "--api", "127.0.0.1:0"], "--data-dir"),
        (
            vec![
                "--id",
                "1",
                "--peers",
                "1=127.0.0.1:7001",
                "--api",
                "127.0.0.1:0",
                "--network",
                "mem",
            ],
            "--data-dir",
        ),
        (
            vec![
                "--id",
                "1",
                "--peers",
                "1=127.0.0.1:7001",
                "--api",
                "127.0.0.1:0",
                "--log",
                "tape",
            ],
            "possible values: redb, rocksdb, mem",
        ),
        (
            vec![
                "--id",
                "1",
                "--peers",
                "1=127.0.0.1:7001",
                "--api",
                "127.0.0.1:0",
                "--peer-apis",
                "9=127.0.0.1:8009",
            ],
            "--peer-apis names node 9",
        ),
        (
            vec!["--id", "4", "--join", "--peers", "1=127.0.0.1:7001", "--api", "127.0.0.1:0"],
            "pass --listen",
        ),
        (
            vec![
                "--id",
                "1",
                "--join",
                "--peers",
                "1=127.0.0.1:7001",
                "--api",
                "127.0.0.1:0",
                "--network",
                "mem",
            ],
            "--join is for a node of a QUIC cluster",
        ),
    ] {
        let out = Command::new(KV).arg("node").args(&args).output().expect("run kv node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn quic_and_redb_nodes_keep_every_acknowledged_write_when_the_leader_is_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs").display().to_string();
    let made = Command::new(KV).args(["certs", "--dir", &certs, "--nodes", "1,2,3"]).output();
    assert!(made.expect("kv certs").status.success());
    let again = Command::new(KV).args(["certs", "--dir", &certs, "--nodes", "1,2,3"]).output();
    let again = again.expect("kv certs");
    assert!(!again.status.success(), "a second CA must not overwrite the first");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    let ports = free_udp_ports(3);
    let peers: Vec<String> =
        ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    let peers = peers.join(",");
    let mut nodes: Vec<Option<NodeProcess>> =
        (1..=3).map(|id| Some(NodeProcess::start(&node_args(id, &peers, dir.path())))).collect();
    let apis = |nodes: &[Option<NodeProcess>]| -> Vec<SocketAddr> {
        nodes.iter().flatten().map(|n| n.api).collect()
    };

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut client = KvClient::new(apis(&nodes), Duration::from_secs(20));
    rt.block_on(async {
        for i in 0..20 {
            client.put(&format!("k{i}"), &format!("v{i}")).await.expect("put before the kill");
        }
    });
    // Find the leader's process and kill it with SIGKILL.
    let leader = rt.block_on(client.status()).into_iter().find_map(|(addr, s)| {
        let s = s.ok()?;
        s.nodes.iter().any(|n| n.role == "leader").then_some(addr)
    });
    let leader = leader.expect("a leader");
    let idx = nodes.iter().position(|n| n.as_ref().is_some_and(|n| n.api == leader)).unwrap();
    drop(nodes[idx].take());

    let mut client = KvClient::new(apis(&nodes), Duration::from_secs(20));
    rt.block_on(async {
        for i in 20..40 {
            client.put(&format!("k{i}"), &format!("v{i}")).await.expect("put after the kill");
        }
    });
    // The killed node restarts from its redb file and catches up.
    nodes[idx] = Some(NodeProcess::start(&node_args(idx as u64 + 1, &peers, dir.path())));
    let restarted = nodes[idx].as_ref().unwrap().api;
    let mut client = KvClient::new(apis(&nodes), Duration::from_secs(20));
    rt.block_on(async {
        for i in 0..40 {
            let v = client.get(&format!("k{i}")).await.expect("get");
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()), "k{i} lost");
        }
        // The restarted node applies everything the others did.
        let mut caught_up = false;
        for _ in 0..100 {
            let statuses = client.status().await;
            let applied: Vec<(SocketAddr, u64)> = statuses
                .iter()
                .filter_map(|(a, s)| s.as_ref().ok().map(|s| (*a, s.nodes[0].applied)))
                .collect();
            let max = applied.iter().map(|(_, a)| *a).max().unwrap_or(0);
            if applied.len() == 3 && applied.iter().any(|(a, n)| *a == restarted && *n == max) {
                caught_up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(caught_up, "the restarted node did not catch up");
    });
    for n in nodes.into_iter().flatten() {
        n.terminate();
    }
}

/// A follower's `not_leader` reply says where the leader's API is (from `--peer-apis`), in
/// words a user can read, and a client that knows only the follower follows it there.
#[test]
fn not_leader_replies_carry_the_leaders_api_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certs(&dir.path().join("certs"), "1,2,3");
    let raft = free_udp_ports(3);
    let api = free_tcp_ports(3);
    let list = |ports: &[u16]| -> String {
        let items: Vec<String> =
            ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
        items.join(",")
    };
    let (peers, peer_apis) = (list(&raft), list(&api));
    let nodes: Vec<NodeProcess> = (1..=3u64)
        .map(|id| {
            let mut args = node_args(id, &peers, dir.path());
            args[5] = format!("127.0.0.1:{}", api[id as usize - 1]);
            args.extend(["--peer-apis".to_string(), peer_apis.clone()]);
            NodeProcess::start(&args)
        })
        .collect();
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.api).collect();
    // Wait for a leader (the put succeeds), then ask every node's status for it.
    assert_eq!(stdout_of(&apis, &["put", "k", "v1"]), "(none)");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut client = KvClient::new(apis.clone(), Duration::from_secs(20));
    let statuses = rt.block_on(client.status());
    let (leader_id, follower) = statuses
        .iter()
        .find_map(|(addr, s)| {
            let n = &s.as_ref().ok()?.nodes[0];
            (n.role == "follower" && n.leader.is_some()).then_some((n.leader?, *addr))
        })
        .expect("a follower that knows the leader");
    let leader_api = apis[leader_id as usize - 1];
    // `/v1/status` on a follower names the leader's API.
    let (_, status) = statuses.iter().find(|(a, _)| *a == follower).expect("follower status");
    let status = status.as_ref().expect("status");
    assert_eq!(status.nodes[0].leader_api, Some(leader_api.to_string()));

    let reply = raw_post(follower, "/v1/put", r#"{"key":"k","value":"v2"}"#);
    assert!(reply.starts_with("HTTP/1.1 421"), "{reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let err: raftkit_examples::protocol::ErrorReply =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(err.leader, Some(leader_id));
    assert_eq!(err.leader_api, Some(leader_api.to_string()), "{reply}");
    assert!(err.error.contains(&leader_api.to_string()), "{}", err.error);
    for debug in ["Some(", "NodeId(", "None"] {
        assert!(!err.error.contains(debug), "Rust debug text in the error: {}", err.error);
    }

    // A client that knows only the follower reaches the leader through the reply alone.
    assert_eq!(stdout_of(&[follower], &["put", "k", "v3"]), "v1");
    for n in nodes {
        n.terminate();
    }
}

/// Runs `kv <args>` expecting it to exit by itself within 30 seconds (a node that starts
/// instead is killed and reported).
fn kv_exits(args: &[&str]) -> Output {
    let mut child = Command::new(KV)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kv");
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("kv output");
            panic!("kv {args:?} kept running: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("kv output")
}

/// Security: `kv certs` gives each node its own directory, which holds no CA key; the CA (and
/// its key) sits apart, to be kept offline.
#[test]
fn kv_certs_gives_each_node_a_directory_without_the_ca_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certs(dir.path(), "1,2,3");
    assert_eq!(names_in(dir.path()), ["ca", "client", "node-1", "node-2", "node-3"]);
    assert_eq!(names_in(&dir.path().join("ca")), ["ca.crt", "ca.key"]);
    for id in 1..=3 {
        let node = dir.path().join(format!("node-{id}"));
        assert_eq!(names_in(&node), ["ca.crt", "node.crt", "node.key"], "{}", node.display());
    }
    assert_eq!(names_in(&dir.path().join("client")), ["ca.crt", "client.crt", "client.key"]);
}

/// Security: a node refuses to start from a certificates directory where it can read the CA
/// key, and names the file.
#[test]
fn a_node_refuses_a_certificates_directory_holding_the_ca_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certs(dir.path(), "1");
    let node_dir = dir.path().join("node-1");
    std::fs::copy(dir.path().join("ca/ca.key"), node_dir.join("ca.key")).expect("copy");
    let (node_dir_arg, data) = (node_dir.display().to_string(), dir.path().join("data"));
    let out = kv_exits(&[
        "node",
        "--id",
        "1",
        "--peers",
        "1=127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--data-dir",
        &data.display().to_string(),
        "--certs-dir",
        &node_dir_arg,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let named = node_dir.join("ca.key").display().to_string();
    assert!(stderr.contains(&named) && stderr.contains("CA's private key"), "{stderr}");
}

/// Security: an API that anyone beyond this machine could use without credentials is refused
/// at startup. (192.0.2.1 is a documentation address: never bound, no traffic sent.)
#[test]
fn a_non_loopback_api_without_tls_is_refused_at_startup() {
    let out = kv_exits(&[
        "node",
        "--id",
        "1",
        "--peers",
        "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
        "--api",
        "192.0.2.1:0",
        "--network",
        "mem",
        "--log",
        "mem",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not a loopback address") && stderr.contains("--api-tls"), "{stderr}");
}

/// Security: with `--api-tls`, the API answers only clients holding a certificate from the
/// cluster CA.
#[test]
fn the_tls_api_serves_authenticated_clients_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certs(&dir.path().join("certs"), "1");
    make_certs(&dir.path().join("other"), "1");
    let d = |p: &str| dir.path().join(p).display().to_string();
    let node = NodeProcess::start(
        &["--id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"]
            .iter()
            .chain(&["--api", "127.0.0.1:0", "--network", "mem", "--log", "mem", "--api-tls"])
            .map(|s| s.to_string())
            .chain(["--certs-dir".to_string(), d("certs/node-1")])
            .collect::<Vec<_>>(),
    );
    let api = [node.api];
    let with = |certs: &str, args: &[&str]| {
        let mut all = vec!["--client-certs", certs];
        all.extend_from_slice(args);
        kv(&api, &all)
    };

    // Authenticated: works.
    let put = with(&d("certs/client"), &["put", "k", "v"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let got = with(&d("certs/client"), &["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v");

    // No credentials (plain HTTP): refused, and says why.
    let plain = kv(&api, &["put", "k", "plain"]);
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success() && stderr.contains("refused"), "{stderr}");
    // A client of another cluster: the two do not trust each other.
    let other = Command::new(KV)
        .args(["--nodes", &node.api.to_string(), "--timeout", "2s"])
        .args(["--client-certs", &d("other/client"), "put", "k", "other"])
        .output()
        .expect("run kv");
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success() && stderr.contains("certificate"), "{stderr}");
    // TLS without a client certificate: the handshake fails, no HTTP reply.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let reply =
        rt.block_on(anonymous_tls_request(node.api, &dir.path().join("certs/client/ca.crt")));
    assert!(!reply.starts_with("HTTP/1.1 200"), "{reply}");
    let got = with(&d("certs/client"), &["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v");
    node.terminate();
}

/// A TLS client that trusts the cluster CA but presents no certificate: what it reads back.
async fn anonymous_tls_request(api: SocketAddr, ca: &Path) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).expect("CA")).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(api).await.expect("connect");
    let name = "node-1.raftkit".try_into().expect("name");
    let mut tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return format!("handshake failed: {e}"),
    };
    let request = "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if let Err(e) = tls.write_all(request.as_bytes()).await {
        return format!("write failed: {e}");
    }
    let mut reply = Vec::new();
    match tls.read_to_end(&mut reply).await {
        Ok(_) => String::from_utf8_lossy(&reply).into_owned(),
        Err(e) => format!("read failed: {e}"),
    }
}

/// The samples of `name` in a Prometheus text page, by label set (`{node="1"}`).
fn samples(page: &str, name: &str) -> std::collections::BTreeMap<String, f64> {
    page.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((labels.trim().to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of `name` over every label set (each node's counter, say).
fn total(page: &str, name: &str) -> f64 {
    samples(page, name).values().sum()
}

/// `GET /metrics` serves the engine's metrics in Prometheus text format, per node, and they
/// move as the cluster commits.
#[test]
fn the_node_serves_its_metrics_and_they_move_with_writes() {
    let node = NodeProcess::start(
        &["--id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"]
            .iter()
            .chain(&["--api", "127.0.0.1:0", "--network", "mem", "--log", "mem"])
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    );
    let api = [node.api];
    stdout_of(&api, &["put", "first", "1"]);
    let (status, before) = http_get(node.api, "/metrics");
    assert_eq!(status, 200, "{before}");
    for name in [
        "raftkit_proposals_total",
        "raftkit_commits_total",
        "raftkit_applied_total",
        "raftkit_elections_total",
        "raftkit_sent_bytes_total",
        "raftkit_replication_lag",
        "raftkit_log_write_seconds_bucket",
        "raftkit_log_write_entries_count",
    ] {
        assert!(!samples(&before, name).is_empty(), "no {name} in:\n{before}");
    }
    // Every node of the in-process cluster reports, under its own label.
    let applied = samples(&before, "raftkit_applied_total");
    for id in 1..=3 {
        assert!(applied.contains_key(&format!("{{node=\"{id}\"}}")), "{applied:?}");
    }

    for i in 0..5 {
        stdout_of(&api, &["put", &format!("k{i}"), "v"]);
    }
    let (_, after) = http_get(node.api, "/metrics");
    // The leader proposed, committed and applied each write before it answered.
    for name in ["raftkit_proposals_total", "raftkit_commits_total", "raftkit_applied_total"] {
        let (b, a) = (total(&before, name), total(&after, name));
        assert!(a >= b + 5.0, "{name} went from {b} to {a} over 5 writes");
    }
    let (b, a) = (
        total(&before, "raftkit_log_write_entries_sum"),
        total(&after, "raftkit_log_write_entries_sum"),
    );
    assert!(a >= b + 5.0, "entries written went from {b} to {a}");
    assert!(total(&after, "raftkit_sent_bytes_total") > total(&before, "raftkit_sent_bytes_total"));
    node.terminate();
}

/// `/v1/status` and `kv status` show each follower's lag on the leader and every node's state
/// digest, equal on nodes that applied the same entries.
#[test]
fn status_shows_replication_lag_and_state_digests() {
    let node = NodeProcess::start(
        &["--id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"]
            .iter()
            .chain(&["--api", "127.0.0.1:0", "--network", "mem", "--log", "mem"])
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    );
    let api = [node.api];
    for i in 0..5 {
        stdout_of(&api, &["put", &format!("k{i}"), "v"]);
    }
    // Followers apply a heartbeat after the leader: wait until all three have applied alike.
    let mut nodes = Vec::new();
    for _ in 0..200 {
        let (status, body) = http_get(node.api, "/v1/status");
        assert_eq!(status, 200, "{body}");
        let reply: raftkit_examples::protocol::StatusReply =
            serde_json::from_str(&body).expect("a status reply");
        nodes = reply.nodes;
        if nodes.iter().all(|n| n.applied == nodes[0].applied && n.applied >= 6) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let digests: Vec<_> = nodes.iter().map(|n| n.digest.clone().expect("a digest")).collect();
    assert!(digests.iter().all(|d| d == &digests[0]), "{nodes:#?}");
    assert_eq!(digests[0].applied, nodes[0].applied, "{nodes:#?}");
    let leader = nodes.iter().find(|n| n.role == "leader").expect("a leader");
    let mut followers: Vec<u64> = leader.replication.iter().map(|p| p.id).collect();
    followers.sort_unstable();
    assert_eq!(
        followers,
        nodes.iter().map(|n| n.id).filter(|id| *id != leader.id).collect::<Vec<_>>()
    );
    for p in &leader.replication {
        assert_eq!(p.lag, leader.last_log - p.matched, "{leader:#?}");
    }
    assert!(nodes.iter().all(|n| n.error.is_none()));
    assert!(nodes.iter().filter(|n| n.role != "leader").all(|n| n.replication.is_empty()));

    let out = stdout_of(&api, &["status"]);
    let leader_line = out
        .lines()
        .find(|l| l.contains(&format!("node {}  leader", leader.id)))
        .unwrap_or_else(|| panic!("no leader line in:\n{out}"));
    assert!(leader_line.contains(&format!("digest {}@", digests[0].digest)), "{leader_line}");
    assert!(leader_line.contains("lag ") && !leader_line.ends_with("lag -"), "{leader_line}");
    node.terminate();
}

/// `kv node --config FILE` loads the engine configuration: here `snapshot_every = 1`, which
/// the default (a snapshot every 10,000 entries) would never show after a few writes. A bad
/// file is refused before anything starts, naming the file and the field.
#[test]
fn a_config_file_configures_the_engine_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("node.toml");
    std::fs::write(&good, "heartbeat_interval = \"50ms\"\nsnapshot_every = 1\n").expect("write");
    let base = ["--id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"];
    let mem = ["--api", "127.0.0.1:0", "--network", "mem", "--log", "mem", "--config"];
    let args = |file: &Path| -> Vec<String> {
        let mut v: Vec<String> = base.iter().chain(&mem).map(|s| s.to_string()).collect();
        v.push(file.display().to_string());
        v
    };

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "heartbeat = \"1s\"\n").expect("write");
    let out = Command::new(KV).arg("node").args(args(&bad)).output().expect("run kv node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad configuration file was accepted");
    assert!(stderr.contains("bad.toml") && stderr.contains("heartbeat"), "{stderr}");

    let node = NodeProcess::start(&args(&good));
    let api = [node.api];
    stdout_of(&api, &["put", "a", "1"]);
    stdout_of(&api, &["put", "b", "2"]);
    let snapshotted = |status: &str| {
        status.lines().any(|l| l.split("snapshot ").nth(1).is_some_and(|s| !s.starts_with('-')))
    };
    let mut status = String::new();
    for _ in 0..100 {
        status = stdout_of(&api, &["status"]);
        if snapshotted(&status) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(snapshotted(&status), "snapshot_every = 1 from the file was not used:\n{status}");
    node.terminate();
}
