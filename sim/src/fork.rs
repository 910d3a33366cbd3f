//! Chain state forked from any JSON-RPC node at one block, cached once and shared by every
//! simulation against that block — and, where it provably has not changed, by later blocks.
//!
//! An account is read with one `eth_getProof` (balance, nonce, code hash and storage root in one
//! round trip; nodes without it get the three plain calls). What is content-addressed carries over
//! from block to block ([`BlockState::successor`]): code by its hash, and storage slots by the
//! account's storage root — two views with the same root hold the same slots, so a slot read in an
//! earlier block is reused without asking the node; an empty root needs no read at all.
//!
//! Each simulation writes into its own overlay (`revm`'s `CacheDB` over a `&BlockState`), so
//! concurrent simulations never see each other.

use std::{
    collections::HashMap,
    future::IntoFuture,
    sync::{Arc, RwLock},
};

use alloy::{
    consensus::constants::{EMPTY_ROOT_HASH, KECCAK_EMPTY},
    eips::{BlockId, BlockNumberOrTag},
    primitives::{Address, B256, U256},
    providers::{DynProvider, Provider},
};
use revm::{
    DatabaseRef,
    database::CacheDB,
    database_interface::DBErrorMarker,
    state::{AccountInfo, Bytecode},
};
use tokio::runtime::{Handle, RuntimeFlavor};

/// Why forked state could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reading forked state: {0}")]
pub struct ForkError(pub String);

impl DBErrorMarker for ForkError {}

/// Slots kept across blocks before the shared cache starts over (bounds memory).
const MAX_SHARED_SLOTS: usize = 1 << 20;

/// What one block's view has read.
#[derive(Debug, Default)]
struct ViewCache {
    /// Account info and its storage root (None: the node has no `eth_getProof`).
    accounts: HashMap<Address, (AccountInfo, Option<B256>)>,
    storage: HashMap<(Address, U256), U256>,
    block_hashes: HashMap<u64, B256>,
}

/// Content-addressed state, valid in every block: code by hash, slots by storage root.
#[derive(Debug, Default)]
struct ProvenCache {
    code: HashMap<B256, Bytecode>,
    slots: HashMap<(B256, U256), U256>,
}

/// Counters of where reads were answered (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForkStats {
    /// Accounts read from the node.
    pub accounts_fetched: usize,
    /// Storage slots read from the node.
    pub slots_fetched: usize,
    /// Storage slots answered from an earlier block's reads (same storage root) or an empty root.
    pub slots_reused: usize,
}

/// How a view reads an account from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountReads {
    /// One `eth_getProof`: also yields the storage root, so slots carry over between blocks.
    Proof,
    /// `eth_getBalance`, `eth_getTransactionCount` and `eth_getCode` at once; slots are read
    /// again in each block.
    PlainCalls,
}

impl AccountReads {
    /// The cheaper way for the node that answers `web3_clientVersion` with `client_version`.
    /// Anvil builds its whole state trie for every `eth_getProof` (measured: 0.5 ms on an empty
    /// chain, 4.3 ms with 1,000 accounts, 10.5 ms with 3,000, against 0.4 ms for a plain read), so
    /// it gets plain calls; nodes with a persistent trie (geth, reth, erigon, nethermind) proofs.
    pub fn for_client(client_version: &str) -> Self {
        if client_version.to_ascii_lowercase().starts_with("anvil") {
            Self::PlainCalls
        } else {
            Self::Proof
        }
    }
}

/// The state of the chain at one block, read through from the node and cached.
///
/// Cheap to clone (shared); a new block needs a new `BlockState` — preferably
/// [`BlockState::successor`], which keeps what provably did not change.
#[derive(Debug, Clone)]
pub struct BlockState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    block: BlockId,
    provider: DynProvider,
    handle: Handle,
    view: RwLock<ViewCache>,
    stats: RwLock<ForkStats>,
    proven: Arc<RwLock<ProvenCache>>,
    /// The node answered `eth_getProof` (false after its first failure: use the plain calls).
    proofs: Arc<std::sync::atomic::AtomicBool>,
}

impl BlockState {
    /// State at `block` of `provider`'s chain. `handle` runs the RPC reads; simulations block on
    /// them, so run simulations on blocking threads (`spawn_blocking`), never on the runtime.
    pub fn new(provider: DynProvider, block: BlockId, handle: Handle) -> Self {
        Self::with_account_reads(provider, block, handle, AccountReads::Proof)
    }

