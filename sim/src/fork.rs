//! Chain state forked from any JSON-RPC node at one block, cached once and shared by every
//! simulation against that block.
//!
//! Reads go to the node only on a miss (`eth_getBalance`/`eth_getTransactionCount`/`eth_getCode`
//! per account, `eth_getStorageAt` per slot); each simulation writes into its own overlay
//! (`revm`'s `CacheDB` over a `&BlockState`), so concurrent simulations never see each other.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use alloy::{
    eips::BlockId,
    network::Ethereum,
    primitives::{Address, B256, U256},
    providers::DynProvider,
};
use revm::{
    DatabaseRef,
    database::{AlloyDB, CacheDB},
    database_interface::{DBErrorMarker, WrapDatabaseAsync},
    state::{AccountInfo, Bytecode},
};

type Remote = WrapDatabaseAsync<AlloyDB<Ethereum, DynProvider>>;

/// Why forked state could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reading forked state: {0}")]
pub struct ForkError(pub String);

impl DBErrorMarker for ForkError {}

#[derive(Debug, Default)]
struct Cache {
    accounts: HashMap<Address, Option<AccountInfo>>,
    storage: HashMap<(Address, U256), U256>,
    code: HashMap<B256, Bytecode>,
    block_hashes: HashMap<u64, B256>,
}

/// The state of the chain at one block, read through from the node and cached.
///
/// Cheap to clone (shared); a new block needs a new `BlockState`.
#[derive(Debug, Clone)]
pub struct BlockState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    block: BlockId,
    remote: Remote,
    cache: RwLock<Cache>,
}

impl BlockState {
    /// State at `block` of `provider`'s chain. `handle` runs the RPC reads; simulations block on
    /// them, so run simulations on blocking threads (`spawn_blocking`), never on the runtime.
    pub fn new(provider: DynProvider, block: BlockId, handle: tokio::runtime::Handle) -> Self {
        let remote = WrapDatabaseAsync::with_handle(AlloyDB::new(provider, block), handle);
        Self { inner: Arc::new(Inner { block, remote, cache: RwLock::new(Cache::default()) }) }
    }

    /// The block this state is pinned to.
    pub fn block(&self) -> BlockId {
        self.inner.block
    }

    /// A fresh writable overlay for one simulation.
    pub fn overlay(&self) -> CacheDB<&Self> {
        CacheDB::new(self)
    }

    /// Number of accounts and storage slots fetched so far (for metrics and tests).
    pub fn cached(&self) -> (usize, usize) {
        self.inner.cache.read().map(|c| (c.accounts.len(), c.storage.len())).unwrap_or_default()
    }

    fn read<T>(&self, f: impl FnOnce(&Cache) -> Option<T>) -> Option<T> {
        self.inner.cache.read().ok().and_then(|cache| f(&cache))
    }

    fn write(&self, f: impl FnOnce(&mut Cache)) {
        if let Ok(mut cache) = self.inner.cache.write() {
            f(&mut cache);
        }
    }
}

fn remote_error(err: impl std::fmt::Display) -> ForkError {
    ForkError(err.to_string())
}

impl DatabaseRef for BlockState {
    type Error = ForkError;

    fn basic_ref(&self, address: Address) -> Result<Option<AccountInfo>, Self::Error> {
        if let Some(hit) = self.read(|c| c.accounts.get(&address).cloned()) {
            return Ok(hit);
        }
        let info = self.inner.remote.basic_ref(address).map_err(remote_error)?;
        self.write(|c| {
            if let Some(code) = info.as_ref().and_then(|i| i.code.clone()) {
                c.code.insert(code.hash_slow(), code);
            }
            c.accounts.insert(address, info.clone());
        });
        Ok(info)
    }

    fn code_by_hash_ref(&self, code_hash: B256) -> Result<Bytecode, Self::Error> {
        // Code always arrives with its account (basic_ref) and is cached by hash there.
        self.read(|c| c.code.get(&code_hash).cloned())
            .ok_or_else(|| ForkError(format!("code {code_hash} requested before its account")))
    }

    fn storage_ref(&self, address: Address, index: U256) -> Result<U256, Self::Error> {
        if let Some(hit) = self.read(|c| c.storage.get(&(address, index)).copied()) {
            return Ok(hit);
        }
        let value = self.inner.remote.storage_ref(address, index).map_err(remote_error)?;
        self.write(|c| {
            c.storage.insert((address, index), value);
        });
        Ok(value)
    }

    fn block_hash_ref(&self, number: u64) -> Result<B256, Self::Error> {
        if let Some(hit) = self.read(|c| c.block_hashes.get(&number).copied()) {
            return Ok(hit);
        }
        let hash = self.inner.remote.block_hash_ref(number).map_err(remote_error)?;
        self.write(|c| {
            c.block_hashes.insert(number, hash);
        });
        Ok(hash)
    }
}
