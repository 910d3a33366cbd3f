//! What the shared store forgets: rows nothing reads after a while, so its tables stay bounded.
//! Notices are read by relays that resume by id after a lost connection (seconds); a submission
//! is answered or withdrawn within the 15 s its node waits, and its answer taken when read.

use std::time::Duration;

use sqlx::postgres::PgQueryResult;

use crate::{LeaseError, PgStore};

/// How long notices (stream notices, PO alerts) are kept after they were published.
pub const NOTICE_RETENTION: Duration = Duration::from_secs(24 * 3_600);

/// How long a submission handed to the bundler's leader is kept (answered or not).
pub const SUBMISSION_RETENTION: Duration = Duration::from_secs(3_600);

/// How many rows one pass forgot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Notices past [`NOTICE_RETENTION`].
    pub notices: u64,
    /// Submissions past [`SUBMISSION_RETENTION`].
    pub submissions: u64,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Deletes the notices and submissions older than `notices` and `submissions`. Idempotent:
    /// any node may run it at any time.
    pub async fn forget_old(
        &self,
        notices: Duration,
        submissions: Duration,
    ) -> Result<Forgotten, LeaseError> {
        let store = |e: sqlx::Error| LeaseError::Store(e.to_string());
        let older = |table: &'static str, age: Duration| {
            let sql = format!(
                "DELETE FROM {table} WHERE created_at < now() - $1::bigint * interval '1 microsecond'"
            );
            async move { sqlx::query(&sql).bind(micros(age)).execute(self.pool()).await.map_err(store) }
        };
        let rows = |done: PgQueryResult| done.rows_affected();
        Ok(Forgotten {
            notices: rows(older("settled_notices", notices).await?),
            submissions: rows(older("settled_bundler_submissions", submissions).await?),
        })
    }
}