    /// Like [`BlockState::new`], reading accounts as `reads` says (it and its successors; a
    /// node that fails `eth_getProof` gets plain calls anyway).
    pub fn with_account_reads(
        provider: DynProvider,
        block: BlockId,
        handle: Handle,
        reads: AccountReads,
    ) -> Self {
        let proven = Arc::new(RwLock::new(ProvenCache::default()));
        let proofs = Arc::new(std::sync::atomic::AtomicBool::new(reads == AccountReads::Proof));
        Self::with_shared(provider, block, handle, proven, proofs)
    }

    /// The state at `block` (a later block of the same chain, or a reorg's replacement), keeping
    /// this view's content-addressed reads: code by hash and slots by storage root.
    pub fn successor(&self, block: BlockId) -> Self {
        let inner = &self.inner;
        Self::with_shared(
            inner.provider.clone(),
            block,
            inner.handle.clone(),
            inner.proven.clone(),
            inner.proofs.clone(),
        )
    }

    fn with_shared(
        provider: DynProvider,
        block: BlockId,
        handle: Handle,
        proven: Arc<RwLock<ProvenCache>>,
        proofs: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                block,
                provider,
                handle,
                view: RwLock::new(ViewCache::default()),
                stats: RwLock::new(ForkStats::default()),
                proven,
                proofs,
            }),
        }
    }

    /// The block this state is pinned to.
    pub fn block(&self) -> BlockId {
        self.inner.block
    }

    /// A fresh writable overlay for one simulation.
    pub fn overlay(&self) -> CacheDB<&Self> {
        CacheDB::new(self)
    }

    /// Number of accounts and storage slots this view holds (for metrics and tests).
    pub fn cached(&self) -> (usize, usize) {
        self.inner.view.read().map(|c| (c.accounts.len(), c.storage.len())).unwrap_or_default()
    }

    /// Where this view's reads were answered.
    pub fn stats(&self) -> ForkStats {
        self.inner.stats.read().map(|s| *s).unwrap_or_default()
    }

    fn count(&self, f: impl FnOnce(&mut ForkStats)) {
        if let Ok(mut stats) = self.inner.stats.write() {
            f(&mut stats);
        }
    }

    /// Runs an RPC future to completion from a simulation thread (a blocking thread; on a
    /// multi-threaded runtime's worker it lends the thread first).
    fn block_on<F>(&self, future: F) -> Result<F::Output, ForkError>
    where
        F: IntoFuture,
        F::IntoFuture: Send,
        F::Output: Send,
    {
        let future = future.into_future();
        let lend = Handle::try_current()
            .is_ok_and(|current| current.runtime_flavor() != RuntimeFlavor::CurrentThread);
        Ok(if lend {
            tokio::task::block_in_place(|| self.inner.handle.block_on(future))
        } else {
            self.inner.handle.block_on(future)
        })
    }

    fn rpc<T>(&self, result: Result<T, impl std::fmt::Display>) -> Result<T, ForkError> {
        result.map_err(|e| ForkError(e.to_string()))
    }

    /// Balance, nonce, code hash and storage root of `address` (root None without `eth_getProof`).
    fn fetch_account(&self, address: Address) -> Result<(AccountInfo, Option<B256>), ForkError> {
        let provider = &self.inner.provider;
        let block = self.inner.block;
        let proofs = &self.inner.proofs;
        if proofs.load(std::sync::atomic::Ordering::Relaxed) {
            match self.block_on(provider.get_proof(address, Vec::new()).block_id(block))? {
                Ok(proof) => {
                    // A non-existent account reports a zero code hash on some nodes.
                    let code_hash =
                        if proof.code_hash == B256::ZERO { KECCAK_EMPTY } else { proof.code_hash };
                    let code = self.code(address, code_hash)?;
                    let info = AccountInfo::new(proof.balance, proof.nonce, code_hash, code);
                    return Ok((info, Some(proof.storage_hash)));
                }
                Err(error) => {
                    tracing::debug!(%error, "eth_getProof failed; reading accounts with plain calls");
                    proofs.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let (balance, nonce, code) = self.block_on(async {
            tokio::join!(
                provider.get_balance(address).block_id(block),
                provider.get_transaction_count(address).block_id(block),
                provider.get_code_at(address).block_id(block),
            )
        })?;
        let code = self.rpc(code)?;
        let code = Bytecode::new_raw_checked(code)
            .map_err(|e| ForkError(format!("code of {address}: {e}")))?;
        let code_hash = code.hash_slow();
        let info = AccountInfo::new(self.rpc(balance)?, self.rpc(nonce)?, code_hash, code);
        Ok((info, None))
    }

    /// The code with `code_hash`: from the proven cache, or fetched from `address` once.
    fn code(&self, address: Address, code_hash: B256) -> Result<Bytecode, ForkError> {
        if code_hash == KECCAK_EMPTY {
            return Ok(Bytecode::new());
        }
        if let Some(code) =
            self.inner.proven.read().ok().and_then(|p| p.code.get(&code_hash).cloned())
        {
            return Ok(code);
        }
        let raw = self.rpc(
            self.block_on(self.inner.provider.get_code_at(address).block_id(self.inner.block))?,
        )?;
        let code = Bytecode::new_raw_checked(raw)
            .map_err(|e| ForkError(format!("code of {address}: {e}")))?;
        if let Ok(mut proven) = self.inner.proven.write() {
            proven.code.insert(code_hash, code.clone());
        }
        Ok(code)
    }

    fn storage_root(&self, address: Address) -> Result<Option<B256>, ForkError> {
        if let Some(root) =
            self.inner.view.read().ok().and_then(|v| v.accounts.get(&address).map(|a| a.1))
        {
            return Ok(root);
        }
        self.basic_ref(address)?;
        Ok(self.inner.view.read().ok().and_then(|v| v.accounts.get(&address).and_then(|a| a.1)))
    }
}

impl DatabaseRef for BlockState {
    type Error = ForkError;

    fn basic_ref(&self, address: Address) -> Result<Option<AccountInfo>, Self::Error> {
        if let Some((info, _)) =
            self.inner.view.read().ok().and_then(|v| v.accounts.get(&address).cloned())
        {
            return Ok(Some(info));
        }
        let (info, root) = self.fetch_account(address)?;
        self.count(|s| s.accounts_fetched += 1);
        if let Ok(mut view) = self.inner.view.write() {
            view.accounts.insert(address, (info.clone(), root));
        }
        Ok(Some(info))
    }

    fn code_by_hash_ref(&self, code_hash: B256) -> Result<Bytecode, Self::Error> {
        // Code always arrives with its account (basic_ref) and is cached by hash there.
        if code_hash == KECCAK_EMPTY {
            return Ok(Bytecode::new());
        }
        self.inner
            .proven
            .read()
            .ok()
            .and_then(|p| p.code.get(&code_hash).cloned())
            .ok_or_else(|| ForkError(format!("code {code_hash} requested before its account")))
    }

    fn storage_ref(&self, address: Address, index: U256) -> Result<U256, Self::Error> {
        if let Some(hit) =
            self.inner.view.read().ok().and_then(|v| v.storage.get(&(address, index)).copied())
        {
            return Ok(hit);
        }
        let root = self.storage_root(address)?;
        let proven = match root {
            Some(root) if root == EMPTY_ROOT_HASH => Some(U256::ZERO),
            Some(root) => {
                self.inner.proven.read().ok().and_then(|p| p.slots.get(&(root, index)).copied())
            }
            None => None,
        };
        let value = match proven {
            Some(value) => {
                self.count(|s| s.slots_reused += 1);
                value
            }
            None => {
                let value = self.rpc(self.block_on(
                    self.inner.provider.get_storage_at(address, index).block_id(self.inner.block),
                )?)?;
                self.count(|s| s.slots_fetched += 1);
                if let Some(root) = root
                    && let Ok(mut proven) = self.inner.proven.write()
                {
                    if proven.slots.len() >= MAX_SHARED_SLOTS {
                        proven.slots.clear();
                    }
                    proven.slots.insert((root, index), value);
                }
                value
            }
        };
        if let Ok(mut view) = self.inner.view.write() {
            view.storage.insert((address, index), value);
        }
        Ok(value)
    }

    fn block_hash_ref(&self, number: u64) -> Result<B256, Self::Error> {
        if let Some(hit) =
            self.inner.view.read().ok().and_then(|v| v.block_hashes.get(&number).copied())
        {
            return Ok(hit);
        }
        let block = self.rpc(self.block_on(
            self.inner.provider.get_block_by_number(BlockNumberOrTag::Number(number)),
        )?)?;
        let hash = block.map(|b| b.header.hash).unwrap_or_default();
        if let Ok(mut view) = self.inner.view.write() {
            view.block_hashes.insert(number, hash);
        }
        Ok(hash)
    }
}
