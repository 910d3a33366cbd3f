//! `settled dev`: a local Anvil (started here or attached to), everything deployed, the dev
//! accounts funded with USDC; `launch` writes the deployment to `<datadir>/deployment.json` once
//! it holds the datadir.

use std::path::Path;

use alloy::{
    primitives::U256,
    providers::{DynProvider, Provider},
    signers::local::PrivateKeySigner,
};
use settled_contracts::{
    Deployment, EntryPointVersion, LocalAnvil, MockUSDC, PaymasterFunding, deploy_all,
    fund_paymaster,
};
use tracing::info;

use settled_config::{DevConfig, NodeConfig};

use crate::{error::NodeError, launch::connect, paymaster::paymaster_signer};

/// A dev chain ready for the node.
pub(crate) struct DevChain {
    /// The Anvil we started (killed when dropped), if we did not attach.
    pub(crate) anvil: Option<LocalAnvil>,
    pub(crate) rpc_url: String,
    pub(crate) provider: DynProvider,
    pub(crate) deployment: Deployment,
    /// The dev accounts' keys the node's components sign with by default.
    pub(crate) keys: DevKeys,
}

/// Default signing keys on a dev chain (a configured key wins over each).
#[derive(Debug, Default)]
pub(crate) struct DevKeys {
    /// The bundler: dev account 1 (account 0 deploys and mints).
    pub(crate) bundler: Option<PrivateKeySigner>,
    /// The paymaster: dev account 2.
    pub(crate) paymaster: Option<PrivateKeySigner>,
    /// The streams' operator: dev account 3.
    pub(crate) operator: Option<PrivateKeySigner>,
}

/// Anvil's default dev account 1 (mnemonic `test test … junk`), for an attached Anvil.
const ANVIL_DEV_KEY_1: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
/// Anvil's default dev account 3, for an attached Anvil.
const ANVIL_DEV_KEY_3: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
/// Anvil's default dev account 2, for an attached Anvil.
const ANVIL_DEV_KEY_2: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";

/// How `settled dev` readies its paymasters: 100 ETH of deposit, staked 1 ETH for a day (the
/// ERC-7562 minimums settled's simulator applies).
fn dev_paymaster_funding(signer: alloy::primitives::Address) -> PaymasterFunding {
    PaymasterFunding {
        signer,
        min_deposit: U256::from(100u128 * 10u128.pow(18)),
        stake: U256::from(10u128.pow(18)),
        unstake_delay_sec: 86_400,
    }
}

/// Starts or attaches to Anvil, deploys, funds.
pub(crate) async fn prepare(config: &NodeConfig, dev: &DevConfig) -> Result<DevChain, NodeError> {
    let (anvil, rpc_url) = match &dev.attach {
        Some(url) => (None, url.clone()),
        None => {
            let options = dev.anvil.clone();
            if options.port != 0 {
                // A clear word before Anvil's own: the README's commands assume this port.
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], options.port));
                std::net::TcpListener::bind(addr).map_err(|source| NodeError::Bind {
                    what: "the dev Anvil (choose another with --anvil.port, 0 for any)",
                    addr,
                    source,
                })?;
            }
            let anvil = tokio::task::spawn_blocking(move || LocalAnvil::spawn(&options))
                .await
                .map_err(|e| NodeError::DevSetup(e.to_string()))??;
            info!(endpoint = %anvil.endpoint(), "anvil started");
            let url = anvil.endpoint();
            (Some(anvil), url)
        }
    };
    let provider = connect(&rpc_url, config.chain.connect_timeout).await?;

    // Anvil signs for its unlocked dev accounts, so no key is needed here.
    let accounts = provider.get_accounts().await.map_err(|e| NodeError::DevSetup(e.to_string()))?;
    let deployer = *accounts
        .first()
        .ok_or_else(|| NodeError::DevSetup(format!("{rpc_url} has no unlocked dev accounts")))?;
    let deployment = deploy_all(&provider, deployer).await?;
    fund(&provider, &deployment, deployer, &accounts, dev.usdc_per_account).await?;
    let keys = match &anvil {
        Some(anvil) => DevKeys {
            bundler: anvil.signer(1),
            paymaster: anvil.signer(2),
            operator: anvil.signer(3),
        },
        None => DevKeys {
            bundler: ANVIL_DEV_KEY_1.parse().ok(),
            paymaster: ANVIL_DEV_KEY_2.parse().ok(),
            operator: ANVIL_DEV_KEY_3.parse().ok(),
        },
    };
    // The paymasters accept the key the node will sign with (a configured one wins).
    let paymaster_key = paymaster_signer(config, keys.paymaster.clone())?;
    if let Some(key) = &paymaster_key {
        let funding = dev_paymaster_funding(key.address());
        for version in EntryPointVersion::ALL {
            fund_paymaster(&provider, deployer, deployment.paymaster(version), &funding).await?;
        }
    }
    Ok(DevChain { anvil, rpc_url, provider, deployment, keys })
}

