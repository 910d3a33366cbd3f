//! Settlement batches on Anvil (issue #7): records built by the node's code, committed by their
//! Merkle root in a type-3 transaction whose blob carries them, verify on chain one by one
//! through `SettlementAnchor.verify`; the anchor's blob hash is the sidecar's; the blob decodes
//! back to the records; a retried commit is a no-op and another root for the same batch id is
//! refused.

use alloy::{
    consensus::Transaction as _,
    network::EthereumWallet,
    primitives::{Address, B256, U256, aliases::U48, keccak256},
    providers::{Provider, ProviderBuilder},
};
use settled_contracts::SettlementAnchor;
use settled_settlement::{
    BatchContext, MerkleTree, SettlementRecord, decode_payload, encode_payload, payload_of,
    sidecar, verify_proof,
};
use settled_tests::{TestChain, TestResult};

fn records(n: u64) -> Vec<SettlementRecord> {
    (1..=n)
        .map(|id| SettlementRecord {
            stream_id: id * 3,
            payer: Address::repeat_byte(0x11),
            payee: Address::repeat_byte(0x22),
            token: Address::repeat_byte(0x33),
            seconds_billed: 600,
            amount: 600_000_000 + u128::from(id),
            cumulative_amount: 1_800_000_000 + u128::from(id) * 3,
            usage_digest: if id % 10 == 0 { keccak256(id.to_be_bytes()) } else { B256::ZERO },
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_committed_in_a_blob_verifies_record_by_record() -> TestResult {
    let chain = TestChain::spawn().await?;
    let operator = chain.signer(3)?;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(operator.clone()))
        .connect_http(chain.anvil().endpoint().parse()?);
    let deployment = chain.deployment();
    let anchor = SettlementAnchor::new(deployment.settlement_anchor, &provider);

    let context = BatchContext {
        chain_id: deployment.chain_id,
        vault: deployment.stream_vault,
        batch_id: 1,
        period_start: 1_700_000_000,
        period_end: 1_700_000_600,
    };
    let records = records(1_000);
    let encoded: Vec<_> = records.iter().map(|r| r.encode(&context)).collect();
    let tree = MerkleTree::new(records.iter().map(|r| r.leaf(&context)).collect());
    let payload = encode_payload(&context, &records)?;
    let sidecar = sidecar(&payload)?;
    let total: u128 = records.iter().map(|r| r.amount).sum();
    let (start, end) = (U48::from(context.period_start), U48::from(context.period_end));

    let commit = anchor
        .commit(U256::from(1), tree.root(), 1_000, total, start, end)
        .sidecar(sidecar.clone());
    let receipt = commit.send().await?.get_receipt().await?;
    assert!(receipt.status(), "commit mined");
    assert!(receipt.blob_gas_used.is_some_and(|g| g == 131_072), "one blob");

    let batch = anchor.getBatch(operator.address(), U256::from(1)).call().await?;
    assert_eq!(batch.root, tree.root());
    assert_eq!(Some(batch.blobHash), sidecar.versioned_hash_for_blob(0), "the blob's hash");
    assert_eq!((batch.recordCount, batch.totalAmount), (1_000, total));

    // Every record proves locally and on chain; a tampered one does not.
    for (i, record) in encoded.iter().enumerate() {
        let proof = tree.proof(i).ok_or("no proof")?;
        assert!(verify_proof(records[i].leaf(&context), &proof, tree.root()), "local {i}");
        if i % 97 == 0 || i == encoded.len() - 1 {
            let ok = anchor
                .verify(operator.address(), U256::from(1), record.to_vec().into(), proof.clone())
                .call()
                .await?;
            assert!(ok, "on chain {i}");
            let mut tampered = record.to_vec();
            tampered[140] ^= 1; // the amount
            let forged = anchor
                .verify(operator.address(), U256::from(1), tampered.into(), proof)
                .call()
                .await?;
            assert!(!forged, "tampered {i}");
        }
    }

    // The blob decodes back to the records, with the parties the chain would give.
    let data =
        payload_of(&sidecar.blobs[0], &sidecar.commitments[0], &sidecar.proofs[0], batch.blobHash)?;
    let parties = |_| {
        Ok((Address::repeat_byte(0x11), Address::repeat_byte(0x22), Address::repeat_byte(0x33)))
    };
    assert_eq!(decode_payload(&data, parties)?, (context, records.clone()));

    // A retried commit does nothing; another root for batch 1 is refused.
    let again = anchor
        .commit(U256::from(1), tree.root(), 1_000, total, start, end)
        .sidecar(sidecar.clone());
    assert!(again.send().await?.get_receipt().await?.status(), "a retry is a no-op");
    let other =
        anchor.commit(U256::from(1), keccak256(b"other"), 1, 1, start, end).sidecar(sidecar);
    assert!(other.call().await.is_err(), "another root is refused");
    let tx = provider
        .get_transaction_by_hash(receipt.transaction_hash)
        .await?
        .ok_or("no transaction")?;
    assert_eq!(
        tx.blob_versioned_hashes().map(<[B256]>::to_vec),
        Some(vec![batch.blobHash]),
        "the transaction carried the blob"
    );
    Ok(())
}

/// Sum of `Withdrawn` amounts to `payee` in blocks `(from, to]`... read as balances instead:
/// the payees' token balances before and after a period.
async fn balances<P: Provider>(
    usdc: &settled_contracts::MockUSDC::MockUSDCInstance<P>,
    payees: &[Address],
) -> TestResult<Vec<U256>> {
    let mut out = Vec::new();
    for payee in payees {
        out.push(usdc.balanceOf(*payee).call().await?);
    }
    Ok(out)
}

/// Two settlement periods of a node's 1,000 streams on Anvil: each round pays every stream's covered
/// debt to its payee in `withdrawBatch` transactions and commits one batch in a blob; every
/// stream's receipt (over the RPC) verifies on chain; the blob from `settlement_getBatch`
/// matches the anchor's versioned hash and decodes to the batch's records; the records' amounts
/// equal what each payee received, to the base unit; cumulative amounts carry over; usage the
/// billing backend reported is folded into its streams' records and invoice lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_periods_settle_and_every_receipt_verifies() -> TestResult {
    use alloy::{primitives::aliases::U96, providers::ext::AnvilApi};
    use serde_json::json;
    use settled_contracts::{MockUSDC, StreamVault};
    use settled_settlement::{SettlementReceipt, fold_usage, settlement_codes};
    let node = settled_tests::TestNode::spawn_operator(|config| {
        config.settlement.withdraw_batch = 16;
        config.billing.api_keys = vec![settled_streams::ApiKey {
            name: "vendor".into(),
            keccak256: keccak256(b"vendor-token"),
            payees: Vec::new(),
            all: true,
        }];
    })
    .await?;
    let chain = node.chain();
    let provider = chain.provider();
    let deployment = chain.deployment();
    let url = node.node()?.rpc_url().to_string();
    let (payer, operator) = (chain.account(3)?, chain.account(5)?);
    let payees = [chain.account(4)?, chain.account(6)?];
    chain.fund_payer(payer, U256::from(10u128.pow(15))).await?;
    let usdc = MockUSDC::new(deployment.usdc, provider);
    let vault = StreamVault::new(deployment.stream_vault, provider);
    let anchor = SettlementAnchor::new(deployment.settlement_anchor, provider);

    // 1,000 streams, two payees, rates from 0.013 to 13 USDC/s; some run dry within a period.
    const STREAMS: u64 = 1_000;
    let first_id = vault.nextStreamId().call().await?;
    let mut last = None;
    for i in 0..STREAMS {
        let rate = 13_000_000_000_000_000u128 * u128::from(1 + i);
        let deposit = if i % 7 == 0 { 1_000_000 } else { 10_000_000_000 };
        let open = vault.open(
            payees[(i % 2) as usize],
            deployment.usdc,
            U96::from(rate),
            operator,
            U96::ZERO,
            U96::ZERO,
            deposit,
        );
        // Anvil mines each on arrival: no need to wait for each receipt.
        last = Some(open.from(payer).send().await?);
    }
    let last = last.ok_or("no streams")?.get_receipt().await?;
    assert!(last.status());
    let ids: Vec<U256> = (0..STREAMS).map(|i| first_id + U256::from(i)).collect();
    assert_eq!(vault.nextStreamId().call().await?, first_id + U256::from(STREAMS));
    let settler = node.node()?.settler().ok_or("no settler")?;

    let billing = |method: &'static str, params: serde_json::Value| {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        let request = alloy::transports::http::reqwest::Client::new()
            .post(&url)
            .bearer_auth("vendor-token")
            .json(&body)
            .send();
        async move { TestResult::Ok(request.await?.json::<serde_json::Value>().await?) }
    };
    // The billing backend reports usage for two streams in the first period: the records carry
    // the fold of what was reported, by (second, digest).
    let now = provider.get_block_by_number(Default::default()).await?.ok_or("no head")?;
    let (usage_a, usage_b) = (keccak256(b"rows 1-40"), keccak256(b"rows 41-90"));
    let (one, two) = (ids[1].to::<u64>(), ids[2].to::<u64>());
    let t = now.header.timestamp;
    for (stream, at, digest) in [(one, t, usage_b), (one, t - 1, usage_a)] {
        let reported = billing(
            "stream_recordUsage",
            json!([{ "streamId": stream.to_string(), "digest": digest, "at": at }]),
        )
        .await?;
        assert_eq!(reported["result"]["at"], json!(at), "{reported}");
    }
    let reported =
        billing("stream_recordUsage", json!([{ "streamId": two.to_string(), "digest": usage_a }]))
            .await?;
    let two_at = reported["result"]["at"].as_u64().ok_or("no at")?;
    let expected_usage = std::collections::HashMap::from([
        (one, fold_usage(fold_usage(B256::ZERO, t - 1, usage_a), t, usage_b)),
        (two, fold_usage(B256::ZERO, two_at, usage_a)),
    ]);

    let mut previous_cumulative = std::collections::HashMap::new();
    let at_start = balances(&usdc, &payees).await?;
    for period in 1..=2u64 {
        if period == 2 {
            // The first period is settled: a late report for it is refused, not lost silently.
            let late = billing(
                "stream_recordUsage",
                json!([{ "streamId": one.to_string(), "digest": usage_a, "at": t }]),
            )
            .await?;
            assert_eq!(late["error"]["code"], json!(settlement_codes::INVALID_PARAMS), "{late}");
            // Stream 3 pauses mid-period: it bills fewer seconds.
            vault.pause(ids[3]).from(payer).send().await?.get_receipt().await?;
        }
        provider.anvil_increase_time(600).await?;
        provider.anvil_mine(Some(1), None).await?;
        let before = balances(&usdc, &payees).await?;
        let round = settler.settle().await?;
        assert_eq!(round.committed, vec![period], "one batch per period");
        assert!(!round.withdrawals.is_empty());
        let after = balances(&usdc, &payees).await?;

        let batch = settled_tests::rpc::call_url(&url, "settlement_getBatch", json!([period]))
            .await?
            .map_err(|e| format!("{e:?}"))?;
        let records: Vec<SettlementRecord> = serde_json::from_value(batch["records"].clone())?;
        let on_chain = anchor.getBatch(operator, U256::from(period)).call().await?;
        // Token amounts are decimal strings on the wire (exact through JSON.parse above 2^53).
        assert_eq!(batch["total"], json!(on_chain.totalAmount.to_string()));
        assert!(batch["records"][0]["amount"].is_string(), "{}", batch["records"][0]);
        assert_eq!(serde_json::from_value::<B256>(batch["root"].clone())?, on_chain.root);
        assert_eq!(on_chain.recordCount as usize, records.len());

        // What each payee received is what the records say, to the base unit.
        for (i, payee) in payees.iter().enumerate() {
            let recorded: u128 =
                records.iter().filter(|r| r.payee == *payee).map(|r| r.amount).sum();
            assert_eq!(U256::from(recorded), after[i] - before[i], "period {period} payee {i}");
        }
        assert_eq!(on_chain.totalAmount, records.iter().map(|r| r.amount).sum::<u128>());

        // The blob the node serves is the one committed, and decodes to the records.
        let blob: alloy::primitives::Bytes = serde_json::from_value(batch["blob"].clone())?;
        let commitment: alloy::primitives::Bytes =
            serde_json::from_value(batch["commitment"].clone())?;
        let proof: alloy::primitives::Bytes = serde_json::from_value(batch["proof"].clone())?;
        let data = payload_of(
            &alloy::eips::eip4844::Blob::try_from(blob.as_ref())?,
            &alloy::eips::eip4844::Bytes48::try_from(commitment.as_ref())?,
            &alloy::eips::eip4844::Bytes48::try_from(proof.as_ref())?,
            on_chain.blobHash,
        )?;
        let mut parties = std::collections::HashMap::new();
        for record in &records {
            let s = vault.getStream(U256::from(record.stream_id)).call().await?;
            parties.insert(record.stream_id, (s.payer, s.payee, s.token));
        }
        let (_, decoded) = decode_payload(&data, |id| {
            parties.get(&id).copied().ok_or_else(|| {
                settled_settlement::SettlementError::Malformed(format!("unknown stream {id}"))
            })
        })?;
        assert_eq!(decoded, records);

        // Every stream's receipt verifies on chain.
        for record in &records {
            let receipt: SettlementReceipt = serde_json::from_value(
                settled_tests::rpc::call_url(
                    &url,
                    "settlement_getReceipt",
                    json!([record.stream_id.to_string(), period]),
                )
                .await?
                .map_err(|e| format!("{e:?}"))?,
            )?;
            assert!(receipt.committed);
            assert_eq!(receipt.blob_versioned_hash, on_chain.blobHash);
            let ok = anchor
                .verify(
                    operator,
                    U256::from(period),
                    receipt.encoded.clone(),
                    receipt.proof.clone(),
                )
                .call()
                .await?;
            assert!(ok, "stream {} in batch {period}", record.stream_id);
            let cumulative_before =
                previous_cumulative.get(&record.stream_id).copied().unwrap_or(0);
            assert_eq!(record.cumulative_amount, cumulative_before + record.amount);
            previous_cumulative.insert(record.stream_id, record.cumulative_amount);
        }
        for record in &records {
            let expected = match period {
                1 => expected_usage.get(&record.stream_id).copied().unwrap_or_default(),
                _ => B256::ZERO,
            };
            assert_eq!(record.usage_digest, expected, "stream {}", record.stream_id);
        }
        if period == 2 {
            let paused = records.iter().find(|r| r.stream_id == ids[3].to::<u64>());
            let running = records.iter().find(|r| r.stream_id == ids[5].to::<u64>());
            assert!(
                paused.zip(running).is_some_and(|(p, r)| p.seconds_billed < r.seconds_billed),
                "the paused stream billed fewer seconds"
            );
        }
    }
    // The payer's invoice for both periods: its totals are what the payees received on chain.
    let invoice =
        billing("billing_invoice", json!([{ "payer": payer, "from": 0, "to": u64::MAX / 2 }]))
            .await?;
    let invoice = &invoice["result"];
    let line = invoice["lines"]
        .as_array()
        .and_then(|lines| {
            lines
                .iter()
                .find(|l| l["batchId"] == json!(1) && l["streamId"] == json!(one.to_string()))
        })
        .ok_or("no invoice line for the stream with usage")?;
    assert_eq!(line["usageDigest"], json!(expected_usage[&one]));
    let at_end = balances(&usdc, &payees).await?;
    let received = (at_end[0] - at_start[0]) + (at_end[1] - at_start[1]);
    assert_eq!(invoice["totals"][0]["token"], json!(deployment.usdc));
    assert_eq!(
        invoice["totals"][0]["amount"].as_str().map(str::parse::<U256>).transpose()?,
        Some(received)
    );
    assert_eq!(invoice["batchIds"], json!([1, 2]));
    let csv = invoice["csv"].as_str().ok_or("no csv")?;
    let lines = invoice["lines"].as_array().map_or(0, Vec::len);
    assert_eq!(csv.lines().count(), 1 + lines + 1, "header, lines, one total");
    assert!(
        csv.lines()
            .last()
            .is_some_and(|l| l.starts_with("total,") && l.contains(&received.to_string()))
    );

    // Receipts check from scratch against the chain: the library and `settled verify-receipt`.
    let receipt: SettlementReceipt = serde_json::from_value(
        settled_tests::rpc::call_url(&url, "settlement_getReceipt", json!([ids[5].to_string(), 2]))
            .await?
            .map_err(|e| format!("{e:?}"))?,
    )?;
    let endpoint = chain.anvil().endpoint();
    let checker = alloy::providers::ProviderBuilder::new().connect_http(endpoint.parse()?).erased();
    let verified = settled_settlement::verify_receipt(&checker, &checker, &receipt).await?;
    assert!(verified.valid && verified.checks.len() >= 6, "{verified:?}");
    // Tampered receipts are never valid: each is refused with the check it fails.
    let mut more = receipt.clone();
    more.record.amount += 1;
    more.record.cumulative_amount += 1;
    more.encoded = more.record.encode(&more.context).to_vec().into();
    more.leaf = settled_settlement::leaf_of(&more.encoded);
    let mut other_blob = receipt.clone();
    other_blob.blob_versioned_hash = B256::repeat_byte(1);
    let mut other_operator = receipt.clone();
    other_operator.operator = payer;
    let mut other_payee = receipt.clone();
    other_payee.record.payee = payer;
    other_payee.encoded = other_payee.record.encode(&other_payee.context).to_vec().into();
    other_payee.leaf = settled_settlement::leaf_of(&other_payee.encoded);
    for (name, bad) in [
        ("amount", more),
        ("blob", other_blob),
        ("operator", other_operator),
        ("payee", other_payee),
    ] {
        let answer = settled_settlement::verify_receipt(&checker, &checker, &bad).await;
        assert!(
            matches!(answer, Err(settled_settlement::ReceiptError::Invalid(_))),
            "{name}: {answer:?}"
        );
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("receipt.json");
    std::fs::write(&file, serde_json::to_vec(&receipt)?)?;
    let run = |file: &std::path::Path| -> TestResult<std::process::Output> {
        Ok(std::process::Command::new(settled_tests::SettledProcess::binary()?)
            .args(["verify-receipt", "--rpc-url", &endpoint])
            .arg(file)
            .output()?)
    };
    let output = run(&file)?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(printed["valid"], json!(true));
    let mut forged = receipt.clone();
    forged.proof.reverse();
    std::fs::write(&file, serde_json::to_vec(&forged)?)?;
    let output = run(&file)?;
    assert_eq!(output.status.code(), Some(1), "a forged proof exits 1");

    let metrics = node.metrics().await?;
    // The recorder is process-wide: under `cargo test` the other tests' nodes count too.
    let committed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("settled_settlement_batches_committed_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(committed.is_some_and(|n| n >= 2), "batches committed in\n{metrics}");
    assert!(metrics.contains("settled_settlement_commit_blob_gas 131072"), "{metrics}");
    assert!(metrics.contains("# HELP settled_settlement_lag_seconds"));

    let unknown =
        settled_tests::rpc::call_url(&url, "settlement_getReceipt", json!(["1", 99])).await?;
    assert_eq!(unknown.err().map(|e| e.0), Some(i64::from(settlement_codes::INVALID_PARAMS)));
    node.shutdown().await
}

/// Crash safety: `settled` (the binary) is killed with SIGKILL while its commit transaction is
/// sent but not mined; restarted on the same data directory, it finishes the batch without a
/// second commit. Every batch id has exactly one `BatchCommitted` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_between_send_and_inclusion_commits_once() -> TestResult {
    use alloy::{primitives::aliases::U96, providers::ext::AnvilApi};
    use serde_json::json;
    use settled_contracts::StreamVault;
    use settled_tests::SettledProcess;
    let chain = TestChain::spawn().await?;
    let provider = chain.provider();
    let deployment = chain.deployment();
    let (payer, payee, operator) = (chain.account(3)?, chain.account(4)?, chain.account(5)?);
    chain.fund_payer(payer, U256::from(10u128.pow(15))).await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);
    for i in 0..20u128 {
        let rate = U96::from(10u128.pow(16) * (i + 1));
        let open = vault.open(
            payee,
            deployment.usdc,
            rate,
            operator,
            U96::ZERO,
            U96::ZERO,
            10u128.pow(10),
        );
        open.from(payer).send().await?.get_receipt().await?;
    }
    provider.anvil_increase_time(600).await?;
    provider.anvil_mine(Some(1), None).await?;
    // From now on blocks are mined by this test only.
    provider.anvil_set_auto_mine(false).await?;

    let datadir = tempfile::tempdir()?;
    let key = chain.signer(5)?.to_bytes().to_string();
    let args = ["--settlement.interval-secs", "2"];
    let env = [("SETTLED_BILLING_OPERATOR_KEY", key)];
    let first = SettledProcess::start_with(&chain, datadir.path(), &args, &env).await?;
    let anchor = deployment.settlement_anchor.to_string().to_lowercase();
    // Mine whatever is pending (the withdrawals) until the commit shows up, unmined.
    let mut found = false;
    for _ in 0..300 {
        let pool: serde_json::Value = provider.raw_request("txpool_content".into(), ()).await?;
        if pool["pending"].to_string().to_lowercase().contains(&anchor) {
            found = true;
            break;
        }
        if pool["pending"].as_object().is_some_and(|p| !p.is_empty()) {
            provider.anvil_mine(Some(1), None).await?;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "no commit transaction was sent");
    first.kill()?;
    provider.anvil_mine(Some(1), None).await?;

    let second = SettledProcess::start_with(&chain, datadir.path(), &args, &env).await?;
    let stage = settled_tests::rpc::mine_until_committed(second.rpc_url(), provider, 1).await?;
    let log = std::fs::read_to_string(datadir.path().join("settled.log")).unwrap_or_default();
    assert_eq!(stage["stage"], json!("committed"), "{stage}\n{log}");
    // Let a few more rounds run, then count the commits of every batch id.
    for _ in 0..30 {
        provider.anvil_mine(Some(1), None).await?;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    second.kill()?;
    provider.anvil_mine(Some(1), None).await?;
    let mut ids = committed_batch_ids(&chain).await?;
    let committed = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), committed, "a batch id was committed twice: {ids:?}");
    assert_eq!(ids.first(), Some(&U256::from(1)));
    Ok(())
}

