//! The Anvil end-to-end harness of settled.
//!
//! [`TestChain`] spawns a fresh Anvil on a free loopback port (killed on drop, also when the
//! test panics) and deploys everything; [`TestNode`] adds a settled node running in-process on
//! free ports against that chain and hands the test typed clients for both.

pub mod cluster;
pub mod invoice_rules;
pub mod op_stack;
pub mod postgres;
pub mod rpc;

use std::{path::PathBuf, time::Duration};

use alloy::{
    eips::{BlockId, eip7702::SignedAuthorization},
    network::{EthereumWallet, TransactionBuilder, TransactionBuilder7702},
    primitives::{Address, B256, Bytes, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::{TransactionReceipt, TransactionRequest, state::StateOverridesBuilder},
    signers::{Signer, local::PrivateKeySigner},
    sol_types::{SolCall, SolValue},
    transports::http::reqwest,
};
use serde_json::Value;
use settled_contracts::{
    AnvilOptions, Deployment, EntryPointVersion, LocalAnvil, MockUSDC, PackedUserOperation,
    PaymasterFunding, deploy_all, fund_paymaster, pack_u128s, v07, v08,
};
use settled_node::{ChainSource, NodeConfig, NodeHandle, launch};
use settled_sim::{
    BlockContext, BlockState, SimError, SimOverrides, Simulator, ValidationOutcome,
    simulate_validation_calldata,
};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The `p` quantile (0..=1) of `sorted`, nearest rank; the default for an empty slice.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// Test results: any error fails the test with its message.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A fresh Anvil with settled's contracts deployed.
#[derive(Debug)]
pub struct TestChain {
    anvil: LocalAnvil,
    provider: DynProvider,
    deployment: Deployment,
}

impl TestChain {
    /// Spawns Anvil (Prague rules, instant mining) and deploys everything.
    pub async fn spawn() -> TestResult<Self> {
        Self::spawn_with(AnvilOptions::default()).await
    }

    /// Spawns Anvil with `options` and deploys everything.
    pub async fn spawn_with(options: AnvilOptions) -> TestResult<Self> {
        let anvil = tokio::task::spawn_blocking(move || LocalAnvil::spawn(&options)).await??;
        // Dev account 0 signs by default; the others when named as `from`.
        let mut wallet = EthereumWallet::new(anvil.signer(0).ok_or("anvil has no dev accounts")?);
        for index in 1..anvil.addresses().len() {
            if let Some(signer) = anvil.signer(index) {
                wallet.register_signer(signer);
            }
        }
        let provider =
            ProviderBuilder::new().wallet(wallet).connect_http(anvil.endpoint().parse()?).erased();
        let deployer = *anvil.addresses().first().ok_or("anvil has no dev accounts")?;
        let deployment = deploy_all(&provider, deployer).await?;
        let signer =
            *anvil.addresses().get(PAYMASTER_SIGNER_ACCOUNT).ok_or("too few dev accounts")?;
        let funding = PaymasterFunding {
            signer,
            min_deposit: U256::from(100u128 * 10u128.pow(18)),
            stake: U256::from(10u128.pow(18)),
            unstake_delay_sec: 86_400,
        };
        for version in EntryPointVersion::ALL {
            fund_paymaster(&provider, deployer, deployment.paymaster(version), &funding).await?;
        }
        Ok(Self { anvil, provider, deployment })
    }

    /// A provider for the chain that signs for every Anvil dev account.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The deployed contracts.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The Anvil process.
    pub fn anvil(&self) -> &LocalAnvil {
        &self.anvil
    }

    /// Dev account `index` (funded with ETH by Anvil).
    pub fn account(&self, index: usize) -> TestResult<Address> {
        Ok(*self.anvil.addresses().get(index).ok_or("no such dev account")?)
    }

    /// Mints `amount` USDC to dev account `payer` and approves the `StreamVault` for all of it:
    /// a payer ready to open streams.
    pub async fn fund_payer(&self, payer: Address, amount: U256) -> TestResult {
        let usdc = MockUSDC::new(self.deployment.usdc, &self.provider);
        usdc.mint(payer, amount).send().await?.get_receipt().await?;
        let approve = usdc.approve(self.deployment.stream_vault, U256::MAX).from(payer);
        approve.send().await?.get_receipt().await?;
        Ok(())
    }

    /// Opens a USDC stream from dev account `payer` (funded, see [`Self::fund_payer`]) to
    /// `payee` at `rate` (18-decimal units per second), operated by `operator`, with `deposit`
    /// base units, no caps; its id.
    pub async fn open_stream(
        &self,
        payer: Address,
        payee: Address,
        operator: Address,
        rate: u128,
        deposit: u128,
    ) -> TestResult<U256> {
        use alloy::primitives::aliases::U96;
        let vault =
            settled_contracts::StreamVault::new(self.deployment.stream_vault, &self.provider);
        let open = vault
            .open(
                payee,
                self.deployment.usdc,
                U96::from(rate),
                operator,
                U96::ZERO,
                U96::ZERO,
                deposit,
            )
            .from(payer);
        let receipt = open.send().await?.get_receipt().await?;
        if !receipt.status() {
            return Err("open reverted".into());
        }
        Ok(vault.nextStreamId().call().await? - U256::from(1))
    }

    /// Signer of dev account `index`.
    pub fn signer(&self, index: usize) -> TestResult<PrivateKeySigner> {
        Ok(self.anvil.signer(index).ok_or("no such dev account")?)
    }
}

impl TestChain {
    /// `owner`'s SimpleAccount (salt 0) for `version`: its counterfactual address and the
    /// `initCode` that deploys it through the factory.
    pub async fn simple_account(
        &self,
        version: EntryPointVersion,
        owner: Address,
    ) -> TestResult<(Address, Bytes)> {
        let (factory, create) = match version {
            EntryPointVersion::V07 => (
                self.deployment.simple_account_factory_v07,
                v07::SimpleAccountFactory::createAccountCall { owner, salt: U256::ZERO }
                    .abi_encode(),
            ),
            EntryPointVersion::V08 => (
                self.deployment.simple_account_factory_v08,
                v08::SimpleAccountFactory::createAccountCall { owner, salt: U256::ZERO }
                    .abi_encode(),
            ),
        };
        let sender = v07::SimpleAccountFactory::new(factory, &self.provider)
            .getAddress(owner, U256::ZERO)
            .call()
            .await?;
        let mut init_code = factory.to_vec();
        init_code.extend_from_slice(&create);
        Ok((sender, init_code.into()))
    }

    /// A signed UserOperation that creates `owner`'s SimpleAccount (salt 0) for `version` through
    /// its factory, with no call; the account's EntryPoint deposit is topped up by `prefund` wei
    /// first (0: none, so the op cannot pay).
    pub async fn account_creation_op(
        &self,
        version: EntryPointVersion,
        owner: &PrivateKeySigner,
        prefund: u128,
    ) -> TestResult<PackedUserOperation> {
        let entry_point = version.canonical_address();
        let (sender, init_code) = self.simple_account(version, owner.address()).await?;
        if prefund > 0 {
            v07::IEntryPoint::new(entry_point, &self.provider)
                .depositTo(sender)
                .value(U256::from(prefund))
                .send()
                .await?
                .get_receipt()
                .await?;
        }
        let mut op = PackedUserOperation {
            sender,
            nonce: U256::ZERO,
            initCode: init_code,
            callData: Bytes::new(),
            accountGasLimits: pack_u128s(1_000_000, 50_000),
            preVerificationGas: U256::from(60_000),
            gasFees: pack_u128s(1_000_000_000, 20_000_000_000),
            paymasterAndData: Bytes::new(),
            signature: Bytes::new(),
        };
        op.signature = self.sign_op(version, owner, &op).await?;
        Ok(op)
    }

    /// Runs `f` with a default [`Simulator`] over the state of the current block, on a blocking
    /// thread (simulations block on state reads).
    pub async fn in_revm<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Simulator, &BlockState, &BlockContext) -> T + Send + 'static,
    ) -> TestResult<T> {
        let provider = self.provider.clone();
        let block = BlockId::number(provider.get_block_number().await?);
        let context = BlockContext::fetch(&provider, block).await?;
        let state = BlockState::new(provider, block, tokio::runtime::Handle::current());
        Ok(tokio::task::spawn_blocking(move || f(&Simulator::default(), &state, &context)).await?)
    }

    /// `simulateValidation(op)` in revm, pinned to the current block.
    pub async fn simulate_in_revm(
        &self,
        version: EntryPointVersion,
        op: &PackedUserOperation,
    ) -> TestResult<Result<ValidationOutcome, SimError>> {
        let op = op.clone();
        self.in_revm(move |simulator, state, context| {
            simulator.simulate_validation(state, context, version, &op, SimOverrides::none())
        })
        .await
    }

    /// `handleOps(ops, beneficiary)` sent by dev account 0 (in a type-4 transaction carrying
    /// `authorizations` when there are any); the mined receipt.
    pub async fn handle_ops(
        &self,
        version: EntryPointVersion,
        ops: Vec<PackedUserOperation>,
        beneficiary: Address,
        authorizations: Vec<SignedAuthorization>,
    ) -> TestResult<TransactionReceipt> {
        let input: Bytes = v07::IEntryPoint::handleOpsCall { ops, beneficiary }.abi_encode().into();
        let mut tx = TransactionRequest::default()
            .with_to(version.canonical_address())
            .with_input(input)
            .with_gas_limit(10_000_000);
        if !authorizations.is_empty() {
            tx = tx.with_authorization_list(authorizations);
        }
        Ok(self.provider.send_transaction(tx).await?.get_receipt().await?)
    }

    /// The same call through Anvil: `eth_call` with the simulations code at the EntryPoint,
    /// pinned to the current block; the return data, or the error text.
    pub async fn simulate_in_anvil(
        &self,
        version: EntryPointVersion,
        op: &PackedUserOperation,
    ) -> TestResult<Result<Bytes, String>> {
        let (tx, overrides) = simulate_validation_request(version, op)?;
        let block = BlockId::number(self.provider.get_block_number().await?);
        let result = self.provider.call(tx).block(block).overrides(overrides).await;
        Ok(result.map_err(|e| e.to_string()))
    }

    /// The EntryPoint's hash of `op`.
    pub async fn op_hash(
        &self,
        version: EntryPointVersion,
        op: &PackedUserOperation,
    ) -> TestResult<B256> {
        let entry_point = version.canonical_address();
        Ok(match version {
            EntryPointVersion::V07 => {
                v07::IEntryPoint::new(entry_point, &self.provider)
                    .getUserOpHash(op.clone())
                    .call()
                    .await?
            }
            EntryPointVersion::V08 => {
                v08::IEntryPoint::new(entry_point, &self.provider)
                    .getUserOpHash(SolValue::abi_decode(&op.abi_encode())?)
                    .call()
                    .await?
            }
        })
    }

    /// The v0.8 EntryPoint's hash of an EIP-7702 `op` whose sender delegates to `delegate` (the
    /// hash covers the delegate, read from the sender's code: an override until it is mined).
    pub async fn op_hash_delegated(
        &self,
        op: &PackedUserOperation,
        delegate: Address,
    ) -> TestResult<B256> {
        let mut code = vec![0xef, 0x01, 0x00];
        code.extend_from_slice(delegate.as_slice());
        let overrides = StateOverridesBuilder::default().with_code(op.sender, code).build();
        Ok(v08::IEntryPoint::new(EntryPointVersion::V08.canonical_address(), &self.provider)
            .getUserOpHash(SolValue::abi_decode(&op.abi_encode())?)
            .state(overrides)
            .call()
            .await?)
    }

    /// `signer`'s EIP-7702 authorization to delegate to `delegate`, at its current nonce.
    pub async fn authorize(
        &self,
        signer: &PrivateKeySigner,
        delegate: Address,
    ) -> TestResult<SignedAuthorization> {
        let nonce = self.provider.get_transaction_count(signer.address()).await?;
        let authorization = alloy::eips::eip7702::Authorization {
            chain_id: U256::from(self.provider.get_chain_id().await?),
            address: delegate,
            nonce,
        };
        let signature = signer.sign_hash(&authorization.signature_hash()).await?;
        Ok(authorization.into_signed(signature))
    }

    /// `owner`'s SimpleAccount signature over `op`: v0.7 signs the hash as an EIP-191 message,
    /// v0.8's hash is already EIP-712 and is signed as is.
    pub async fn sign_op(
        &self,
        version: EntryPointVersion,
        owner: &PrivateKeySigner,
        op: &PackedUserOperation,
    ) -> TestResult<Bytes> {
        let hash = self.op_hash(version, op).await?;
        let signature = match version {
            EntryPointVersion::V07 => owner.sign_message(hash.as_slice()).await?,
            EntryPointVersion::V08 => owner.sign_hash(&hash).await?,
        };
        Ok(signature.as_bytes().to_vec().into())
    }
}

