//! Two or more `settled run --storage.url …` processes on one Anvil and one PostgreSQL
//! (issue #21): the harness of the failover suites.

use std::time::Duration;

use alloy::{
    primitives::{Address, U256, keccak256},
    providers::Provider,
};
use serde_json::{Value, json};
use settled_contracts::{AnvilOptions, StreamVault, TransactionSender};
use settled_store::{CallRef, Fence, Intent, Lease, PgStore, SendStore as _};
use sqlx::Row as _;
use tokio::time::Instant;

use crate::{SettledProcess, TestChain, TestResult, postgres::TestPostgres, rpc::call_with_key};

/// The billing API token every node of the cluster accepts.
pub const TOKEN: &str = "failover-token";

/// The chain, the store and what every node is started with.
pub struct Cluster {
    /// The chain (1 s blocks).
    pub chain: TestChain,
    /// The shared store's server.
    pub postgres: TestPostgres,
    /// A handle on it, to look at what the nodes wrote.
    pub store: PgStore,
    /// The stream the operator key operates (100 base units a second).
    pub stream: String,
    keys_file: String,
    /// The operator key's address.
    pub operator: Address,
}

impl Cluster {
    /// Anvil with 1 s blocks, a funded payer's stream the operator key operates, PostgreSQL,
    /// and an API key file.
    pub async fn start() -> TestResult<Self> {
        let chain =
            TestChain::spawn_with(AnvilOptions { block_time: Some(1), ..Default::default() })
                .await?;
        let (payer, payee, operator) = (chain.account(3)?, chain.account(4)?, chain.account(5)?);
        chain.fund_payer(payer, U256::from(10u128.pow(15))).await?;
        // 100 base units a second: every withdrawal of 1 is covered.
        let id = chain.open_stream(payer, payee, operator, 10u128.pow(20), 10u128.pow(12)).await?;
        // Two more blocks (1 s each): the stream has accrued before the first withdrawal.
        let opened = chain.provider().get_block_number().await?;
        while chain.provider().get_block_number().await? < opened + 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let postgres = TestPostgres::start()?;
        let store = PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?;
        let keys_dir = tempfile::tempdir()?.keep();
        let keys_file = keys_dir.join("api-keys.toml");
        let entry = format!(
            "[[keys]]\nname = \"vendor\"\nkeccak256 = \"{}\"\nall = true\n",
            keccak256(TOKEN)
        );
        std::fs::write(&keys_file, entry)?;
        let keys_file = keys_file.to_string_lossy().into_owned();
        Ok(Self { chain, postgres, store, stream: id.to_string(), keys_file, operator })
    }

    /// A billing node on the shared store, once its index has the stream.
    pub async fn node(&self, datadir: &std::path::Path) -> TestResult<SettledProcess> {
        self.node_with(datadir, &["--roles", "billing"], &[]).await
    }

