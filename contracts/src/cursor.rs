//! A chain consumer's durable position: the last block it applied, kept in the node's sled
//! database beside the consumer's own data. A restarted node resumes its follower after the
//! lowest cursor, and each consumer passes over the blocks it had applied already.

use crate::follower::{BlockRef, NewBlock};
use alloy::primitives::B256;

/// A block a consumer cannot apply after its cursor.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// The cursor could not be read.
    #[error("chain cursor storage: {0}")]
    Storage(#[from] sled::Error),
    /// The block does not follow the cursor: applying it would skip blocks (or apply a fork's).
    /// The consumer stops; the next start resumes from its cursor.
    #[error("block {block} does not follow the {consumer} cursor (block {cursor}): {reason}")]
    Gap {
        /// Whose cursor.
        consumer: &'static str,
        /// The cursor's block.
        cursor: u64,
        /// The block delivered.
        block: u64,
        /// What does not match.
        reason: &'static str,
    },
}

/// The sled tree all consumers' cursors live in, one key per consumer.
const TREE: &str = "chain.cursors";

/// One consumer's cursor.
#[derive(Debug, Clone)]
pub struct ChainCursor {
    tree: sled::Tree,
    consumer: &'static str,
}

impl ChainCursor {
    /// The cursor of `consumer` (a fixed name: `bundler`, `paymaster`, …) in `db`.
    pub fn open(db: &sled::Db, consumer: &'static str) -> sled::Result<Self> {
        Ok(Self { tree: db.open_tree(TREE)?, consumer })
    }

    /// The last block applied, if any.
    pub fn get(&self) -> sled::Result<Option<BlockRef>> {
        Ok(self.tree.get(self.consumer)?.and_then(|v| decode(&v)))
    }

    /// Whether `block` was applied already (it is at or below the cursor): a replay after a
    /// restart delivers such blocks again.
    pub fn applied(&self, block: &BlockRef) -> sled::Result<bool> {
        Ok(self.get()?.is_some_and(|c| c.number >= block.number))
    }

    /// Whether `block` is new to this consumer (false: a replay of a block applied already),
    /// refusing one that does not follow the cursor — a number past the next, or a parent that
    /// is not the cursor's block.
    pub fn check_next(&self, block: &NewBlock) -> Result<bool, CursorError> {
        let Some(cursor) = self.get()? else { return Ok(true) };
        if cursor.number >= block.block.number {
            return Ok(false);
        }
        follows(cursor, block).map_err(|reason| CursorError::Gap {
            consumer: self.consumer,
            cursor: cursor.number,
            block: block.block.number,
            reason,
        })?;
        Ok(true)
    }

    /// `block` is applied. Written after the consumer's own writes for it, and not flushed by
    /// itself: a cursor lost in a crash only replays blocks the consumer handles idempotently.
    pub fn advance(&self, block: BlockRef) -> sled::Result<()> {
        self.tree.insert(self.consumer, encode(block).to_vec())?;
        Ok(())
    }

    /// Blocks after `ancestor` were reorged out: the cursor goes back to it (never forward).
    pub fn rewind(&self, ancestor: BlockRef) -> sled::Result<()> {
        if self.get()?.is_some_and(|c| c.number > ancestor.number) {
            self.advance(ancestor)?;
        }
        Ok(())
    }
}

/// Whether `block` is the one right after `cursor` (number and parent); why not, if not.
pub fn follows(cursor: BlockRef, block: &NewBlock) -> Result<(), &'static str> {
    if block.block.number != cursor.number + 1 {
        return Err("blocks missing between them");
    }
    if block.parent_hash != cursor.hash {
        return Err("its parent is not the cursor's block");
    }
    Ok(())
}

fn encode(block: BlockRef) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&block.number.to_be_bytes());
    out[8..].copy_from_slice(block.hash.as_slice());
    out
}

fn decode(bytes: &[u8]) -> Option<BlockRef> {
    let number = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let hash = B256::try_from(bytes.get(8..40)?).ok()?;
    Some(BlockRef { number, hash })
}

/// Opens the sled database at `path`, waiting up to 2 s for a handle dropped just before to
/// release its file lock (sled releases it from a background thread after the drop, so an
/// immediate reopen in the same process can fail with `WouldBlock`). For restarts within one
/// process (tests); a lock held by another process is still an error after the wait.
pub fn reopen_sled(path: &std::path::Path) -> sled::Result<sled::Db> {
    let mut opened = sled::open(path);
    for _ in 0..100 {
        match &opened {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::Other
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
                opened = sled::open(path);
            }
            _ => break,
        }
    }
    opened
}

