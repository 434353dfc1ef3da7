//! Reads without a log write and leadership transfer through `kv`, as users run them: `kv get
//! --read linearizable|lease|follower|stale` (and `POST /v1/get?read=…`) on QUIC + redb node
//! processes and on an in-process cluster, each returning the value written before it while
//! the log stays as it was; bad read levels refused with a clear message; `kv
//! transfer-leader` moving leadership, with writes going on afterwards; and the engine
//! settings that go with them (`check_quorum` for lease reads, `forward_proposals`) taken
//! from a `--config` file.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    KV, NodeProcess, free_tcp_ports, free_udp_ports, kv, make_certs, node_args, raw_post, stdout_of,
};
use raftkit_examples::client::KvClient;
use raftkit_examples::protocol::{ErrorKind, ErrorReply, NodeStatus};

const LEVELS: [&str; 4] = ["linearizable", "lease", "follower", "stale"];

/// `1=127.0.0.1:<p1>,2=…` for nodes 1, 2, … on `ports`.
fn list(ports: &[u16]) -> String {
    let items: Vec<String> =
        ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    items.join(",")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Three QUIC + redb node processes on 127.0.0.1 that know each other's API addresses
/// (`--peer-apis`), each started with `extra` arguments too; returns them and their APIs (node
/// `i`'s at index `i - 1`).
fn quic_cluster(dir: &Path, extra: &[String]) -> (Vec<NodeProcess>, Vec<SocketAddr>) {
    make_certs(&dir.join("certs"), "1,2,3");
    let raft = free_udp_ports(3);
    let api = free_tcp_ports(3);
    let (peers, peer_apis) = (list(&raft), list(&api));
    let nodes: Vec<NodeProcess> = (1..=3u64)
        .map(|id| {
            let mut args = node_args(id, &peers, dir);
            args[5] = format!("127.0.0.1:{}", api[id as usize - 1]);
            args.extend(["--peer-apis".to_string(), peer_apis.clone()]);
            args.extend(extra.iter().cloned());
            NodeProcess::start(&args)
        })
        .collect();
    let apis = nodes.iter().map(|n| n.api).collect();
    (nodes, apis)
}

/// Every node's status (one node per address), in the order of `apis`.
fn statuses(apis: &[SocketAddr]) -> Vec<NodeStatus> {
    let mut client = KvClient::new(apis.to_vec(), Duration::from_secs(20));
    let replies = runtime().block_on(client.status());
    replies
        .into_iter()
        .map(|(a, s)| s.unwrap_or_else(|e| panic!("status of {a}: {e}")).nodes.remove(0))
        .collect()
}

/// The leader's id, once every node agrees on it (waits for an election to settle).
fn agreed_leader(apis: &[SocketAddr]) -> u64 {
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = statuses(apis);
        let leader = seen.iter().find(|s| s.role == "leader").map(|s| s.id);
        if leader.is_some() && seen.iter().all(|s| s.leader == leader) {
            return leader.unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the nodes never agreed on a leader: {seen:?}");
}

/// Runs `kv <args>` against `apis`, expecting it to fail; returns its stderr.
fn refused(apis: &[SocketAddr], args: &[&str]) -> String {
    let out = kv(apis, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "kv {args:?} succeeded: {stdout}");
    stderr
}

/// `kv get KEY --read LEVEL` against `apis`, polled until it shows `want` (for stale reads on
/// a follower, which may be behind for a moment); returns what it showed last.
fn eventually(apis: &[SocketAddr], key: &str, level: &str, want: &str) -> String {
    let mut got = String::new();
    for _ in 0..100 {
        got = stdout_of(apis, &["get", key, "--read", level]);
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    got
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

/// The leader's last log index.
fn leader_last_log(apis: &[SocketAddr]) -> u64 {
    let s = statuses(apis);
    s.iter().find(|s| s.role == "leader").map(|s| s.last_log).expect("a leader")
}

/// On QUIC + redb processes, a get through each read level returns the value written just
/// before it: the leader levels reached through any node (a follower's `not_leader` reply
/// leads the client to the leader), a follower read on each follower (linearizable there
/// too), a stale read on the leader at once and on the followers once they have applied it.
/// None of them writes the log.
#[test]
fn a_get_through_each_read_level_returns_the_value_written_before_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (nodes, apis) = quic_cluster(dir.path(), &[]);
    assert_eq!(stdout_of(&apis, &["put", "k", "v1"]), "(none)");
    let leader = agreed_leader(&apis);
    let leader_api = apis[leader as usize - 1];
    let followers: Vec<SocketAddr> = apis.iter().copied().filter(|a| *a != leader_api).collect();

    for (round, value) in ["v2", "v3"].into_iter().enumerate() {
        // Each round writes, then reads at once through every level.
        assert_eq!(stdout_of(&apis, &["put", "k", value]), ["v1", "v2"][round]);
        let before = leader_last_log(&apis);
        for level in ["linearizable", "lease"] {
            // Through a follower first: it answers `not_leader` with the leader's address.
            let through = [followers[round], leader_api];
            assert_eq!(stdout_of(&through, &["get", "k", "--read", level]), value, "{level}");
        }
        for follower in &followers {
            let got = stdout_of(&[*follower], &["get", "k", "--read", "follower"]);
            assert_eq!(got, value, "a follower read on {follower}");
        }
        assert_eq!(stdout_of(&[leader_api], &["get", "k", "--read", "stale"]), value);
        for follower in &followers {
            assert_eq!(eventually(&[*follower], "k", "stale", value), value, "{follower}");
        }
        // The default is linearizable.
        assert_eq!(stdout_of(&apis, &["get", "k"]), value);
        assert_eq!(stdout_of(&apis, &["get", "missing", "--read", "follower"]), "(none)");
        assert_eq!(leader_last_log(&apis), before, "a read appended to the log");
    }

    // The same over HTTP: `?read=` on `POST /v1/get`.
    for level in LEVELS {
        let reply = raw_post(leader_api, &format!("/v1/get?read={level}"), r#"{"key":"k"}"#);
        assert!(reply.starts_with("HTTP/1.1 200"), "{level}: {reply}");
        assert!(reply.ends_with(r#"{"value":"v3"}"#), "{level}: {reply}");
    }
    let reply = raw_post(followers[0], "/v1/get?read=follower", r#"{"key":"k"}"#);
    assert!(reply.ends_with(r#"{"value":"v3"}"#), "{reply}");
    // A leader read on a follower is redirected as a write would be.
    for path in ["/v1/get", "/v1/get?read=linearizable", "/v1/get?read=lease"] {
        let nl = ErrorKind::NotLeader;
        let e = error_reply(followers[0], path, r#"{"key":"k"}"#, 421, nl);
        assert_eq!((e.leader, e.leader_api), (Some(leader), Some(leader_api.to_string())));
        assert!(e.error.contains(&format!("the leader is node {leader} at {leader_api}")));
    }
    for n in nodes {
        n.terminate();
    }
}

/// A read level that does not exist is refused before anything is sent, by `kv get` (with the
/// levels it knows) and by the API (400 bad_request), never with a panic or a default.
#[test]
fn a_bad_read_level_is_refused_with_a_clear_message() {
    // No node is needed: the command line is checked first.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for (bad, says) in [
        ("fast", "invalid value 'fast' for '--read <READ>'"),
        ("Lease", "invalid value 'Lease' for '--read <READ>'"),
        ("", "a value is required for '--read <READ>'"),
    ] {
        let out = Command::new(KV)
            .args(["--nodes", &closed.to_string(), "get", "k", "--read", bad])
            .output()
            .expect("run kv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains(says), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("possible values: linearizable, lease, follower, stale"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let node = mem_cluster(&[]);
    stdout_of(&[node.api], &["put", "k", "v"]);
    let bad = ErrorKind::BadRequest;
    for (query, says) in [
        (
            "read=fast",
            r#"unknown read level "fast"; use one of linearizable, lease, follower, stale"#,
        ),
        ("read=", r#"unknown read level """#),
        ("consistency=lease", "unknown query parameter"),
        ("read=lease&read=stale", "given twice"),
    ] {
        let e = error_reply(node.api, &format!("/v1/get?{query}"), r#"{"key":"k"}"#, 400, bad);
        assert!(e.error.contains(says), "{query}: {e:?}");
    }
    node.terminate();
}

/// An in-process cluster (`kv node --network mem`) started with `extra` arguments.
fn mem_cluster(extra: &[String]) -> NodeProcess {
    let args = ["--id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"];
    let mem = ["--api", "127.0.0.1:0", "--network", "mem", "--log", "mem"];
    let mut args: Vec<String> = args.iter().chain(&mem).map(|s| s.to_string()).collect();
    args.extend(extra.iter().cloned());
    NodeProcess::start(&args)
}

/// `kv node --config FILE` with `text` in FILE (under `dir`).
fn config_args(dir: &Path, name: &str, text: &str) -> Vec<String> {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the configuration");
    vec!["--config".to_string(), path.display().to_string()]
}

/// On an in-process cluster, where one address serves every node: the leader levels read on
/// the leader, follower and stale reads on a follower, and leadership moves on request. With
/// `check_quorum = false` in the configuration file, a lease read is refused (a lease needs
/// it) while the others work.
#[test]
fn reads_and_transfers_on_an_in_process_cluster() {
    let node = mem_cluster(&[]);
    let api = [node.api];
    stdout_of(&api, &["put", "colour", "red"]);
    for level in ["linearizable", "lease", "follower"] {
        assert_eq!(stdout_of(&api, &["get", "colour", "--read", level]), "red", "{level}");
    }
    assert_eq!(eventually(&api, "colour", "stale", "red"), "red");
    let first = stdout_of(&api, &["members"]);
    let moved = stdout_of(&api, &["transfer-leader"]);
    assert!(moved.contains(" leads now; node ") && moved.ends_with("handed leadership over"));
    let new: u64 = moved
        .strip_prefix("node ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no new leader in {moved:?}"));
    let shown = stdout_of(&api, &["members"]);
    assert!(shown.starts_with(&format!("configuration seen by node {new} (leader)")), "{shown}");
    assert_ne!(first.lines().next(), shown.lines().next(), "{first}\n{shown}");
    assert_eq!(stdout_of(&api, &["put", "colour", "blue"]), "red");
    assert_eq!(stdout_of(&api, &["get", "colour", "--read", "follower"]), "blue");
    node.terminate();

    let dir = tempfile::tempdir().expect("temp dir");
    let node = mem_cluster(&config_args(dir.path(), "no-cq.toml", "check_quorum = false\n"));
    let api = [node.api];
    stdout_of(&api, &["put", "k", "v"]);
    let stderr = refused(&api, &["get", "k", "--read", "lease"]);
    assert!(
        stderr.contains("bad request: lease reads need check_quorum")
            && stderr.contains("read with `linearizable`"),
        "{stderr}"
    );
    for level in ["linearizable", "follower"] {
        assert_eq!(stdout_of(&api, &["get", "k", "--read", level]), "v", "{level}");
    }
    node.terminate();
}

/// `kv transfer-leader --to N` on QUIC + redb processes: node N leads afterwards (as `kv
/// members` and `kv status` show), writes go on, and the data written before is all there.
/// Asking again for the node that leads moves nothing; without `--to` leadership moves to
/// another voter; a node that is not a voter is refused.
#[test]
fn transfer_leader_moves_leadership_and_writes_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (nodes, apis) = quic_cluster(dir.path(), &[]);
    for i in 0..5 {
        stdout_of(&apis, &["put", &format!("k{i}"), "before"]);
    }
    let old = agreed_leader(&apis);
    let target = if old == 3 { 1 } else { old + 1 };
    let target_api = apis[target as usize - 1];

    let moved = stdout_of(&apis, &["transfer-leader", "--to", &target.to_string()]);
    assert_eq!(
        moved,
        format!("node {target} leads now (API {target_api}); node {old} handed leadership over")
    );
    let members = stdout_of(&apis, &["members"]);
    assert!(
        members.starts_with(&format!("configuration seen by node {target} (leader)")),
        "{members}"
    );
    assert_eq!(agreed_leader(&apis), target);
    // `kv status`: one line per node, the role in the fourth column.
    let status = stdout_of(&apis, &["status"]);
    let leaders: Vec<&str> =
        status.lines().filter(|l| l.split_whitespace().nth(3) == Some("leader")).collect();
    assert_eq!(leaders.len(), 1, "{status}");
    assert!(leaders[0].contains(&format!("node {target} ")), "{status}");

    // Writes go on, through the new leader, and every earlier write is there.
    assert_eq!(stdout_of(&apis, &["put", "after", "transfer"]), "(none)");
    assert_eq!(stdout_of(&[target_api], &["get", "after"]), "transfer");
    for i in 0..5 {
        assert_eq!(stdout_of(&apis, &["get", &format!("k{i}")]), "before");
    }

    let again = stdout_of(&apis, &["transfer-leader", "--to", &target.to_string()]);
    assert_eq!(again, format!("node {target} leads already (API {target_api}); nothing moved"));
    let away = stdout_of(&apis, &["transfer-leader"]);
    assert!(away.ends_with(&format!("node {target} handed leadership over")), "{away}");
    let third = agreed_leader(&apis);
    assert_ne!(third, target, "{away}");
    assert!(away.starts_with(&format!("node {third} leads now")), "{away}");
    assert_eq!(stdout_of(&apis, &["put", "after", "second"]), "transfer");

    for (to, says) in [
        ("9", "bad request: node 9 is not a voter of the configuration in force"),
        ("0", "bad request: node ids start at 1"),
    ] {
        let stderr = refused(&apis, &["transfer-leader", "--to", to]);
        assert!(stderr.contains(says), "--to {to}: {stderr}");
    }
    assert_eq!(agreed_leader(&apis), third, "a refused transfer moved leadership");
    for n in nodes {
        n.terminate();
    }
}

/// The kv nodes do not forward writes by default (a follower answers `not_leader`, and the
/// client goes to the leader: see `not_leader_replies_carry_the_leaders_api_address`);
/// `forward_proposals = true` in the configuration file makes a follower take the write and
/// forward it to the leader itself.
#[test]
fn a_config_file_can_turn_proposal_forwarding_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let forward = config_args(dir.path(), "forward.toml", "forward_proposals = true\n");
    let (nodes, apis) = quic_cluster(dir.path(), &forward);
    assert_eq!(stdout_of(&apis, &["put", "k", "v1"]), "(none)");
    let leader = agreed_leader(&apis);
    let follower = apis[leader as usize % 3];
    let reply = raw_post(follower, "/v1/put", r#"{"key":"k","value":"v2"}"#);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with(r#"{"prev":"v1"}"#), "{reply}");
    assert_eq!(stdout_of(&[follower], &["get", "k", "--read", "follower"]), "v2");
    for n in nodes {
        n.terminate();
    }
}
