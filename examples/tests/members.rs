//! Membership changes through `kv`, as an operator makes them: a dead node replaced by a fresh
//! one (`kv certs --add`, `kv node --join`, `kv add-learner`, `kv promote`, `kv remove`) on
//! QUIC + redb processes while the data stays readable, the new node voting and restarting
//! from its own log; an in-process cluster that grows and whose leader removes itself; and
//! the refusals (removing the last voter, promoting a node that is not a learner, malformed
//! requests), each with a clear error that changes nothing.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    KV, NodeProcess, free_tcp_ports, free_udp_ports, kv, make_certs, names_in, node_args, raw_post,
    stdout_of,
};
use raftkit_examples::client::KvClient;
use raftkit_examples::protocol::{ErrorKind, ErrorReply, MembersReply};

/// `1=127.0.0.1:<p1>,2=…` for nodes 1, 2, … on `ports`.
fn list(ports: &[u16]) -> String {
    let items: Vec<String> =
        ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    items.join(",")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// The configuration as the leader sees it, through the library client.
fn members(apis: &[SocketAddr]) -> MembersReply {
    let mut client = KvClient::new(apis.to_vec(), Duration::from_secs(20));
    runtime().block_on(client.members()).expect("members")
}

/// Polls `/v1/status` on `apis` until every node has applied the same index with the same
/// state digest; panics (with what each showed) if they never do.
fn wait_for_equal_digests(apis: &[SocketAddr]) {
    let mut client = KvClient::new(apis.to_vec(), Duration::from_secs(20));
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = runtime()
            .block_on(client.status())
            .into_iter()
            .map(|(a, s)| (a, s.ok().and_then(|s| s.nodes[0].digest.clone())))
            .collect();
        let first = &seen[0].1;
        if first.is_some() && seen.iter().all(|(_, d)| d == first) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the nodes never showed the same state: {seen:?}");
}

/// Runs `kv <args>` against `apis`, expecting it to fail; returns its stderr.
fn refused(apis: &[SocketAddr], args: &[&str]) -> String {
    let out = kv(apis, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "kv {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// POSTs `body` to `path`, expecting an error reply with `status` and `kind`; returns it.
fn error_reply(
    api: SocketAddr,
    path: &str,
    body: &str,
    status: u16,
    kind: ErrorKind,
) -> ErrorReply {
    let reply = raw_post(api, path, body);
    assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{path} {body}: {reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let err: ErrorReply = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(err.kind, kind, "{reply}");
    err
}

/// The whole operator procedure of examples/README.md ("Replacing a failed node") on QUIC +
/// redb processes: the leader dies, a fresh node 4 gets a certificate from the existing CA,
/// starts with `--join`, is added as a learner, promoted, and the dead node removed. Writes
/// made before and after are all readable; node 4 then restarts from its own log and, with one
/// of the original nodes gone too, is needed for every commit.
#[test]
fn a_dead_leader_is_replaced_by_a_fresh_node_through_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    make_certs(&certs, "1,2,3");
    let raft = free_udp_ports(4);
    let api = free_tcp_ports(4);
    let (peers, peer_apis) = (list(&raft[..3]), list(&api[..3]));
    let with_api = |mut args: Vec<String>, id: usize| {
        args[5] = format!("127.0.0.1:{}", api[id - 1]);
        args.extend(["--peer-apis".to_string(), peer_apis.clone()]);
        args
    };
    let mut nodes: Vec<Option<NodeProcess>> = (1..=3)
        .map(|id| {
            Some(NodeProcess::start(&with_api(node_args(id, &peers, dir.path()), id as usize)))
        })
        .collect();
    let apis: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.api).collect();
    for i in 0..10 {
        stdout_of(&apis, &["put", &format!("k{i}"), &format!("v{i}")]);
    }
    let before = members(&apis);
    assert_eq!(
        (before.voters.clone(), before.committed),
        (vec![vec![1, 2, 3]], true),
        "{before:?}"
    );
    assert_eq!(before.role, "leader", "{before:?}");
    let dead = before.id;
    drop(nodes[dead as usize - 1].take()); // SIGKILL
    let live: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.api).collect();
    for i in 10..20 {
        stdout_of(&live, &["put", &format!("k{i}"), &format!("v{i}")]);
    }

    // A certificate for node 4 from the existing CA; the CA key stays in certs/ca.
    let made = Command::new(KV)
        .args(["certs", "--dir", &certs.display().to_string(), "--add", "4"])
        .output()
        .expect("kv certs --add");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert_eq!(names_in(&certs.join("node-4")), ["ca.crt", "node.crt", "node.key"]);
    assert_eq!(names_in(&certs.join("ca")), ["ca.crt", "ca.key"]);

    // Node 4 joins: the existing members in its address book, no configuration of its own.
    let addr4 = format!("127.0.0.1:{}", raft[3]);
    let mut args4 = with_api(node_args(4, &format!("{peers},4={addr4}"), dir.path()), 4);
    args4.push("--join".into());
    let node4 = NodeProcess::start(&args4);
    let waiting = stdout_of(&[node4.api], &["members"]);
    assert!(waiting.contains("no configuration yet"), "{waiting}");
    let mut apis4 = live.clone();
    apis4.push(node4.api);

    let no_addr = refused(&apis4, &["add-learner", "--id", "4"]);
    assert!(no_addr.contains("`addr` is required"), "{no_addr}");
    // What the learner must reach: the leader's commit index before the call, at least.
    let mut client = KvClient::new(live.clone(), Duration::from_secs(20));
    let statuses = runtime().block_on(client.status());
    let commit = statuses.iter().filter_map(|(_, s)| s.as_ref().ok()).map(|s| s.nodes[0].commit);
    let commit = commit.max().expect("a status");
    let added = stdout_of(&apis4, &["add-learner", "--id", "4", "--addr", &addr4]);
    assert!(added.contains("node 4 is a learner and has caught up"), "{added}");
    // The reply comes once the learner has caught up: its progress shows it.
    let line = added.lines().find(|l| l.starts_with("node 4 ") && l.contains(" addr "));
    let line = line.expect("node 4's line");
    let matched: u64 = line
        .split("matched ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no progress in {line:?}"));
    assert!(matched >= commit, "add-learner answered before the learner caught up: {added}");
    let m = members(&apis4);
    assert_eq!(m.learners, [4], "{m:?}");
    let new = m.nodes.iter().find(|n| n.id == 4).expect("node 4 listed");
    assert_eq!((new.role.as_str(), new.addr.as_deref()), ("learner", Some(addr4.as_str())));
    assert!(new.matched.is_some(), "the leader shows the learner's progress: {m:?}");

    let promoted = stdout_of(&apis4, &["promote", "--id", "4"]);
    assert!(promoted.contains("node 4 is a voter"), "{promoted}");
    let removed = stdout_of(&apis4, &["remove", "--id", &dead.to_string()]);
    assert!(removed.contains(&format!("node {dead} is no longer a member")), "{removed}");
    let m = members(&apis4);
    let mut want: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|n| *n != dead).collect();
    want.sort_unstable();
    assert_eq!((m.voters.clone(), m.learners.clone()), (vec![want], vec![]), "{m:?}");
    assert!(m.committed && !m.joint, "{m:?}");
    let shown = stdout_of(&apis4, &["members"]);
    assert!(shown.contains(&format!("addr {addr4}")) && !shown.contains(&format!("node {dead} ")));

    for i in 20..30 {
        stdout_of(&apis4, &["put", &format!("k{i}"), &format!("v{i}")]);
    }
    wait_for_equal_digests(&apis4);

    // Node 4 restarts from its log (the same command line, --join included) and uses the
    // configuration there; then one original node dies too, so no commit can happen without
    // node 4.
    node4.terminate();
    let node4 = NodeProcess::start(&args4);
    let gone = nodes.iter_mut().flatten().next().map(|n| n.api).expect("a survivor");
    let idx = nodes.iter().position(|n| n.as_ref().is_some_and(|n| n.api == gone)).unwrap();
    drop(nodes[idx].take());
    let mut last: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.api).collect();
    last.push(node4.api);
    let mut client = KvClient::new(last.clone(), Duration::from_secs(30));
    runtime().block_on(async {
        for i in 0..30 {
            let v = client.get(&format!("k{i}")).await.expect("get");
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()), "k{i}");
        }
        client.put("after", "restart").await.expect("a write needs node 4's vote");
    });
    wait_for_equal_digests(&last);
    node4.terminate();
    for n in nodes.into_iter().flatten() {
        n.terminate();
    }
}

