//! The ERC-4337 bundler: mempool, reputation, bundle builder, submitter and ERC-7769 RPC.
//!
//! Not built yet: issue #4. The crate exists now so the workspace has its final shape.
