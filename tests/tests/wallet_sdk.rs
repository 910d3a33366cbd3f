//! settled as the wallet SDKs meet it (#16): `settled dev` (the binary, on free ports) driven by
//! viem and permissionless, unmodified and pinned in `tests/sdk/package.json` — undeployed
//! SimpleAccounts on v0.7 and v0.8 with the node as bundler and paymaster, a batch of two calls,
//! `to7702SimpleSmartAccount`'s first op, and a billing flow from signed terms to a verified
//! receipt. The cases are in `tests/sdk/wallet.test.mjs` (`node --test`); this test starts the
//! node, runs them and fails with their report.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use settled_tests::{SettledProcess, TestResult};

/// `tests/sdk`, where the JavaScript cases and their pinned packages are.
fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// `settled dev` and the thread draining its log; killed (with its Anvil) on drop.
struct Dev {
    child: std::process::Child,
    log: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Dev {
    /// SIGTERM, as an operator stops it; its log lines above INFO, shutdown included.
    fn stop(mut self) -> TestResult<Vec<String>> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        assert!(status.success());
        let exit = self.child.wait()?;
        assert!(exit.success(), "settled dev exited with {exit}");
        let log = self.log.take().ok_or("log reader gone")?;
        log.join().map_err(|_| "log reader panicked".into())
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `settled dev` on `datadir` and answers its `settled ready` event; its log lines keep
/// being drained so the pipe never blocks it, and those above INFO are kept.
fn start_dev(datadir: &Path) -> TestResult<(Dev, Value)> {
    let mut child = Command::new(SettledProcess::binary()?)
        .args(["dev", "--anvil.port", "0", "--rpc.port", "0", "--metrics.disable"])
        .args(["--rpc.admin", "--log.json"])
        .arg("--datadir")
        .arg(datadir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut loud = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let event: Value = serde_json::from_str(&line).unwrap_or_default();
            if event["fields"]["message"] == "settled ready" {
                let _ = ready_tx.send(event.clone());
            }
            if event["level"] != "INFO" {
                eprintln!("settled: {line}");
                loud.push(line);
            }
        }
        loud
    });
    let dev = Dev { child, log: Some(log) };
    let ready =
        ready_rx.recv_timeout(Duration::from_secs(120)).map_err(|_| "settled dev not ready")?;
    Ok((dev, ready))
}

#[test]
fn viem_and_permissionless_drive_the_node() -> TestResult {
    let sdk = sdk_dir();
    if !sdk.join("node_modules/permissionless").is_dir() {
        return Err(format!(
            "{} has no node_modules: run scripts/install-toolchain.sh",
            sdk.display()
        )
        .into());
    }
    let datadir = tempfile::tempdir()?;
    let (dev, ready) = start_dev(datadir.path())?;
    let rpc = format!("http://{}", ready["fields"]["rpc"].as_str().ok_or("no rpc in ready")?);
    let chain = ready["fields"]["chain"].as_str().ok_or("no chain in ready")?.to_owned();
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", "--test-concurrency=1", "wallet.test.mjs"])
        .current_dir(&sdk)
        .env("SETTLED_RPC", &rpc)
        .env("SETTLED_CHAIN", &chain)
        .env("SETTLED_DATADIR", datadir.path())
        .env("SETTLED_BIN", SettledProcess::binary()?)
        .output()?;
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the SDK cases failed (report above)");
    assert!(report.contains("pass 4"), "four cases passed");
    assert!(report.contains("fail 0"));
    // A clean stop says nothing above INFO (it once logged a failed poll of its dead Anvil).
    let loud = dev.stop()?;
    assert!(!loud.iter().any(|l| l.contains("\"ERROR\"")), "errors logged: {loud:#?}");
    Ok(())
}
