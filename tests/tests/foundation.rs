//! End to end on a real Anvil: node up, chain id, health and metrics, canonical EntryPoints,
//! accounts created through the v0.7 factory and through EntryPoint v0.8's `handleOps`.

use std::time::Duration;

use alloy::{
    primitives::{U256, address},
    providers::{Provider, ext::AnvilApi},
    signers::local::PrivateKeySigner,
    sol_types::SolValue,
};
use settled_contracts::{ENTRY_POINT_V07, ENTRY_POINT_V08, EntryPointVersion, v07, v08};
use settled_tests::{TestChain, TestNode, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_serves_chain_id_health_and_metrics() -> TestResult {
    let node = TestNode::spawn().await?;
    let anvil_chain_id = node.chain().provider().get_chain_id().await?;

    assert_eq!(node.client().get_chain_id().await?, anvil_chain_id);
    let version: String = node.client().raw_request("web3_clientVersion".into(), ()).await?;
    assert!(version.starts_with("settled/v"), "{version}");

    // The follower reaches the chain head; /health and /metrics say so.
    node.chain().provider().anvil_mine(Some(3), None).await?;
    let head = node.chain().provider().get_block_number().await?;
    node.wait_for_head(head, Duration::from_secs(10)).await?;

    let health = node.health().await?;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["chainId"], anvil_chain_id);
    assert!(health["headBlock"].as_u64().is_some_and(|h| h >= head), "{health}");

    let metrics = node.metrics().await?;
    for name in ["settled_info", "settled_chain_head_block", "settled_start_time_seconds"] {
        assert!(metrics.contains(&format!("# HELP {name} ")), "{name} undocumented:\n{metrics}");
    }
    // Event counters are served from the start, at zero before their first event (#16 item 7).
    for name in [
        "settled_chain_reorgs_total",
        "settled_chain_reorged_blocks_total",
        "settled_bundler_bundles_failed_total",
        "settled_bundler_bundles_replaced_total",
        "settled_paymaster_signatures_total",
        "settled_settlement_batches_committed_total",
        "settled_settlement_repriced_total",
    ] {
        let served = metrics.lines().any(|l| l.starts_with(&format!("{name} ")));
        assert!(served, "{name} not served at start:\n{metrics}");
    }
    let reported: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("settled_chain_head_block "))
        .ok_or("no head gauge")?
        .trim()
        .parse()?;
    assert!(reported >= 1.0, "head gauge {reported}");

    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_rpc_errors() -> TestResult {
    let node = TestNode::spawn().await?;
    let url = node.node()?.rpc_url();
    let http = alloy::transports::http::reqwest::Client::new();
    // A body over the 1 MiB limit (an op's callData of 1.5 MB, say) is refused up front (-32007,
    // HTTP 413) instead of ending in a -32603 from deep inside the estimate (#20 item 8). The
    // node may answer and close before the client has sent it all, so the client can also see
    // its upload cut off; either way nothing of it is processed.
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"eth_estimateUserOperationGas","params":[{{"callData":"0x{}"}}]}}"#,
        "ab".repeat(1_500_000)
    );
    let oversized =
        http.post(&url).header("content-type", "application/json").body(huge).send().await;
    if let Ok(response) = oversized {
        assert_eq!(response.status(), 413);
        let answer: serde_json::Value = response.json().await?;
        assert_eq!(answer["error"]["code"], -32007, "{answer}");
    }
    for (body, code) in [
        (r#"{"jsonrpc":"2.0","id":1,"method":"no_such_method","params":[]}"#, -32601),
        (r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId""#, -32700),
        (r#"{"jsonrpc":"2.0","id":1}"#, -32600),
        // An id JSON-RPC does not allow used to get a bare `null` (#20 item 8).
        (r#"{"jsonrpc":"2.0","id":{"a":1},"method":"eth_chainId","params":[]}"#, -32600),
        (r#"{"jsonrpc":"2.0","id":1.5,"method":"eth_chainId","params":[]}"#, -32600),
        (r#"[{"jsonrpc":"2.0","id":[1],"method":"eth_chainId","params":[]}]"#, -32600),
    ] {
        let response: serde_json::Value = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(response["error"]["code"], code, "{body} -> {response}");
    }
    // The node still serves after bad input.
    assert_eq!(node.client().get_chain_id().await?, node.chain().provider().get_chain_id().await?);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_points_are_at_canonical_addresses() -> TestResult {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider();
    assert_eq!(chain.deployment().entry_point_v07, ENTRY_POINT_V07);
    assert_eq!(chain.deployment().entry_point_v08, ENTRY_POINT_V08);

    for version in EntryPointVersion::ALL {
        let entry_point = version.canonical_address();
        let code = provider.get_code_at(entry_point).await?;
        assert!(code.len() > 10_000, "{version:?}: {} bytes of code", code.len());
        // Deployed by CREATE2 with the real constructor, so the EntryPoint created its
        // SenderCreator as its first CREATE (nonce 1).
        let sender_creator = entry_point.create(1);
        assert!(
            !provider.get_code_at(sender_creator).await?.is_empty(),
            "{version:?} senderCreator"
        );
        if version == EntryPointVersion::V08 {
            let reported =
                v08::IEntryPoint::new(entry_point, provider).senderCreator().call().await?;
            assert_eq!(reported, sender_creator);
            assert_eq!(sender_creator, address!("0x449ED7C3e6Fee6a97311d4b55475DF59C44AdD33"));
        }
    }

    // Deploying again is a no-op: same addresses, no transaction sent.
    let block = provider.get_block_number().await?;
    let again = settled_contracts::deploy_all(provider, chain.account(0)?).await?;
    assert_eq!(provider.get_block_number().await?, block, "redeploy sent transactions");
    assert_eq!(again.entry_point_v07, chain.deployment().entry_point_v07);
    assert_eq!(again.usdc, chain.deployment().usdc);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_account_v07_created_through_factory() -> TestResult {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider();
    let factory =
        v07::SimpleAccountFactory::new(chain.deployment().simple_account_factory_v07, provider);
    let owner = PrivateKeySigner::random().address();
    let salt = U256::from(7);

    let predicted = factory.getAddress(owner, salt).call().await?;
    assert!(provider.get_code_at(predicted).await?.is_empty());
    let receipt = factory.createAccount(owner, salt).send().await?.get_receipt().await?;
    assert!(receipt.status());

    let account = v07::SimpleAccount::new(predicted, provider);
    assert_eq!(account.owner().call().await?, owner);
    assert_eq!(account.entryPoint().call().await?, ENTRY_POINT_V07);
    Ok(())
}

/// The full v0.8 path: counterfactual address, prefund, a signed UserOperation with initCode,
/// `handleOps`, account deployed and the op reported successful.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_account_v08_created_by_handle_ops() -> TestResult {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider();
    let deployment = chain.deployment();
    let entry_point = v08::IEntryPoint::new(ENTRY_POINT_V08, provider);
    let factory = v08::SimpleAccountFactory::new(deployment.simple_account_factory_v08, provider);
    let owner = PrivateKeySigner::random();
    let sender = factory.getAddress(owner.address(), U256::ZERO).call().await?;

    // Only the SenderCreator may call the v0.8 factory, so creation goes through the EntryPoint.
    // (eth_call, not a transaction: a failed send would still consume a cached nonce.)
    assert!(factory.createAccount(owner.address(), U256::ZERO).call().await.is_err());

    let op = chain.account_creation_op(EntryPointVersion::V08, &owner, 10u128.pow(18)).await?;
    assert_eq!(op.sender, sender);
    let op_hash = chain.op_hash(EntryPointVersion::V08, &op).await?;
    let op: v08::PackedUserOperation = SolValue::abi_decode(&op.abi_encode())?;

    let beneficiary = chain.account(1)?;
    let receipt = entry_point.handleOps(vec![op], beneficiary).send().await?.get_receipt().await?;
    assert!(receipt.status(), "handleOps reverted");

    assert!(!provider.get_code_at(sender).await?.is_empty(), "account not deployed");
    let account = v08::SimpleAccount::new(sender, provider);
    assert_eq!(account.owner().call().await?, owner.address());
    let event = receipt
        .inner
        .logs()
        .iter()
        .find_map(|log| log.log_decode::<v08::IEntryPoint::UserOperationEvent>().ok())
        .ok_or("no UserOperationEvent")?;
    assert_eq!(event.inner.userOpHash, op_hash);
    assert!(event.inner.success);
    assert!(event.inner.actualGasCost > U256::ZERO);
    Ok(())
}

/// The JSON-RPC port also speaks WebSocket: upgrade, one request frame, one response frame.
/// (Raw frames, so the test needs no WebSocket client crate.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_on_the_rpc_port() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let node = TestNode::spawn().await?;
    let addr = node.node()?.rpc_addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(upgrade.as_bytes()).await?;

    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
    }
    let head = String::from_utf8(head)?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // One masked text frame (client frames must be masked), payload under 126 bytes.
    let request = br#"{"jsonrpc":"2.0","id":7,"method":"eth_chainId","params":[]}"#;
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | request.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(request.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await?;

    let opcode = stream.read_u8().await?;
    assert_eq!(opcode, 0x81, "a final text frame");
    let len = match stream.read_u8().await? {
        126 => stream.read_u16().await? as usize,
        n => n as usize,
    };
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await?;
    let response: serde_json::Value = serde_json::from_slice(&payload)?;
    let chain_id = node.chain().provider().get_chain_id().await?;
    assert_eq!(response["id"], 7);
    assert_eq!(response["result"], format!("{chain_id:#x}"));
    node.shutdown().await
}