    /// A node on the shared store (every role by default) with `args` and `env` besides, once
    /// its index has the stream.
    pub async fn node_with(
        &self,
        datadir: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> TestResult<SettledProcess> {
        let url = self.postgres.url();
        let mut all = vec![
            "--billing.api-keys-file",
            &self.keys_file,
            "--storage.url",
            &url,
            "--storage.lease-secs",
            "2",
        ];
        all.extend_from_slice(args);
        let mut env = env.to_vec();
        env.push(("SETTLED_BILLING_OPERATOR_KEY", self.chain.signer(5)?.to_bytes().to_string()));
        let node = SettledProcess::start_with(&self.chain, datadir, &all, &env).await?;
        for _ in 0..100 {
            let get = json!([self.stream]);
            if call_with_key(node.rpc_url(), TOKEN, "stream_get", get).await?.is_ok() {
                return Ok(node);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the stream was not indexed".into())
    }

    /// `stream_withdraw` of 1 base unit under `key` at `url` (see [`withdraw`]).
    pub async fn withdraw(&self, url: &str, key: &str) -> TestResult<(Value, usize)> {
        withdraw(url.to_owned(), self.stream.clone(), key.to_owned()).await
    }

    /// The operator key's lease: its holder's process id and its epoch, while it is live.
    pub async fn leader(&self) -> TestResult<Option<(u32, i64)>> {
        self.holder_of("operator:").await
    }

    /// The bundler key's lease: its holder's process id and its epoch, while it is live.
    pub async fn bundler_leader(&self) -> TestResult<Option<(u32, i64)>> {
        self.holder_of("bundler:").await
    }

    /// The stream index's writer: its process id and lease epoch, while it is live.
    pub async fn index_writer(&self) -> TestResult<Option<(u32, i64)>> {
        self.holder_of("stream-index:").await
    }

    /// Waits until process `pid` writes the stream index; its epoch.
    pub async fn index_written_by(&self, pid: u32, within: Duration) -> TestResult<i64> {
        self.taken_by("stream-index:", pid, within).await
    }

    /// The shared stream index's cursor (its last block), if it has one.
    pub async fn index_cursor(&self) -> TestResult<Option<u64>> {
        let row = sqlx::query("SELECT number FROM settled_stream_cursor")
            .fetch_optional(self.store.pool())
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("number"))
            .transpose()?
            .map(u64::try_from)
            .transpose()?)
    }

    /// The live lease whose name starts with `prefix`: its holder's process id and its epoch.
    async fn holder_of(&self, prefix: &str) -> TestResult<Option<(u32, i64)>> {
        let row = sqlx::query(
            "SELECT holder, epoch FROM settled_leases WHERE starts_with(name, $1) \
             AND expires_at > now()",
        )
        .bind(prefix)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let holder: String = row.try_get("holder")?;
        let pid = holder.split('/').nth(1).ok_or("holder without a pid")?.parse()?;
        Ok(Some((pid, row.try_get("epoch")?)))
    }

    /// The operator key's live lease: its holder and epoch.
    pub async fn leader_lease(&self) -> TestResult<(String, u64)> {
        let row = sqlx::query(
            "SELECT holder, epoch FROM settled_leases WHERE name LIKE 'operator:%' \
             AND expires_at > now()",
        )
        .fetch_one(self.store.pool())
        .await?;
        Ok((row.try_get("holder")?, u64::try_from(row.try_get::<i64, _>("epoch")?)?))
    }

    /// Leaves in the store (and on the chain) exactly what the leader `holder` at `epoch`
    /// leaves when it is killed at `point` in a `stream_withdraw` of 1 under `key`: its claim,
    /// its signed transaction committed as an intent with the call's record `Sent` in the same
    /// step — and, after the broadcast, the transaction in the chain's pool.
    pub async fn leave_as_leader(
        &self,
        (holder, epoch): (&str, u64),
        key: &str,
        point: KillPoint,
    ) -> TestResult {
        // The node's record id and parameter binding of this call (operator.rs).
        let id = keccak256([b"vendor".as_slice(), b"\0", key.as_bytes()].concat());
        let params =
            keccak256(format!("stream_withdraw|{}|None|Some(\"1\")", self.stream).as_bytes());
        assert_eq!(self.store.claim(id, params, holder).await?, None);
        let provider = self.chain.provider().clone();
        let sender = TransactionSender::new(provider, self.chain.signer(5)?);
        let vault = StreamVault::new(self.chain.deployment().stream_vault, self.chain.provider());
        let tx = vault.withdraw(self.stream.parse()?, 1).into_transaction_request();
        let (nonce, raw, hash) = match point {
            KillPoint::Underpriced => self.sign_underpriced(tx).await?,
            _ => {
                let signed = sender.sign(tx).await?;
                (signed.sent.nonce, signed.raw.clone(), signed.sent.hash)
            }
        };
        let intent = Intent {
            signer: self.operator,
            nonce,
            carries: format!("billing call {id}"),
            raw: raw.clone(),
            hashes: vec![hash],
        };
        let lease = Lease {
            name: format!("operator:{}", self.operator),
            holder: holder.into(),
            epoch,
            deadline: Instant::now() + Duration::from_secs(1),
        };
        let call = CallRef { id, owner: holder };
        self.store.commit_intent(&Fence::Lease(lease), &intent, Some(call)).await?;
        if let KillPoint::AfterBroadcast = point {
            sender.broadcast_raw(&raw).await?;
        }
        Ok(())
    }

    /// `tx` from the operator at its next nonce, signed with fees of 1 wei: below any base fee,
    /// so the chain refuses these bytes as they are.
    pub async fn sign_underpriced(
        &self,
        tx: alloy::rpc::types::TransactionRequest,
    ) -> TestResult<(u64, alloy::primitives::Bytes, alloy::primitives::B256)> {
        use alloy::eips::eip2718::Encodable2718 as _;
        use alloy::network::{
            EthereumWallet, NetworkTransactionBuilder as _, TransactionBuilder as _,
        };
        let provider = self.chain.provider();
        let nonce = provider.get_transaction_count(self.operator).pending().await?;
        let tx = tx.from(self.operator).nonce(nonce);
        let gas = provider.estimate_gas(tx.clone()).await? * 2;
        let tx = tx
            .with_chain_id(provider.get_chain_id().await?)
            .gas_limit(gas)
            .max_fee_per_gas(1)
            .max_priority_fee_per_gas(1);
        let envelope = tx.build(&EthereumWallet::from(self.chain.signer(5)?)).await?;
        Ok((nonce, envelope.encoded_2718().into(), *envelope.tx_hash()))
    }

    /// Waits until process `pid` leads the operator key; its epoch.
    pub async fn led_by(&self, pid: u32, within: Duration) -> TestResult<i64> {
        self.taken_by("operator:", pid, within).await
    }

    /// Waits until process `pid` leads the bundler key; its epoch.
    pub async fn bundling_led_by(&self, pid: u32, within: Duration) -> TestResult<i64> {
        self.taken_by("bundler:", pid, within).await
    }

    async fn taken_by(&self, prefix: &str, pid: u32, within: Duration) -> TestResult<i64> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some((holder, epoch)) = self.holder_of(prefix).await?
                && holder == pid
            {
                return Ok(epoch);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("process {pid} did not take the {prefix} lease within {within:?}").into())
    }

