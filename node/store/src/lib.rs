//! settled's shared-store seams for running several nodes (issue #21): leader leases with
//! fencing epochs ([`LeaseStore`]) on sled ([`SledLeases`], one node, the embedded default) and
//! PostgreSQL ([`PgStore`], shared by every node, with [`PgStore::fenced`] transactions), and
//! [`LeaseKeeper`], which runs a role only while this node holds its lease; and notices every
//! node relays to its subscribers ([`PgStore::publish`], [`NoticeFeed`]: LISTEN/NOTIFY with
//! catch-up by id).

mod keeper;
mod lease;
mod notices;
mod postgres;
mod sled_leases;

pub use keeper::{Leadership, LeaseKeeper};
pub use lease::{Lease, LeaseError, LeaseStore};
pub use notices::{Notice, NoticeError, NoticeFeed};
pub use postgres::PgStore;
pub use sled_leases::SledLeases;
