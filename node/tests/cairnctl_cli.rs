//! The real `cairnctl` binary against a real one-node cluster (the node is also
//! the PD): output contract and exit codes, through the PD (`--pd`, the
//! default) and directly (`--node`).

use std::io::Write;
use std::process::{Command, Stdio};

use cairn_node::{Node, NodeConfig};

/// Runs `cairnctl --pd PD` ; returns (exit code, stdout, stderr).
async fn cairnctl(pd: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairnctl"));
    cmd.env_remove("CAIRN_NODE").env_remove("CAIRN_PD");
    cmd.args(["--pd", pd, "--timeout", "5s"]).args(args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let stdin = stdin.map(str::to_string);
    // The node runs on this test's runtime, so the blocking wait goes elsewhere.
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("spawn cairnctl");
        let mut pipe = child.stdin.take().expect("stdin is piped");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(pipe);
        child.wait_with_output().expect("wait for cairnctl")
    })
    .await
    .expect("join");
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairnctl_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = NodeConfig {
        listen: addr,
        data_dir: dir.path().to_path_buf(),
        initial_pd: vec![(1, addr.to_string())],
        initial_shards: 2,
        ..NodeConfig::default()
    };
    let node = Node::start_with_listener(config, listener).await.unwrap();
    let node_addr = addr.to_string();
    let node_addr = node_addr.as_str();

    // The single-node groups elect themselves; cairnctl's retries ride that out.
    let (code, out, err) =
        cairnctl(node_addr, &["put", "user:1", r#"{"name": "ada", "n": 12345678901234567890}"#], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("key      user:1\nversion  "), "{out}");

    let (code, out, err) = cairnctl(node_addr, &["--output", "json", "put", "user:2", "-"], Some("[1, 2]\n")).await;
    assert_eq!(code, 0, "{err}");
    let put: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(put["key"], "user:2");

    let (code, out, err) = cairnctl(node_addr, &["get", "user:1", "--output", "json"], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""value": {"name": "ada", "n": 12345678901234567890}"#), "stored text kept: {out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["key"], "user:1");
    assert_eq!(doc["value"]["name"], "ada");

    let (code, out, _) = cairnctl(node_addr, &["scan", "--prefix", "user:"], None).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("KEY     VERSION  VALUE"), "{out}");
    assert!(lines[2].starts_with("user:2  ") && lines[2].ends_with("[1, 2]"), "{out}");

    let (code, out, _) = cairnctl(node_addr, &["shards", "--output", "json"], None).await;
    assert_eq!(code, 0);
    let shards: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shards.as_array().unwrap().len(), 2, "{out}");
    assert_eq!(shards[1]["start"], "0x8000");
    assert_eq!(shards[1]["epoch"]["conf_ver"], 1);
    assert_eq!(shards[1]["replicas"].as_array().unwrap().len(), 1);
    assert_eq!(shards[1]["replicas"][0]["role"], "voter");
    let (code, out, _) = cairnctl(node_addr, &["shards"], None).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("ID"), "{out}");

    let (code, out, err) = cairnctl(node_addr, &["status", "--output", "json"], None).await;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["pd_leader"], 1, "{out}");
    assert_eq!((status["nodes_up"].as_u64(), status["nodes_total"].as_u64()), (Some(1), Some(1)), "{out}");
    assert_eq!((status["shards"].as_u64(), status["under_replicated"].as_u64()), (Some(2), Some(0)), "{out}");
    let (code, out, _) = cairnctl(node_addr, &["nodes", "--output", "json"], None).await;
    assert_eq!(code, 0);
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((nodes[0]["id"].as_u64(), nodes[0]["state"].as_str()), (Some(1), Some("up")), "{out}");
    assert_eq!(nodes[0]["replicas"], 2, "{out}");

    // Straight to the node, without the PD.
    let direct = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["--node", node_addr, "--output", "json", "get", "user:1"])
        .output()
        .unwrap();
    assert_eq!(direct.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&direct.stdout).contains(r#""name": "ada""#));

    let (code, out, err) = cairnctl(node_addr, &["get", "nobody"], None).await;
    assert_eq!((code, out.as_str(), err.as_str()), (1, "", "error: not found: nobody\n"));

    let (code, _, err) = cairnctl(node_addr, &["delete", "user:2", "--expected-version", "999"], None).await;
    assert_eq!(code, 2);
    assert!(err.starts_with("error: CONDITION_FAILED"), "{err}");
    let (code, _, _) = cairnctl(node_addr, &["delete", "user:2"], None).await;
    assert_eq!(code, 0);
    let (code, _, _) = cairnctl(node_addr, &["delete", "user:2"], None).await;
    assert_eq!(code, 1);

    let (code, _, err) = cairnctl(node_addr, &["put", "k", "{not json"], None).await;
    assert_eq!(code, 2);
    assert!(err.starts_with("error: invalid JSON document") && err.lines().count() == 1, "{err}");

    let (code, _, err) = cairnctl("127.0.0.1:1", &["get", "k"], None).await;
    assert_eq!(code, 2);
    assert!(err.starts_with("error: ") && err.lines().count() == 1, "{err}");
    let (code, _, err) = cairnctl("127.0.0.1:1", &["status"], None).await;
    assert_eq!(code, 2);
    assert!(err.starts_with("error: ") && err.lines().count() == 1, "{err}");
    node.shutdown().await;
}