/// `account.execute(usdc, 0, transfer(to, amount))` for `version`'s SimpleAccount (or the v0.8
/// Simple7702Account, which shares the v0.8 `execute`).
pub fn usdc_transfer(version: EntryPointVersion, usdc: Address, to: Address, amount: u64) -> Bytes {
    let transfer = MockUSDC::transferCall { to, value: U256::from(amount) }.abi_encode().into();
    match version {
        EntryPointVersion::V07 => {
            v07::SimpleAccount::executeCall { dest: usdc, value: U256::ZERO, func: transfer }
                .abi_encode()
        }
        EntryPointVersion::V08 => {
            v08::SimpleAccount::executeCall { target: usdc, value: U256::ZERO, data: transfer }
                .abi_encode()
        }
    }
    .into()
}

/// A well-formed ECDSA signature by a random key: SimpleAccount reports it as a signature failure
/// instead of reverting (a malformed one makes OpenZeppelin's ECDSA revert), as wallets' stubs do.
pub fn stub_signature() -> Bytes {
    use alloy::signers::SignerSync;
    let signature = PrivateKeySigner::random()
        .sign_hash_sync(&alloy::primitives::B256::repeat_byte(0x5a))
        .map(|s| s.as_bytes().to_vec())
        .unwrap_or_else(|_| vec![0x5a; 65]);
    signature.into()
}

