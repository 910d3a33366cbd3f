//! The `settled` binary as an operator meets it: bad input gets one line naming the problem and
//! a non-zero exit, never a panic; `settled dev` comes up, serves, and stops cleanly on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SETTLED: &str = env!("CARGO_BIN_EXE_settled");

fn settled(args: &[&str]) -> std::io::Result<Output> {
    Command::new(SETTLED).args(args).stdin(Stdio::null()).output()
}

/// Exit code, and stderr as lines.
fn failure(output: &Output) -> (Option<i32>, Vec<String>) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code(), stderr.lines().map(str::to_owned).collect())
}

fn assert_one_line_error(output: &Output, code: i32, needle: &str) {
    let (exit, lines) = failure(output);
    assert_eq!(exit, Some(code), "exit code; stderr: {lines:?}");
    let errors: Vec<_> = lines.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {lines:?}");
    assert!(errors[0].contains(needle), "{:?} should mention {needle}", errors[0]);
    assert!(!lines.iter().any(|l| l.contains("panicked")), "panic: {lines:?}");
}

#[test]
fn unknown_flag_is_a_usage_error() -> TestResult {
    let output = settled(&["dev", "--no-such-flag"])?;
    assert_one_line_error(&output, 2, "--no-such-flag");
    assert_eq!(failure(&output).1.len(), 1, "usage noise printed");
    Ok(())
}

#[test]
fn missing_required_flag_names_it() -> TestResult {
    assert_one_line_error(&settled(&["run", "--deployment", "x.json"])?, 2, "--eth.rpc-url");
    Ok(())
}

#[test]
fn unreachable_rpc_endpoint() -> TestResult {
    let dir = tempfile::tempdir()?;
    let deployment = dir.path().join("deployment.json");
    std::fs::write(
        &deployment,
        r#"{"chainId":1,"entryPointV07":"0x0000000071727De22E5E9d8BAf0edAc6f37da032","entryPointV08":"0x4337084D9E255Ff0702461CF8895CE9E3b5Ff108","simpleAccountFactoryV07":"0x0000000000000000000000000000000000000001","simpleAccountFactoryV08":"0x0000000000000000000000000000000000000002","simple7702AccountV08":"0x0000000000000000000000000000000000000003","usdc":"0x0000000000000000000000000000000000000004","paymasterV07":"0x0000000000000000000000000000000000000005","paymasterV08":"0x0000000000000000000000000000000000000006","streamVault":"0x0000000000000000000000000000000000000007","settlementAnchor":"0x0000000000000000000000000000000000000008","startBlock":0}"#,
    )?;
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let output = settled(&[
        "run",
        "--rpc-url",
        &url,
        "--deployment",
        &deployment.to_string_lossy(),
        "--datadir",
        &dir.path().to_string_lossy(),
    ])?;
    assert_one_line_error(&output, 1, "cannot reach the chain's RPC endpoint");
    Ok(())
}

#[test]
fn missing_deployment_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope.json");
    let output = settled(&[
        "run",
        "--rpc-url",
        "http://127.0.0.1:1",
        "--deployment",
        &missing.to_string_lossy(),
    ])?;
    assert_one_line_error(&output, 1, "nope.json");
    Ok(())
}

#[test]
fn bad_config_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("settled.toml");
    std::fs::write(&file, "[rpc]\nprot = 1\n")?;
    let output = settled(&["dev", "--config", &file.to_string_lossy()])?;
    assert_one_line_error(&output, 2, "unknown key `rpc.prot`");
    Ok(())
}

#[test]
fn rpc_port_in_use() -> TestResult {
    let dir = tempfile::tempdir()?;
    let busy = TcpListener::bind("127.0.0.1:0")?;
    let port = busy.local_addr()?.port().to_string();
    let output = settled(&[
        "dev",
        "--anvil.port",
        "0",
        "--rpc.port",
        &port,
        "--metrics.disable",
        "--datadir",
        &dir.path().to_string_lossy(),
    ])?;
    assert_one_line_error(&output, 1, "Address already in use");
    Ok(())
}