/// `error: CODE: text` with a stable code first, on one line.
fn is_api_error(err: &str, code: &str) -> bool {
    err.starts_with(&format!("error: {code}: ")) && err.lines().count() == 1
}

/// The rebalancing verbs against a real one-node cluster: settings, operators,
/// node states, the balance report; their JSON contract and their errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairnctl_admin_verbs() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = NodeConfig {
        listen: addr,
        data_dir: dir.path().to_path_buf(),
        initial_pd: vec![(1, addr.to_string())],
        initial_shards: 2,
        ..NodeConfig::default()
    };
    let node = Node::start_with_listener(config, listener).await.unwrap();
    let pd = addr.to_string();
    let pd = pd.as_str();

    // The initial shards exist once `shards` lists them (cairnctl's retries ride out the election).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, out, _) = cairnctl(pd, &["shards", "--output", "json"], None).await;
        if code == 0 && serde_json::from_str::<serde_json::Value>(&out).unwrap()[1].is_object() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the initial shards never appeared: {out}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let (code, out, err) = cairnctl(pd, &["config", "show", "--output", "json"], None).await;
    assert_eq!(code, 0, "{err}");
    let settings: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(settings["max_operators"], 16, "{out}");
    for field in ["replication_factor", "max_node_down_time_ms", "max_moves_per_node", "snapshot_bytes_per_sec"] {
        assert!(settings[field].is_u64(), "{field} in {out}");
    }
    let (code, out, err) = cairnctl(pd, &["config", "set", "max-operators", "4", "--output", "json"], None).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["max_operators"], 4, "{out}");
    let (code, out, _) = cairnctl(pd, &["config", "show"], None).await;
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("max-operators ") && l.ends_with(" 4")), "{out}");
    let (code, _, err) = cairnctl(pd, &["config", "set", "max-operators", "many"], None).await;
    assert_eq!(code, 2);
    assert!(is_api_error(&err, "INVALID_ARGUMENT"), "{err}");
    let (code, _, _) = cairnctl(pd, &["config", "set", "no-such-setting", "1"], None).await;
    assert_eq!(code, 2, "refused by the argument parser");

    let (code, out, err) = cairnctl(pd, &["operators", "--output", "json"], None).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!([]), "{out}");
    let (code, out, _) = cairnctl(pd, &["operators"], None).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("ID  SHARD  KIND"), "{out}");

    let (code, out, err) = cairnctl(pd, &["rebalance", "status", "--output", "json"], None).await;
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((report["nodes"][0]["id"].as_u64(), report["nodes"][0]["replicas"].as_u64()), (Some(1), Some(2)));
    assert_eq!((report["operators"].as_u64(), report["under_replicated"].as_u64()), (Some(0), Some(0)), "{out}");
    assert!(report["balanced"].is_boolean(), "{out}");
    let (code, out, _) = cairnctl(pd, &["rebalance", "status"], None).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("balanced  "), "{out}");

    // Refused before anything is sent, and by the PD.
    // The PD's own shard 0 takes operators too (RFC 004); here node 2 does not exist.
    let (code, _, err) = cairnctl(pd, &["shard", "move", "0", "--from", "1", "--to", "2"], None).await;
    assert_eq!(code, 2);
    assert!(is_api_error(&err, "INVALID_ARGUMENT") && err.contains("node 2"), "{err}");
    let (code, _, err) = cairnctl(pd, &["shard", "move", "1", "--from", "1", "--to", "9"], None).await;
    assert_eq!(code, 2, "node 9 does not exist");
    assert!(err.starts_with("error: ") && err.lines().count() == 1, "{err}");
    let (code, _, err) = cairnctl(pd, &["node", "remove", "1"], None).await;
    assert_eq!(code, 2, "node 1 holds replicas");
    assert!(err.starts_with("error: ") && err.lines().count() == 1, "{err}");

    let (code, out, err) = cairnctl(pd, &["node", "drain", "1", "--output", "json"], None).await;
    assert_eq!(code, 0, "{err}");
    let drained: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((drained["id"].as_u64(), drained["state"].as_str()), (Some(1), Some("draining")), "{out}");
    let (code, out, err) = cairnctl(pd, &["node", "activate", "1"], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID") && out.lines().nth(1).is_some_and(|l| l.contains(" up ")), "{out}");

    let (code, _, err) = cairnctl("127.0.0.1:1", &["operators"], None).await;
    assert_eq!(code, 2);
    assert!(err.starts_with("error: ") && err.lines().count() == 1, "{err}");
    node.shutdown().await;
}
