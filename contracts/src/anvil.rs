//! A local Anvil from the project's pinned npm package, on a free loopback port, killed on drop.
//! Used by `settled dev` and by the e2e harness.

use std::path::{Path, PathBuf};

use alloy::{
    node_bindings::{Anvil, AnvilInstance, NodeError},
    primitives::Address,
    signers::local::PrivateKeySigner,
};

/// Where `scripts/install-toolchain.sh` puts the Anvil binary, relative to the repository root.
const NPM_ANVIL: &str = "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";

/// How to start Anvil.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnvilOptions {
    /// The binary; `None` looks it up with [`find_anvil`].
    pub binary: Option<PathBuf>,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Seconds between blocks; `None` mines each transaction as it arrives.
    pub block_time: Option<u64>,
    /// With `block_time`: mine each transaction as it arrives too (Anvil's mixed mining), so the
    /// chain's clock moves on an idle chain while transactions still land at once.
    pub mixed_mining: bool,
    /// Hardfork rules (Prague or newer: EIP-7702 and blobs).
    pub hardfork: String,
    /// The chain id (`None`: Anvil's 31337). Two chains side by side (an L2 and its L1) need
    /// two ids.
    pub chain_id: Option<u64>,
}

impl Default for AnvilOptions {
    fn default() -> Self {
        Self {
            binary: None,
            port: 0,
            block_time: None,
            mixed_mining: false,
            hardfork: "prague".into(),
            chain_id: None,
        }
    }
}

/// Why Anvil could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AnvilError {
    /// No binary was found.
    #[error(
        "anvil not found (looked at $SETTLED_ANVIL, {NPM_ANVIL} above the working directory and the executable, and $PATH); run scripts/install-toolchain.sh"
    )]
    NotFound,
    /// The binary did not start or did not report its port.
    #[error("starting anvil ({path}): {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// What went wrong.
        source: NodeError,
    },
}

/// A running Anvil; the process is killed when this is dropped.
#[derive(Debug)]
pub struct LocalAnvil {
    instance: AnvilInstance,
}

impl LocalAnvil {
    /// Starts Anvil. Blocks until it listens (a second or so): call from a blocking context.
    pub fn spawn(options: &AnvilOptions) -> Result<Self, AnvilError> {
        let path = match &options.binary {
            Some(path) => path.clone(),
            None => find_anvil()?,
        };
        let mut anvil = Anvil::at(&path).port(options.port).args([
            "--host",
            "127.0.0.1",
            "--hardfork",
            options.hardfork.as_str(),
        ]);
        if let Some(chain_id) = options.chain_id {
            anvil = anvil.chain_id(chain_id);
        }
        if let Some(block_time) = options.block_time {
            anvil = anvil.block_time(block_time);
            if options.mixed_mining {
                anvil = anvil.arg("--mixed-mining");
            }
        }
        let instance = anvil.try_spawn().map_err(|source| AnvilError::Spawn { path, source })?;
        Ok(Self { instance })
    }

    /// HTTP endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.instance.port())
    }

    /// WebSocket endpoint.
    pub fn ws_endpoint(&self) -> String {
        format!("ws://127.0.0.1:{}", self.instance.port())
    }

    /// Listening port.
    pub fn port(&self) -> u16 {
        self.instance.port()
    }

    /// Chain id.
    pub fn chain_id(&self) -> u64 {
        self.instance.chain_id()
    }

    /// Addresses of the funded dev accounts.
    pub fn addresses(&self) -> &[Address] {
        self.instance.addresses()
    }

    /// Signer of dev account `index`, if there is one.
    pub fn signer(&self, index: usize) -> Option<PrivateKeySigner> {
        self.instance.keys().get(index).cloned().map(PrivateKeySigner::from)
    }
}

/// Finds the Anvil binary: `$SETTLED_ANVIL`, then the npm install above the working directory,
/// the running executable or this source tree, then `anvil` on `$PATH`.
pub fn find_anvil() -> Result<PathBuf, AnvilError> {
    if let Some(path) = std::env::var_os("SETTLED_ANVIL") {
        return Ok(PathBuf::from(path));
    }
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.push(exe);
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for root in &roots {
        if let Some(found) = root.ancestors().map(|dir| dir.join(NPM_ANVIL)).find(|p| is_file(p)) {
            return Ok(found);
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("anvil"))
        .find(|p| is_file(p))
        .ok_or(AnvilError::NotFound)
}

fn is_file(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file())
}