/// An op without gas limits, with fees, and a stub signature.
pub fn unestimated_op(
    sender: Address,
    nonce: u64,
    init_code: Bytes,
    call_data: Bytes,
) -> PackedUserOperation {
    let mut op = PackedUserOperation {
        sender,
        nonce: U256::from(nonce),
        initCode: init_code,
        callData: call_data,
        accountGasLimits: Default::default(),
        preVerificationGas: U256::ZERO,
        gasFees: Default::default(),
        paymasterAndData: Bytes::new(),
        signature: stub_signature(),
    };
    op.set_fees(1_000_000_000, 20_000_000_000);
    op
}

/// The `UserOperationEvent`s in `receipt` (both versions declare the event identically).
pub fn user_operation_events(
    receipt: &TransactionReceipt,
) -> Vec<v07::IEntryPoint::UserOperationEvent> {
    receipt
        .inner
        .logs()
        .iter()
        .filter_map(|log| log.log_decode::<v07::IEntryPoint::UserOperationEvent>().ok())
        .map(|log| log.inner.data)
        .collect()
}

/// The `eth_call` a tracer-less bundler makes for `simulateValidation(op)`: the request and the
/// code override that puts `EntryPointSimulations` at the EntryPoint.
pub fn simulate_validation_request(
    version: EntryPointVersion,
    op: &PackedUserOperation,
) -> TestResult<(TransactionRequest, alloy::rpc::types::state::StateOverride)> {
    let entry_point = version.canonical_address();
    let overrides =
        StateOverridesBuilder::default().with_code(entry_point, version.simulations_code()).build();
    let tx = TransactionRequest::default()
        .with_to(entry_point)
        .with_input(simulate_validation_calldata(version, op)?)
        .with_gas_limit(settled_sim::SimulationLimits::default().gas_cap);
    Ok((tx, overrides))
}

