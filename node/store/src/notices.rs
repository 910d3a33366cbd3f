//! Notices shared by every node (LISTEN/NOTIFY with catch-up): a publisher stores the notice
//! and notifies in one transaction, serialized per channel so ids commit in order; a
//! [`NoticeFeed`] reads every notice after the last id it saw, then waits for a notification —
//! and when its connection was lost (notifications sent meanwhile are gone), it reads by id
//! again, so nothing is missed and nothing is delivered twice.

use std::collections::VecDeque;

use sqlx::{Row as _, postgres::PgListener};

use crate::PgStore;

/// The store could not be reached or failed.
#[derive(Debug, thiserror::Error)]
#[error("notices: {0}")]
pub struct NoticeError(String);

fn failed(e: impl std::fmt::Display) -> NoticeError {
    NoticeError(e.to_string())
}

/// One notice, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Rises per channel, in commit order.
    pub id: i64,
    /// What was published.
    pub payload: serde_json::Value,
}

/// How many notices one catch-up reads.
const PAGE: i64 = 256;

impl PgStore {
    /// Stores `payload` on `channel` and notifies the listeners (at commit); its id.
    pub async fn publish(
        &self,
        channel: &str,
        payload: &serde_json::Value,
    ) -> Result<i64, NoticeError> {
        let mut tx = self.pool().begin().await.map_err(failed)?;
        let id = Self::publish_in(&mut tx, channel, payload).await?;
        tx.commit().await.map_err(failed)?;
        Ok(id)
    }

    /// Stores `payload` on `channel` in `tx` (published when `tx` commits, with whatever else
    /// it writes); its id.
    pub async fn publish_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        channel: &str,
        payload: &serde_json::Value,
    ) -> Result<i64, NoticeError> {
        // One publisher per channel at a time: ids commit in the order readers see them.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(channel)
            .execute(&mut **tx)
            .await
            .map_err(failed)?;
        let id: i64 = sqlx::query(
            "INSERT INTO settled_notices (channel, payload) VALUES ($1, $2) RETURNING id",
        )
        .bind(channel)
        .bind(payload)
        .fetch_one(&mut **tx)
        .await
        .and_then(|row| row.try_get("id"))
        .map_err(failed)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(id.to_string())
            .execute(&mut **tx)
            .await
            .map_err(failed)?;
        Ok(id)
    }

    /// Stores every one of `payloads` on `channel` in `tx`, in order, with one notification
    /// (readers read by id, so one wakes them for all): a block's notices cost one round trip.
    pub async fn publish_all_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        channel: &str,
        payloads: &[serde_json::Value],
    ) -> Result<(), NoticeError> {
        if payloads.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(channel)
            .execute(&mut **tx)
            .await
            .map_err(failed)?;
        // `WITH ORDINALITY`: ids rise in the payloads' order.
        sqlx::query(
            "INSERT INTO settled_notices (channel, payload) \
             SELECT $1, payload FROM UNNEST($2::jsonb[]) WITH ORDINALITY AS t(payload, n) \
             ORDER BY n",
        )
        .bind(channel)
        .bind(payloads)
        .execute(&mut **tx)
        .await
        .map_err(failed)?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel)
            .execute(&mut **tx)
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// The latest notice id of `channel` (0: none yet): where a feed of new notices starts.
    pub async fn latest_notice(&self, channel: &str) -> Result<i64, NoticeError> {
        sqlx::query("SELECT coalesce(max(id), 0) AS id FROM settled_notices WHERE channel = $1")
            .bind(channel)
            .fetch_one(self.pool())
            .await
            .and_then(|row| row.try_get("id"))
            .map_err(failed)
    }

    /// The notices of `channel` after id `after`, then each new one as it is published.
    pub async fn notices(&self, channel: &str, after: i64) -> Result<NoticeFeed, NoticeError> {
        let mut listener = PgListener::connect_with(self.pool()).await.map_err(failed)?;
        // Listening before the first read: a notice committed in between still wakes us.
        listener.listen(channel).await.map_err(failed)?;
        Ok(NoticeFeed {
            store: self.clone(),
            listener,
            channel: channel.into(),
            last: after,
            pending: VecDeque::new(),
        })
    }
}

impl PgStore {
    /// Sends every notice published on `channel` from now on (by whichever node) to `to`,
    /// decoded as `T`, until `cancel`; a lost connection resumes after the last one relayed.
    pub async fn relay<T: serde::de::DeserializeOwned>(
        self,
        channel: &'static str,
        to: tokio::sync::broadcast::Sender<T>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let mut after = None;
        loop {
            if let Err(error) = self.relay_from(channel, &mut after, &to, &cancel).await {
                tracing::warn!(channel, %error, "relaying notices; resuming in 1 s");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
            if cancel.is_cancelled() {
                return;
            }
        }
    }

    async fn relay_from<T: serde::de::DeserializeOwned>(
        &self,
        channel: &'static str,
        after: &mut Option<i64>,
        to: &tokio::sync::broadcast::Sender<T>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), NoticeError> {
        let start = match *after {
            Some(id) => id,
            None => self.latest_notice(channel).await?,
        };
        *after = Some(start);
        let mut feed = self.notices(channel, start).await?;
        loop {
            let notice = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                notice = feed.next() => notice?,
            };
            *after = Some(notice.id);
            match serde_json::from_value::<T>(notice.payload) {
                // No subscriber is not an error.
                Ok(decoded) => drop(to.send(decoded)),
                Err(error) => tracing::warn!(channel, id = notice.id, %error, "unreadable notice"),
            }
        }
    }
}

/// A channel's notices in id order, resumable after the last one seen.
#[derive(Debug)]
pub struct NoticeFeed {
    store: PgStore,
    listener: PgListener,
    channel: String,
    last: i64,
    pending: VecDeque<Notice>,
}

impl NoticeFeed {
    /// The next notice. An error means the store is unreachable: call again to resume (the
    /// listener reconnects) — nothing after the last notice returned is skipped.
    pub async fn next(&mut self) -> Result<Notice, NoticeError> {
        loop {
            if let Some(notice) = self.pending.pop_front() {
                self.last = notice.id;
                return Ok(notice);
            }
            self.catch_up().await?;
            if !self.pending.is_empty() {
                continue;
            }
            // A notification, or `None`: the connection was lost and re-made (read by id).
            self.listener.try_recv().await.map_err(failed)?;
        }
    }

    /// The last id returned.
    pub fn last(&self) -> i64 {
        self.last
    }

    async fn catch_up(&mut self) -> Result<(), NoticeError> {
        let rows = sqlx::query(
            "SELECT id, payload FROM settled_notices WHERE channel = $1 AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(&self.channel)
        .bind(self.last)
        .bind(PAGE)
        .fetch_all(self.store.pool())
        .await
        .map_err(failed)?;
        for row in rows {
            let (id, payload) =
                (row.try_get("id").map_err(failed)?, row.try_get("payload").map_err(failed)?);
            self.pending.push_back(Notice { id, payload });
        }
        Ok(())
    }
}