    /// How many transactions the operator key has had mined.
    pub async fn sent(&self) -> TestResult<u64> {
        Ok(self.chain.provider().get_transaction_count(self.operator).await?)
    }

    /// How many intents were committed under `epoch`.
    pub async fn intents_of_epoch(&self, epoch: i64) -> TestResult<i64> {
        let row = sqlx::query("SELECT count(*) AS n FROM settled_intents WHERE epoch = $1")
            .bind(epoch)
            .fetch_one(self.store.pool())
            .await?;
        Ok(row.try_get("n")?)
    }
}

/// Sends signal `name` (`-STOP`, `-CONT`) to process `pid`.
pub fn signal(pid: u32, name: &str) -> TestResult {
    let status = std::process::Command::new("kill").args([name, &pid.to_string()]).status()?;
    if !status.success() {
        return Err(format!("kill {name} {pid} failed").into());
    }
    Ok(())
}

/// `stream_withdraw` of 1 base unit of `stream` under `key`, retried while the node answers an
/// error (busy, no leader, store down) for up to 30 s: the answer, and how many errors came
/// first.
pub async fn withdraw(url: String, stream: String, key: String) -> TestResult<(Value, usize)> {
    let params = json!([{ "streamId": stream, "idempotencyKey": key, "amount": "1" }]);
    let mut refusals = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call_with_key(&url, TOKEN, "stream_withdraw", params.clone()).await {
            Ok(Ok(answer)) => return Ok((answer, refusals)),
            Ok(Err((code, message))) if Instant::now() < deadline => {
                assert!(matches!(code, -32004 | -32603), "{key}: {code} {message}");
                refusals += 1;
            }
            Ok(Err(refused)) => return Err(format!("{key}: {refused:?}").into()),
            Err(e) => return Err(format!("{key}: {e}").into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where a leader is killed in a billing call.
#[derive(Debug, Clone, Copy)]
pub enum KillPoint {
    /// Its intent committed, nothing broadcast.
    AfterIntentCommit,
    /// Broadcast, not yet mined.
    AfterBroadcast,
    /// Its intent committed with fees the chain refuses (the market moved): the new leader
    /// must fee-bump the same nonce and calldata.
    Underpriced,
}