/// A `settled run` process (the real binary) on `chain`, killed on drop — for crash tests.
#[derive(Debug)]
pub struct SettledProcess {
    child: std::process::Child,
    rpc_url: String,
}

impl SettledProcess {
    /// The `settled` binary next to this test executable (cargo builds it for the workspace's
    /// tests).
    pub fn binary() -> TestResult<PathBuf> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().and_then(|deps| deps.parent()).ok_or("no target directory")?;
        let binary = dir.join("settled");
        if !binary.exists() {
            return Err(format!("{} missing: cargo build -p settled-node", binary.display()).into());
        }
        Ok(binary)
    }

    /// Starts `settled run` on `chain` with `datadir`, manual bundling and the debug namespace,
    /// and waits until it answers.
    pub async fn start(chain: &TestChain, datadir: &std::path::Path) -> TestResult<Self> {
        Self::start_with(chain, datadir, &[], &[]).await
    }

    /// The same with more flags and environment variables.
    pub async fn start_with(
        chain: &TestChain,
        datadir: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> TestResult<Self> {
        let deployment = datadir.join("deployment.json");
        chain.deployment.save(&deployment)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let key = chain.signer(BUNDLER_ACCOUNT)?.to_bytes().to_string();
        // Its logs, for a failing test to be read (every start appends).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(datadir.join("settled.log"))?;
        let child = std::process::Command::new(Self::binary()?)
            .args(["run", "--eth.rpc-url", &chain.anvil.endpoint()])
            .arg("--eth.deployment")
            .arg(&deployment)
            .arg("--datadir")
            .arg(datadir)
            .args(["--rpc.port", &port.to_string(), "--rpc.debug", "--metrics.disable"])
            .args(["--bundler.mode", "manual", "--chain.poll-interval-ms", "100"])
            .args(args)
            .env("SETTLED_BUNDLER_KEY", key)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()?;
        let process = Self { child, rpc_url: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(response) = client.get(format!("{}/health", process.rpc_url)).send().await
                && response.status().is_success()
            {
                return Ok(process);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The end of its log says why.
        let log = std::fs::read_to_string(datadir.join("settled.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!("settled did not answer within 10 s; its log ends:\n{}", tail.join("\n"))
            .into())
    }

    /// The same with the paymaster on: a policy `default` (no limits) in `datadir`'s
    /// `policies.toml` and the key the chain's paymasters accept, plus `args`.
    pub async fn start_sponsoring(
        chain: &TestChain,
        datadir: &std::path::Path,
        args: &[&str],
    ) -> TestResult<Self> {
        let policies = datadir.join("policies.toml");
        std::fs::write(&policies, "[[policies]]\nid = \"default\"\n")?;
        let policies = policies.to_string_lossy().into_owned();
        let mut all = vec!["--paymaster.policies-file", policies.as_str()];
        all.extend_from_slice(args);
        let key = chain.signer(PAYMASTER_SIGNER_ACCOUNT)?.to_bytes().to_string();
        Self::start_with(chain, datadir, &all, &[("SETTLED_PAYMASTER_KEY", key)]).await
    }

    /// Its JSON-RPC URL.
    pub fn rpc_url(&self) -> &str {
        &self.rpc_url
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) -> TestResult<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for SettledProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dev account the test node's bundler signs with.
pub const BUNDLER_ACCOUNT: usize = 9;

/// Dev account whose key the paymaster contracts accept and the test node signs sponsorships
/// with (it needs no ETH).
pub const PAYMASTER_SIGNER_ACCOUNT: usize = 8;

/// The dev account the suites' streams name as operator, and whose key [`TestNode::spawn_operator`]
/// gives the node.
pub const OPERATOR_ACCOUNT: usize = 5;

/// [`OPERATOR_ACCOUNT`]'s key under Anvil's default mnemonic (the node's config is built before
/// its chain exists).
pub const OPERATOR_KEY: &str = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba";

/// A settled node running in-process against its own [`TestChain`].
#[derive(Debug)]
pub struct TestNode {
    chain: TestChain,
    node: Option<NodeHandle>,
    cancel: CancellationToken,
    client: DynProvider,
    http: reqwest::Client,
    datadir: TempDir,
}

impl TestNode {
    /// Spawns a chain and a node on it (`settled run` with a deployment file), all on free ports.
    pub async fn spawn() -> TestResult<Self> {
        Self::spawn_with(AnvilOptions::default(), |_| {}).await
    }

    /// A node that operates streams (and settles them) as [`OPERATOR_ACCOUNT`], its config then
    /// adjusted by `configure`.
    pub async fn spawn_operator(configure: impl FnOnce(&mut NodeConfig)) -> TestResult<Self> {
        Self::spawn_with(AnvilOptions::default(), |config| {
            config.billing.operator_key = Some(settled_node::SecretKey(OPERATOR_KEY.into()));
            configure(config);
        })
        .await
    }

    /// The same with Anvil started with `anvil` and the node's config adjusted by `configure`.
    pub async fn spawn_with(
        anvil: AnvilOptions,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> TestResult<Self> {
        let chain = TestChain::spawn_with(anvil).await?;
        Self::spawn_on(chain, configure).await
    }

    /// A node on `chain` (prepared by the test: predeploys, accounts), its config adjusted by
    /// `configure`.
    pub async fn spawn_on(
        chain: TestChain,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> TestResult<Self> {
        let datadir = tempfile::tempdir()?;
        let deployment_file = datadir.path().join("deployment.json");
        chain.deployment.save(&deployment_file)?;
        let source =
            ChainSource::Remote { rpc_url: chain.anvil.endpoint(), deployment: deployment_file };
        Self::start(chain, datadir, source, configure).await
    }

    async fn start(
        chain: TestChain,
        datadir: TempDir,
        source: ChainSource,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> TestResult<Self> {
        // The node's logs in the test's output (`RUST_LOG=settled_bundler=debug` and so on).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let cancel = CancellationToken::new();
        let mut config = NodeConfig::test(datadir.path().to_path_buf());
        // The bundler signs with dev account 9: the tests' own transactions come from 0 and 1.
        let key = chain.signer(BUNDLER_ACCOUNT)?.to_bytes();
        config.bundler.key = Some(settled_node::SecretKey(key.to_string()));
        let key = chain.signer(PAYMASTER_SIGNER_ACCOUNT)?.to_bytes();
        config.paymaster.key = Some(settled_node::SecretKey(key.to_string()));
        configure(&mut config);
        let node = launch(config, source, cancel.clone()).await?;
        let client = ProviderBuilder::new().connect_http(node.rpc_url().parse()?).erased();
        Ok(Self { chain, node: Some(node), cancel, client, http: reqwest::Client::new(), datadir })
    }

    /// The chain under the node.
    pub fn chain(&self) -> &TestChain {
        &self.chain
    }

    /// The running node.
    pub fn node(&self) -> TestResult<&NodeHandle> {
        Ok(self.node.as_ref().ok_or("node already stopped")?)
    }

    /// A JSON-RPC client of the node (use `raw_request` for settled's own namespaces).
    pub fn client(&self) -> &DynProvider {
        &self.client
    }

    /// The node's data directory.
    pub fn datadir(&self) -> PathBuf {
        self.datadir.path().to_path_buf()
    }

    /// `GET /health` on the node's RPC port, as JSON.
    pub async fn health(&self) -> TestResult<Value> {
        let url = format!("{}/health", self.node()?.rpc_url());
        let response = self.http.get(url).send().await?.error_for_status()?;
        Ok(response.json().await?)
    }

    /// `GET /metrics`, as Prometheus text.
    pub async fn metrics(&self) -> TestResult<String> {
        let addr = self.node()?.metrics_addr().ok_or("metrics disabled")?;
        let response =
            self.http.get(format!("http://{addr}/metrics")).send().await?.error_for_status()?;
        Ok(response.text().await?)
    }

    /// Waits until the node's chain follower has delivered block `number`.
    pub async fn wait_for_head(&self, number: u64, timeout: Duration) -> TestResult<()> {
        let mut head = self.node()?.follower().head_watch();
        tokio::time::timeout(timeout, head.wait_for(|h| h.is_some_and(|b| b.number >= number)))
            .await
            .map_err(|_| format!("node did not reach block {number} within {timeout:?}"))??;
        Ok(())
    }

    /// Stops the node gracefully and waits for it.
    pub async fn shutdown(mut self) -> TestResult<()> {
        self.cancel.cancel();
        if let Some(node) = self.node.take() {
            node.stopped().await?;
        }
        Ok(())
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Stops the node's tasks; the Anvil process dies with `chain`.
        self.cancel.cancel();
    }
}

/// Contracts only tests deploy (`contracts/sol/testing`), e.g. validation code that breaks each
/// ERC-7562 rule on demand.
#[allow(missing_docs)]
pub mod testing_contracts {
    alloy::sol!(
        #[sol(rpc)]
        RuleTarget,
        "../contracts/artifacts/testing/RuleTarget.json"
    );
    pub mod account {
        alloy::sol!(
            #[sol(rpc)]
            RuleBreakingAccount,
            "../contracts/artifacts/testing/RuleBreakingAccount.json"
        );
    }
    pub mod paymaster {
        alloy::sol!(
            #[sol(rpc)]
            RuleBreakingPaymaster,
            "../contracts/artifacts/testing/RuleBreakingPaymaster.json"
        );
    }
    pub mod factory {
        alloy::sol!(
            #[sol(rpc)]
            RuleBreakingFactory,
            "../contracts/artifacts/testing/RuleBreakingFactory.json"
        );
    }
    pub use account::RuleBreakingAccount;
    pub use factory::RuleBreakingFactory;
    pub use paymaster::RuleBreakingPaymaster;

    /// The behaviours of `Breaks` in `RuleBreakers.sol`.
    pub mod breaks {
        pub const NONE: u64 = 0;
        pub const TIMESTAMP: u64 = 1;
        pub const GAS: u64 = 2;
        pub const SELFBALANCE: u64 = 3;
        pub const CALL_WITH_VALUE: u64 = 4;
        pub const EXTCODESIZE_EMPTY: u64 = 5;
        pub const FOREIGN_STORAGE: u64 = 6;
        pub const ASSOCIATED_STORAGE: u64 = 7;
        pub const ENTRY_POINT_CALL: u64 = 8;
        pub const CREATE: u64 = 9;
        pub const OUT_OF_GAS: u64 = 10;
        pub const TWO_BLOCKED: u64 = 11;
        pub const OWN_STORAGE: u64 = 12;
        pub const CONTEXT: u64 = 13;
        pub const STORAGE_SWEEP: u64 = 14;
        pub const SECOND_CREATE2: u64 = 15;
        pub const HUGE_KECCAK_OFFSET: u64 = 16;
    }
}