/// Tops every dev account up to `amount` USDC base units.
async fn fund(
    provider: &DynProvider,
    deployment: &Deployment,
    owner: alloy::primitives::Address,
    accounts: &[alloy::primitives::Address],
    amount: u128,
) -> Result<(), NodeError> {
    let usdc = MockUSDC::new(deployment.usdc, provider);
    let err = |e: &dyn std::fmt::Display| NodeError::DevSetup(format!("funding dev accounts: {e}"));
    let target = U256::from(amount);
    for account in accounts {
        let balance = usdc.balanceOf(*account).call().await.map_err(|e| err(&e))?;
        if balance >= target {
            continue;
        }
        let receipt = usdc
            .mint(*account, target - balance)
            .from(owner)
            .send()
            .await
            .map_err(|e| err(&e))?
            .get_receipt()
            .await
            .map_err(|e| err(&e))?;
        if !receipt.status() {
            return Err(err(&format!("mint to {account} reverted")));
        }
    }
    info!(accounts = accounts.len(), usdc_each = amount, "dev accounts funded");
    Ok(())
}

/// `settled dev`'s billing API key (every payee): its token in `<datadir>/dev-api-key`, made
/// once (32 random bytes, hex) and kept, so a billing backend pointed at it works across
/// restarts without `--billing.api-keys-file`.
pub(crate) fn billing_key(datadir: &Path) -> Result<settled_streams::ApiKey, NodeError> {
    let path = datadir.join("dev-api-key");
    let err = |e: std::io::Error| NodeError::Storage { path: path.clone(), reason: e.to_string() };
    let token = match std::fs::read_to_string(&path) {
        Ok(token) => token.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = alloy::primitives::hex::encode(PrivateKeySigner::random().to_bytes());
            write_private(&path, &token).map_err(err)?;
            token
        }
        Err(e) => return Err(err(e)),
    };
    info!(path = %path.display(), %token, "dev billing API key (Authorization: Bearer <token>)");
    Ok(settled_streams::ApiKey {
        name: "dev".into(),
        keccak256: alloy::primitives::keccak256(token.as_bytes()),
        payees: Vec::new(),
        all: true,
    })
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// `deployment` found already deployed on a chain this datadir follows: its start block stays
/// the one written when it was deployed, not the head at this start (from which a consumer
/// without a cursor would miss everything before it).
pub(crate) fn keep_start_block(datadir: &Path, deployment: &mut Deployment) {
    let Ok(previous) = Deployment::load(&datadir.join("deployment.json")) else { return };
    if previous.chain_id == deployment.chain_id && previous.contracts() == deployment.contracts() {
        deployment.start_block = deployment.start_block.min(previous.start_block);
    }
}

/// Writes `<datadir>/deployment.json` (after the datadir's database is held: a second
/// `settled dev` on a datadir in use must not rewrite the first one's file).
pub(crate) fn save(datadir: &Path, deployment: &Deployment) -> Result<(), NodeError> {
    std::fs::create_dir_all(datadir)
        .map_err(|e| NodeError::Storage { path: datadir.to_path_buf(), reason: e.to_string() })?;
    let path = datadir.join("deployment.json");
    deployment.save(&path)?;
    info!(path = %path.display(), "deployment written");
    Ok(())
}