fn mem_cluster(peers: &str) -> NodeProcess {
    let args = ["--id", "1", "--peers", peers, "--api", "127.0.0.1:0", "--network", "mem"];
    NodeProcess::start(
        &args.iter().chain(&["--log", "mem"]).map(|s| s.to_string()).collect::<Vec<_>>(),
    )
}

/// Refusals: the last voter cannot be removed, only a learner can be promoted, a node that is
/// not a member cannot be removed, a voter cannot be added as a learner, and malformed
/// requests are bad requests. Each says why, and the configuration stays as it was.
#[test]
fn membership_refusals_say_why_and_change_nothing() {
    let node = mem_cluster("1=127.0.0.1:1");
    let api = [node.api];
    stdout_of(&api, &["put", "a", "1"]);
    for (args, says) in [
        (&["remove", "--id", "1"][..], "the change would leave no voters"),
        (&["promote", "--id", "1"], "node 1 is not a learner"),
        (&["promote", "--id", "7"], "node 7 is not a learner"),
        (&["remove", "--id", "7"], "node 7 is not a member"),
        (&["add-learner", "--id", "1"], "node 1 is a voter"),
        (&["add-learner", "--id", "0"], "node ids start at 1"),
    ] {
        let stderr = refused(&api, args);
        assert!(stderr.contains("bad request") && stderr.contains(says), "{args:?}: {stderr}");
    }
    let bad = ErrorKind::BadRequest;
    let e = error_reply(node.api, "/v1/members/remove", r#"{"id":1}"#, 400, bad);
    assert!(e.error.contains("no voters"), "{e:?}");
    let e = error_reply(node.api, "/v1/members/promote", r#"{"id":1}"#, 400, bad);
    assert!(e.error.contains("not a learner"), "{e:?}");
    for (path, body) in [
        ("/v1/members/add-learner", r#"{"id":2,"addr":"nowhere"}"#),
        ("/v1/members/add-learner", r#"{"id":2,"addr":"127.0.0.1:1","port":2}"#),
        ("/v1/members/add-learner", r#"{"id":-2}"#),
        ("/v1/members/promote", r#"{"id":2,"timeout_ms":0}"#),
        ("/v1/members/promote", r#"{"id":2,"timeout_ms":3600001}"#),
        ("/v1/members/remove", r#"{"id":"#),
        ("/v1/members/remove", r#"{}"#),
    ] {
        error_reply(node.api, path, body, 400, bad);
    }
    let m = members(&api);
    assert_eq!((m.voters.clone(), m.learners.clone(), m.committed), (vec![vec![1]], vec![], true));
    assert_eq!(stdout_of(&api, &["get", "a"]), "1");
    node.terminate();
}

/// On an in-process cluster (`--network mem`), `add-learner` starts the node it adds, and
/// the leader can remove itself: it leads until the change commits, then the others elect a
/// leader among themselves and the data is all there.
#[test]
fn an_in_process_cluster_grows_and_its_leader_removes_itself() {
    let node = mem_cluster("1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3");
    let api = [node.api];
    for i in 0..5 {
        stdout_of(&api, &["put", &format!("k{i}"), "v"]);
    }
    stdout_of(&api, &["add-learner", "--id", "4"]);
    stdout_of(&api, &["promote", "--id", "4"]);
    assert_eq!(stdout_of(&api, &["status"]).lines().count(), 4);
    let leader = members(&api).id;
    stdout_of(&api, &["remove", "--id", &leader.to_string()]);
    stdout_of(&api, &["put", "after", "v"]);
    let m = members(&api);
    assert_ne!(m.id, leader, "{m:?}");
    let want: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|n| *n != leader).collect();
    assert_eq!(m.voters, [want], "{m:?}");
    // The removed node was stopped: the status lists the three members only.
    assert_eq!(stdout_of(&api, &["status"]).lines().count(), 3);
    for i in 0..5 {
        assert_eq!(stdout_of(&api, &["get", &format!("k{i}")]), "v");
    }
    node.terminate();
}

/// `kv certs --add` issues a node directory with the existing CA, without the CA key, and
/// refuses to overwrite one or to work without a CA.
#[test]
fn kv_certs_adds_a_node_with_the_existing_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certs(dir.path(), "1,2,3");
    let certs = |d: &Path, args: &[&str]| {
        Command::new(KV)
            .args(["certs", "--dir", &d.display().to_string()])
            .args(args)
            .output()
            .expect("kv certs")
    };
    let ca = std::fs::read(dir.path().join("ca/ca.crt")).expect("CA");
    let added = certs(dir.path(), &["--add", "4,5"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    for id in [4, 5] {
        let node = dir.path().join(format!("node-{id}"));
        assert_eq!(names_in(&node), ["ca.crt", "node.crt", "node.key"]);
        assert_eq!(std::fs::read(node.join("ca.crt")).expect("ca.crt"), ca, "the same CA");
    }
    assert_eq!(std::fs::read(dir.path().join("ca/ca.crt")).expect("CA"), ca, "CA unchanged");
    let again = certs(dir.path(), &["--add", "4"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    let empty = tempfile::tempdir().expect("temp dir");
    let no_ca = certs(empty.path(), &["--add", "4"]);
    assert!(!no_ca.status.success());
    let stderr = String::from_utf8_lossy(&no_ca.stderr);
    assert!(stderr.contains("issuing a certificate for node 4 with the CA in"), "{stderr}");
}