/// How long a consumer keeps trying to apply one block (or reorg) whose storage fails before it
/// gives up and stops the node: a shared store's failover takes seconds, a broken disk does not
/// heal.
pub const APPLY_RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `apply` (one block or reorg of a chain consumer) until it succeeds, trying again every
/// half second for [`APPLY_RETRY_WINDOW`] while it fails — a shared store out of reach for a
/// moment must neither skip the block nor stop the node — then returns the last error. `None`
/// when `cancel` fires first.
pub async fn apply_until_stored<T, E, F>(
    consumer: &'static str,
    cancel: &tokio_util::sync::CancellationToken,
    mut apply: impl FnMut() -> F,
) -> Option<Result<T, E>>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + APPLY_RETRY_WINDOW;
    loop {
        let error = match apply().await {
            Ok(applied) => return Some(Ok(applied)),
            Err(error) if tokio::time::Instant::now() >= deadline => return Some(Err(error)),
            Err(error) => error,
        };
        tracing::warn!(consumer, %error, "applying a block failed; trying it again");
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_rewinds_and_survives_reopening() -> sled::Result<()> {
        let dir = tempfile::tempdir()?;
        let block = |n: u64| BlockRef { number: n, hash: B256::repeat_byte(n as u8) };
        {
            let db = sled::open(dir.path())?;
            let cursor = ChainCursor::open(&db, "bundler")?;
            assert_eq!(cursor.get()?, None);
            assert!(!cursor.applied(&block(1))?);
            cursor.advance(block(7))?;
            assert!(cursor.applied(&block(7))? && !cursor.applied(&block(8))?);
            cursor.rewind(block(9))?;
            assert_eq!(cursor.get()?, Some(block(7)), "a rewind never moves forward");
            cursor.rewind(block(5))?;
            assert_eq!(cursor.get()?, Some(block(5)));
            let other = ChainCursor::open(&db, "paymaster")?;
            assert_eq!(other.get()?, None, "one cursor per consumer");
            db.flush()?;
        }
        let db = reopen_sled(dir.path())?;
        assert_eq!(ChainCursor::open(&db, "bundler")?.get()?, Some(block(5)));
        Ok(())
    }

    /// A replay is not new, the next block is, and a block past a hole or on another branch is
    /// refused.
    #[test]
    fn only_the_next_block_is_applied() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = sled::open(dir.path())?;
        let cursor = ChainCursor::open(&db, "bundler")?;
        let hash = |n: u64| B256::repeat_byte(n as u8);
        let block = |n: u64, parent: B256| NewBlock {
            block: BlockRef { number: n, hash: hash(n) },
            parent_hash: parent,
            timestamp: n,
            logs: Vec::new(),
        };
        assert!(cursor.check_next(&block(5, hash(4)))?, "no cursor: anything is next");
        cursor.advance(BlockRef { number: 5, hash: hash(5) })?;
        assert!(!cursor.check_next(&block(5, hash(4)))?, "a replay");
        assert!(cursor.check_next(&block(6, hash(5)))?);
        let hole = cursor.check_next(&block(7, hash(6)));
        assert!(matches!(hole, Err(CursorError::Gap { cursor: 5, block: 7, .. })), "{hole:?}");
        let fork = cursor.check_next(&block(6, B256::ZERO));
        assert!(matches!(fork, Err(CursorError::Gap { cursor: 5, block: 6, .. })), "{fork:?}");
        Ok(())
    }

    /// A failing apply is tried again until it succeeds (never skipped); cancelled, it stops.
    #[tokio::test]
    async fn a_failing_apply_is_tried_again_until_stored() {
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut attempts = 0;
        let applied = super::apply_until_stored("test", &cancel, || {
            attempts += 1;
            let attempt = attempts;
            async move { if attempt < 3 { Err("store away") } else { Ok(attempt) } }
        });
        assert_eq!(applied.await, Some(Ok(3)));
        cancel.cancel();
        let stopped = super::apply_until_stored("test", &cancel, || async { Err::<(), _>("away") });
        assert_eq!(stopped.await, None);
    }
}
