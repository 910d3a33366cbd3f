//! Leading the bundler key. On a shared store one node leads it: it holds the pool in memory,
//! bundles, and judges the ops other nodes hand it; the others index mined ops and hand their
//! clients' ops over ([`Bundler::hand_over`]), answering what the leader answered. A new leader
//! takes the pool, reputation and recorded bundles over from the store; one that lost its lease
//! forgets them (its stale writes are refused by the store's fence).

use super::*;
use crate::store::Verdict;

/// How often the leader looks for ops other nodes handed it.
pub(super) const SUBMISSION_POLL: Duration = Duration::from_millis(50);
/// How long a node waits for the leader's answer to an op it handed over: longer than a
/// takeover (a lease's time to live and the new leader's start), so a leader that dies with
/// the op unanswered leaves it to the next.
pub(super) const SUBMISSION_WAIT: Duration = Duration::from_secs(15);

impl Bundler {
    /// Whether this node leads the bundler key (always, on the embedded store).
    pub fn leading(&self) -> bool {
        self.shared.leader.borrow().is_some()
    }

    /// Refuses what only the leader may do.
    pub(super) fn require_leading(&self) -> Result<(), BundlerError> {
        match self.leading() {
            true => Ok(()),
            false => Err(BundlerError::NotLeading("another node bundles".into())),
        }
    }

    /// The lease changed hands: take over, or step down.
    pub(super) async fn follow_leadership(
        &self,
        leader: &mut tokio::sync::watch::Receiver<Option<u64>>,
    ) -> Result<(), BundlerError> {
        let epoch = *leader.borrow_and_update();
        match epoch {
            Some(epoch) => {
                // A takeover the store refuses (unreachable, lost again) is retried at the next
                // change; until then this node bundles nothing it has not loaded.
                if let Err(error) = self.take_over().await {
                    warn!(epoch, %error, "taking the bundler's state over");
                } else {
                    info!(epoch, ops = self.pool_len(), "leading the bundler key");
                }
            }
            None => {
                self.step_down();
                warn!("lost the bundler key's lease: no longer bundling");
            }
        }
        Ok(())
    }

    /// Loads the pool, reputation and recorded bundles from the store; the chain decides the
    /// next nonce again.
    pub(super) async fn take_over(&self) -> Result<(), BundlerError> {
        self.step_down();
        self.shared.reputation.load(self.shared.store.reputation().await?);
        let restored = self.restore_pool().await?;
        if restored > 0 {
            info!(restored, "UserOperations restored to the mempool");
        }
        self.hold_recorded_bundles().await?;
        self.shared.accepted.notify_one();
        Ok(())
    }

    /// Puts the store's pooled ops missing from memory into it (accepted once under the limits
    /// of their time: not judged again here; the second validation comes before bundling).
    pub(super) async fn restore_pool(&self) -> Result<usize, BundlerError> {
        let entries = self.shared.store.pool().await?;
        let mut pool = self.shared.pool.lock().map_err(storage_error)?;
        let mut restored = 0;
        for entry in entries {
            if pool.get(&entry.hash).is_none() && pool.add(entry, usize::MAX).is_ok() {
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Forgets the in-memory pool and what was in flight: the store keeps them for the leader.
    fn step_down(&self) {
        if let Ok(mut pool) = self.shared.pool.lock() {
            pool.clear();
        }
        if let Ok(mut in_flight) = self.shared.in_flight.lock() {
            in_flight.clear();
        }
        self.forget_nonce();
    }

    /// Judges the ops other nodes handed over, oldest first: an accepted one is answered in the
    /// step that stores it, a refused one with the refusal as this edge gives it.
    pub(super) async fn serve_submissions(&self) {
        let submissions = match self.shared.store.submissions().await {
            Ok(submissions) => submissions,
            Err(error) => {
                warn!(%error, "reading the handed-over UserOperations");
                return;
            }
        };
        for submission in submissions {
            let result = self.accept(submission.op, submission.entry_point, Some(submission.id));
            let verdict = match result.await {
                Ok(_) => continue,
                // Not judged: the next leader will.
                Err(BundlerError::NotLeading(_)) => return,
                Err(error) => crate::rpc::verdict_of(&error),
            };
            if let Err(error) = self.shared.store.answer(submission.id, &verdict).await {
                warn!(id = submission.id, %error, "answering a handed-over UserOperation");
            }
        }
    }

    /// On a node that does not lead: hands `op` to the leader and answers what it answered.
    /// Not answered within [`SUBMISSION_WAIT`], the op is withdrawn (no leader judges it after)
    /// and the client told so.
    pub(super) async fn hand_over(
        &self,
        op: UserOperation,
        entry_point: Address,
    ) -> Result<B256, BundlerError> {
        self.version(entry_point)?;
        let id = self.shared.store.submit(entry_point, &op).await?;
        let deadline = tokio::time::Instant::now() + SUBMISSION_WAIT;
        let verdict = loop {
            let last = tokio::time::Instant::now() >= deadline;
            if let Some(verdict) = self.shared.store.verdict(id, last).await? {
                break verdict;
            }
            if last {
                return Err(BundlerError::Internal(format!(
                    "no bundler leader answered within {SUBMISSION_WAIT:?}: the op was not accepted"
                )));
            }
            tokio::time::sleep(SUBMISSION_POLL).await;
        };
        match verdict {
            Verdict::Accepted(hash) => Ok(hash),
            Verdict::Refused { code, message, data } => {
                Err(BundlerError::Relayed { code, message, data })
            }
        }
    }
}