/// The batch id of every `BatchCommitted` the anchor logged, in order.
async fn committed_batch_ids(chain: &TestChain) -> TestResult<Vec<U256>> {
    use alloy::{rpc::types::Filter, sol_types::SolEvent};
    let filter = Filter::new()
        .address(chain.deployment().settlement_anchor)
        .event_signature(SettlementAnchor::BatchCommitted::SIGNATURE_HASH)
        .from_block(0);
    Ok(chain
        .provider()
        .get_logs(&filter)
        .await?
        .iter()
        .filter_map(|log| SettlementAnchor::BatchCommitted::decode_log_data(log.data()).ok())
        .map(|event| event.batchId)
        .collect())
}

/// An operating node (its config adjusted by `configure`) with three streams that have run for a
/// minute: one small batch to settle.
async fn three_streams_a_minute_old(
    configure: impl FnOnce(&mut settled_node::NodeConfig),
) -> TestResult<settled_tests::TestNode> {
    use alloy::providers::ext::AnvilApi;
    let node = settled_tests::TestNode::spawn_operator(configure).await?;
    let chain = node.chain();
    let (payer, payee, operator) = (chain.account(3)?, chain.account(4)?, chain.account(5)?);
    chain.fund_payer(payer, U256::from(10u128.pow(12))).await?;
    for _ in 0..3 {
        chain.open_stream(payer, payee, operator, 10u128.pow(18), 10u128.pow(9)).await?;
    }
    chain.provider().anvil_increase_time(60).await?;
    chain.provider().anvil_mine(Some(1), None).await?;
    Ok(node)
}