/// `settled dev`'s Anvil port (8545 by default) already taken: one line that names the flag.
#[test]
fn dev_anvil_port_in_use() -> TestResult {
    let dir = tempfile::tempdir()?;
    let busy = TcpListener::bind("127.0.0.1:0")?;
    let port = busy.local_addr()?.port().to_string();
    let datadir = dir.path().to_string_lossy();
    let output =
        settled(&["dev", "--anvil.port", &port, "--rpc.port", "0", "--datadir", &datadir])?;
    assert_one_line_error(&output, 1, "--anvil.port");
    Ok(())
}

/// `settled dev` starts its own Anvil, deploys, serves; SIGTERM stops node and Anvil, exit 0.
/// `settled dev` on `datadir` with JSON logs: the child, its remaining stderr lines, the JSON
/// lines before "settled ready", and that line.
type DevRun = (std::process::Child, DevLines, Vec<serde_json::Value>, serde_json::Value);

/// A child's stderr, line by line.
type DevLines = std::io::Lines<BufReader<std::process::ChildStderr>>;

/// `settled dev` on `datadir`, on free ports, with JSON logs: the child and its stderr lines.
fn spawn_dev(
    datadir: &std::path::Path,
) -> Result<(std::process::Child, DevLines), Box<dyn std::error::Error>> {
    let mut child = Command::new(SETTLED)
        .args(["dev", "--anvil.port", "0", "--rpc.port", "0", "--metrics.port", "0", "--log.json"])
        .arg("--datadir")
        .arg(datadir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    Ok((child, BufReader::new(stderr).lines()))
}

/// Whether nothing answers JSON-RPC at `url` any more.
fn gone(url: &str) -> Result<bool, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use alloy::providers::{Provider, ProviderBuilder};
        let anvil = ProviderBuilder::new().connect_http(url.parse()?);
        Ok(anvil.get_chain_id().await.is_err())
    })
}

fn start_dev(datadir: &std::path::Path) -> Result<DevRun, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let (mut child, mut lines) = spawn_dev(datadir)?;
    let mut before = Vec::new();
    loop {
        let line = lines.next().ok_or("settled exited before it was ready")??;
        let event: serde_json::Value = serde_json::from_str(&line)?;
        if event["fields"]["message"] == "settled ready" {
            eprintln!("settled dev ready after {:?}", started.elapsed());
            return Ok((child, lines, before, event));
        }
        before.push(event);
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            return Err("not ready within 60 s".into());
        }
    }
}

fn sigterm(child: &std::process::Child) -> TestResult {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    assert!(status.success());
    Ok(())
}

/// `settled dev`'s own Anvil is a new chain at every start: a restart on the same datadir
/// starts clean instead of serving the dead chain's streams and batches.
#[test]
fn dev_restart_starts_clean() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut first, rest, before, _) = start_dev(dir.path())?;
    assert!(!before.iter().any(|e| e["fields"]["message"].to_string().contains("starting clean")));
    sigterm(&first)?;
    rest.map_while(Result::ok).for_each(drop); // its stderr stays open until it exits
    first.wait()?;
    // Anvil's genesis is stamped with its start's second: the next one must be another.
    std::thread::sleep(Duration::from_millis(1_100));
    let (mut second, rest, before, _) = start_dev(dir.path())?;
    let clean =
        before.iter().any(|e| e["fields"]["message"].to_string().contains("starting clean"));
    sigterm(&second)?;
    rest.map_while(Result::ok).for_each(drop);
    second.wait()?;
    assert!(clean, "no 'starting clean' before ready: {before:?}");
    Ok(())
}

