//! A datadir is bound to one chain — its id and its genesis block (#16, item 1): `settled run`
//! on a new chain with the same id (a restarted Anvil) refuses the old datadir with one clear
//! line, and the old chain's data stays usable with its own chain.

use settled_tests::{SettledProcess, TestChain, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_chain_with_the_same_id_is_refused() -> TestResult {
    let datadir = tempfile::tempdir()?;
    let first = TestChain::spawn().await?;
    SettledProcess::start(&first, datadir.path()).await?.kill()?;

    // A new Anvil: chain id 31337 again, another genesis (its timestamp is the start's second,
    // so two Anvils started within one second share one).
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let second = TestChain::spawn().await?;
    let deployment = datadir.path().join("deployment-second.json");
    second.deployment().save(&deployment)?;
    let output = std::process::Command::new("timeout")
        .arg("30")
        .arg(SettledProcess::binary()?)
        .args(["run", "--eth.rpc-url", &second.anvil().endpoint(), "--eth.deployment"])
        .arg(&deployment)
        .arg("--datadir")
        .arg(datadir.path())
        .args(["--rpc.port", "0", "--metrics.disable"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("another chain"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI colours on a pipe (#16 item 7): {stderr}");

    // Nothing was deleted: the first chain's node starts again on it.
    SettledProcess::start(&first, datadir.path()).await?.kill()?;
    Ok(())
}