/// A blob fee above the bound delays the batch instead of overpaying: nothing is committed and
/// the batch waits, built; once the bound allows it, the same batch is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_fee_spike_delays_the_batch() -> TestResult {
    use serde_json::json;
    let node = three_streams_a_minute_old(|config| {
        // Anvil's blob base fee is at least 1 wei: always above this bound.
        config.settlement.max_blob_fee_wei = 0;
        config.rpc.admin = false;
    })
    .await?;
    let (chain, operator) = (node.chain(), node.chain().account(5)?);
    let (provider, deployment) = (chain.provider(), chain.deployment());
    let settler = node.node()?.settler().ok_or("no settler")?;
    let anchor = SettlementAnchor::new(deployment.settlement_anchor, provider);

    // settlement_runNow is the operator's: not served without --rpc.admin.
    let url = node.node()?.rpc_url().to_string();
    let refused = settled_tests::rpc::call_url(&url, "settlement_runNow", json!([])).await?;
    assert_eq!(refused.err().map(|e| e.0), Some(-32601));
    let round = settler.settle().await?;
    assert_eq!((round.committed.as_slice(), round.waiting.as_slice()), (&[][..], &[1][..]));
    assert!(anchor.getBatch(operator, U256::from(1)).call().await?.root.is_zero());
    let batch = settled_tests::rpc::call_url(&url, "settlement_getBatch", json!([1]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(batch["stage"]["stage"], json!("built"));
    assert!(
        node.metrics().await?.contains("settled_settlement_failures_total{cause=\"blob_fee\"} 1")
    );
    let stream = json!(batch["records"][0]["streamId"].as_u64().ok_or("no record")?.to_string());
    let receipt = |stream: serde_json::Value| {
        settled_tests::rpc::call_url(&url, "settlement_getReceipt", json!([stream, 1]))
    };
    let waiting = receipt(stream.clone()).await?.map_err(|e| format!("{e:?}"))?;
    assert_eq!((&waiting["committed"], &waiting["transactionHash"]), (&json!(false), &json!(null)));

    settler.set_max_blob_fee_wei(u128::from(u64::MAX));
    let round = settler.settle().await?;
    assert_eq!(round.committed.first(), Some(&1), "{round:?}");
    // The receipt asked before the commit is not served again with its old stage.
    let committed = receipt(stream).await?.map_err(|e| format!("{e:?}"))?;
    assert_eq!(committed["committed"], json!(true), "{committed}");
    assert!(committed["transactionHash"].is_string(), "{committed}");
    let committed = anchor.getBatch(operator, U256::from(1)).call().await?;
    assert_eq!(serde_json::from_value::<B256>(batch["root"].clone())?, committed.root);
    node.shutdown().await
}

/// A stuck commit is re-priced at its nonce: the test raises the base fee above the commit's
/// fee cap as soon as it is pending (Anvil then drops it from its pool, as a node does with an
/// underpriced transaction); after `reprice_after` the scheduler sends the same batch again at
/// the same nonce with every fee at least doubled, and it is committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_commit_is_repriced_at_its_nonce() -> TestResult {
    use std::sync::atomic::{AtomicBool, Ordering};

    use alloy::providers::ext::AnvilApi;
    let node = three_streams_a_minute_old(|config| {
        config.settlement.reprice_after = std::time::Duration::from_secs(1);
    })
    .await?;
    let chain = node.chain();
    let (provider, deployment) = (chain.provider(), chain.deployment());
    let settler = node.node()?.settler().ok_or("no settler")?;
    // From now on blocks are mined by this test only.
    provider.anvil_set_auto_mine(false).await?;

    let done = AtomicBool::new(false);
    let settle = async {
        let round = settler.settle().await;
        done.store(true, Ordering::SeqCst);
        round
    };
    let anchor_address = deployment.settlement_anchor.to_string().to_lowercase();
    let drive = async {
        let mut first = None;
        while !done.load(Ordering::SeqCst) {
            let pool: serde_json::Value = provider.raw_request("txpool_content".into(), ()).await?;
            let pending = pool["pending"].to_string().to_lowercase();
            if first.is_none() && pending.contains(&anchor_address) {
                // The commit is pending: price it out of the next block.
                let hash = pool["pending"]
                    .as_object()
                    .into_iter()
                    .flat_map(|by_sender| by_sender.values())
                    .flat_map(|by_nonce| by_nonce.as_object().into_iter().flat_map(|m| m.values()))
                    .find(|tx| {
                        tx["to"].as_str().map(str::to_lowercase) == Some(anchor_address.clone())
                    })
                    .and_then(|tx| tx["hash"].as_str().map(str::to_owned))
                    .ok_or("no commit in the pool")?;
                let tx = provider
                    .get_transaction_by_hash(hash.parse()?)
                    .await?
                    .ok_or("the pending commit is unknown")?;
                provider.anvil_set_next_block_base_fee_per_gas(tx.max_fee_per_gas() * 100).await?;
                first = Some(tx);
            }
            provider.anvil_mine(Some(1), None).await?;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        TestResult::Ok(first)
    };
    let (round, first) = tokio::join!(settle, drive);
    let (round, first) = (round?, first?.ok_or("no commit was sent")?);
    assert_eq!(round.committed, vec![1], "{round:?}");

    let batch = settler.batch(1).await?.ok_or("no batch 1")?;
    let mined = batch.stage.transaction().ok_or("no commit transaction")?;
    assert_ne!(mined, *first.inner.tx_hash(), "the first commit was priced out");
    let mined = provider.get_transaction_by_hash(mined).await?.ok_or("unknown commit")?;
    assert_eq!(mined.nonce(), first.nonce(), "the same nonce");
    assert!(mined.max_fee_per_gas() >= 2 * first.max_fee_per_gas());
    assert!(
        mined.max_priority_fee_per_gas().unwrap_or_default()
            >= 2 * first.max_priority_fee_per_gas().unwrap_or_default()
    );
    assert!(
        mined.max_fee_per_blob_gas().unwrap_or_default()
            >= 2 * first.max_fee_per_blob_gas().unwrap_or_default()
    );
    assert_eq!(committed_batch_ids(chain).await?, vec![U256::from(1)], "committed once");
    let metrics = node.metrics().await?;
    assert!(
        metrics.contains("settled_settlement_repriced_total{kind=\"commit\"} 1"),
        "{}",
        metrics.lines().filter(|l| l.contains("repriced")).collect::<Vec<_>>().join("\n")
    );
    provider.anvil_set_auto_mine(true).await?;
    node.shutdown().await
}

/// With the timer off (`--settlement.disable`), the operator settles when it asks:
/// `settlement_runNow` (`--rpc.admin`) runs one round and the batch's receipts are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_runs_now_when_asked() -> TestResult {
    use serde_json::json;
    let node = three_streams_a_minute_old(|config| {
        config.rpc.admin = true;
        config.settlement.enabled = false;
    })
    .await?;
    let url = node.node()?.rpc_url().to_string();
    let round = settled_tests::rpc::call_url(&url, "settlement_runNow", json!([]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(round["committed"], json!([1]), "{round}");
    assert_eq!(round["withdrawals"].as_array().map(Vec::len), Some(1), "{round}");
    let batch = settled_tests::rpc::call_url(&url, "settlement_getBatch", json!([1]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(batch["records"].as_array().map(Vec::len), Some(3));
    let anchor =
        SettlementAnchor::new(node.chain().deployment().settlement_anchor, node.chain().provider());
    let on_chain = anchor.getBatch(node.chain().account(5)?, U256::from(1)).call().await?;
    assert_eq!(serde_json::from_value::<B256>(batch["root"].clone())?, on_chain.root);
    node.shutdown().await
}