/// A second `settled dev` on a datadir in use is refused, and leaves the first one's
/// `deployment.json` as it was (#16 item 7).
#[test]
fn a_second_dev_on_a_datadir_in_use_changes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut first, rest, _, _) = start_dev(dir.path())?;
    let file = dir.path().join("deployment.json");
    // Its bytes are deterministic (CREATE2): a rewrite shows in the modification time.
    let written = std::fs::metadata(&file)?.modified()?;
    let second = Command::new(SETTLED)
        .args(["dev", "--anvil.port", "0", "--rpc.port", "0", "--metrics.port", "0", "--datadir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()?;
    let unchanged = std::fs::metadata(&file)?.modified()? == written;
    sigterm(&first)?;
    rest.map_while(Result::ok).for_each(drop);
    first.wait()?;
    assert_one_line_error(&second, 1, "in use by another settled process");
    assert!(unchanged, "the second `settled dev` rewrote deployment.json");
    Ok(())
}

/// SIGTERM while `settled dev` is still starting (deploying): it stops cleanly, exit 0, and
/// the Anvil it started goes with it (the handler used to be installed only once the node was
/// up, so an early SIGTERM killed the process and left its Anvil running).
#[test]
fn sigterm_during_start_up_stops_cleanly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut child, mut lines) = spawn_dev(dir.path())?;
    let chain = loop {
        let line = lines.next().ok_or("settled exited before starting Anvil")??;
        let event: serde_json::Value = serde_json::from_str(&line)?;
        if event["fields"]["message"] == "anvil started" {
            break event["fields"]["endpoint"].as_str().ok_or("no endpoint")?.to_owned();
        }
    };
    sigterm(&child)?;
    let exit = child.wait()?;
    assert!(exit.success(), "exit {exit:?}");
    assert!(gone(&chain)?, "anvil still answers at {chain}");
    Ok(())
}

/// Whoever reads the log may go away (`settled dev 2>&1 | head`): the node keeps serving, then
/// stops cleanly on SIGTERM. It used to panic (exit 101) at the first log line after.
#[test]
fn a_closed_log_pipe_does_not_stop_the_node() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut child, mut lines) = spawn_dev(dir.path())?;
    let rpc = loop {
        let line = lines.next().ok_or("settled exited before it was ready")??;
        let event: serde_json::Value = serde_json::from_str(&line)?;
        if event["fields"]["message"] == "settled ready" {
            break event["fields"]["rpc"].as_str().ok_or("no rpc")?.to_owned();
        }
    };
    drop(lines);
    // The shutdown logs several lines into the closed pipe; the exit status tells.
    std::thread::sleep(Duration::from_secs(2));
    assert!(child.try_wait()?.is_none(), "settled exited with its log reader gone");
    assert!(!gone(&format!("http://{rpc}"))?, "settled stopped serving");
    sigterm(&child)?;
    let exit = child.wait()?;
    assert!(exit.success(), "exit {exit:?}");
    Ok(())
}

#[test]
fn dev_serves_and_stops_on_sigterm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut child, lines, _, ready) = start_dev(dir.path())?;
    let rpc = ready["fields"]["rpc"].as_str().ok_or("no rpc address")?.to_owned();
    let chain = ready["fields"]["chain"].as_str().ok_or("no chain url")?.to_owned();
    assert!(dir.path().join("deployment.json").exists(), "deployment not written");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use alloy::providers::{Provider, ProviderBuilder};
        let node = ProviderBuilder::new().connect_http(format!("http://{rpc}").parse()?);
        assert_eq!(node.get_chain_id().await?, 31337);
        // dev made a billing key and keeps its token in the datadir (#16 item 6).
        let token = std::fs::read_to_string(dir.path().join("dev-api-key"))?;
        let list =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "stream_list", "params": [{}]});
        let client = alloy::transports::http::reqwest::Client::new();
        let url = format!("http://{rpc}");
        let with: serde_json::Value =
            client.post(&url).bearer_auth(token.trim()).json(&list).send().await?.json().await?;
        assert!(with["result"].is_object() || with["result"].is_array(), "{with}");
        let without: serde_json::Value = client.post(&url).json(&list).send().await?.json().await?;
        assert_eq!(without["error"]["code"], -32001, "{without}");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;

    sigterm(&child)?;
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait()?;
    assert!(exit.success(), "exit {exit:?}; stderr: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("settled stopped")), "{rest:?}");

    // The Anvil it started is gone with it.
    assert!(gone(&chain)?, "anvil still answers at {chain}");
    Ok(())
}
