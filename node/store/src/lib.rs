//! settled's shared-store seams for running several nodes (issue #21): leader leases with
//! fencing epochs ([`LeaseStore`]) on sled ([`SledLeases`], one node, the embedded default) and
//! PostgreSQL ([`PgStore`], shared by every node, with [`PgStore::fenced`] transactions), and
//! [`LeaseKeeper`], which runs a role only while this node holds its lease; and notices every
//! node relays to its subscribers ([`PgStore::publish`], [`NoticeFeed`]: LISTEN/NOTIFY with
//! catch-up by id); and the send store ([`SendStore`]: billing calls' idempotency records and
//! send intents committed under the signer's lease before the broadcast) on both backends; the
//! paymaster's ledger on PostgreSQL ([`PgLedger`], a [`settled_paymaster::LedgerStore`]); the
//! bundler's state on PostgreSQL ([`PgBundler`], a [`settled_bundler::BundlerStore`]).

mod keeper;
mod lease;
mod notices;
mod pg_bundler;
mod pg_ledger;
mod pg_sends;
mod postgres;
mod retention;
mod sends;
mod sled_leases;
mod sled_sends;

pub use keeper::{Leadership, LeaseKeeper};
pub use lease::{Lease, LeaseError, LeaseStore};
pub use notices::{Notice, NoticeError, NoticeFeed};
pub use pg_bundler::PgBundler;
pub use pg_ledger::PgLedger;
pub use pg_sends::liveness_lease;
pub use postgres::{FenceError, PgStore};
pub use retention::{Forgotten, NOTICE_RETENTION, SUBMISSION_RETENTION};
pub use sends::{
    CallRecord, CallRef, Fence, Intent, QueuedCall, SendStore, SendStoreError, Sends, StoreFuture,
    process_owner,
};
pub use sled_leases::SledLeases;
pub use sled_sends::SledSends;
