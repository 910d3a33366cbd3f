//! The shared store's seams (issue #21, first part): the lease contract on both backends (sled,
//! the one-node default, and PostgreSQL, shared by several nodes), fenced writes, and leadership
//! that steps down by itself — a stalled leader's deadline passes, the other node takes over
//! with a higher epoch and the stalled one's writes are refused; PostgreSQL killed: the leader
//! fails closed, and leads again once it is back; notices fan out to every node in order, once,
//! across a PostgreSQL crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U256};
use serde_json::json;
use settled_paymaster::{
    Ledger, LedgerStore, PolicyRule, ReservationRequest, ReservationState, SettledOp,
    SponsorshipPolicy, Usage, customer_slot, daily_slot, sender_slot,
};
use settled_store::{
    CallRecord, CallRef, Fence, Intent, Lease, LeaseError, LeaseKeeper, LeaseStore, Notice,
    NoticeFeed, PgLedger, PgStore, SendStore, SendStoreError, SledLeases, SledSends,
    liveness_lease,
};
use settled_tests::{TestResult, postgres::TestPostgres};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod index;

const TTL: Duration = Duration::from_millis(600);

fn lost(result: Result<impl std::fmt::Debug, LeaseError>) -> bool {
    matches!(result, Err(LeaseError::Lost { .. }))
}

/// What every backend must do; `a` and `b` are two nodes' handles on one store.
async fn lease_contract<S: LeaseStore>(a: &S, b: &S, name: &str) -> TestResult {
    let first = a.acquire(name, "node-a", TTL).await?.ok_or("a free lease is taken")?;
    assert!(b.acquire(name, "node-b", TTL).await?.is_none(), "a live lease is not taken");
    let first = a.renew(&first, TTL).await?;
    b.check(&first).await?;
    assert!(
        a.acquire(name, "node-a", TTL).await?.is_some_and(|l| l.epoch == first.epoch + 1),
        "re-acquiring is a new epoch"
    );
    assert!(lost(a.check(&first).await), "the previous epoch is fenced off");
    let held = a.acquire(name, "node-a", TTL).await?.ok_or("own lease")?;
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert!(lost(a.check(&held).await), "an expired lease fences nothing");
    let second = b.acquire(name, "node-b", TTL).await?.ok_or("an expired lease is taken over")?;
    assert_eq!(second.epoch, held.epoch + 1);
    assert!(lost(a.renew(&held, TTL).await), "the old holder cannot renew");
    b.release(&second).await?;
    assert!(lost(b.check(&second).await), "released");
    let third = a.acquire(name, "node-a", TTL).await?.ok_or("a released lease is free")?;
    assert_eq!(third.epoch, second.epoch + 1);
    Ok(())
}

#[tokio::test]
async fn sled_keeps_the_lease_contract() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path())?;
    let leases = SledLeases::open(&db)?;
    lease_contract(&leases, &leases, "settlement:0xop").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_lease_contract_and_fences_writes() -> TestResult {
    let postgres = TestPostgres::start()?;
    let (a, b) = (
        PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?,
        PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?,
    );
    lease_contract(&a, &b, "settlement:0xop").await?;

    // Eight nodes race for a free lease: exactly one wins.
    let racers = (0..8).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { store.acquire("bundler:0xkey", &format!("node-{i}"), TTL).await })
    });
    let mut winners = 0;
    for racer in racers {
        winners += usize::from(racer.await??.is_some());
    }
    assert_eq!(winners, 1, "one holder per lease");

    // A write fenced by the current epoch commits; by a stale one it never does.
    sqlx::query("CREATE TABLE probe (writer TEXT)").execute(a.pool()).await?;
    let old = a.acquire("chain-follower:1", "node-a", TTL).await?.ok_or("free")?;
    let mut write = a.fenced(&old).await?;
    sqlx::query("INSERT INTO probe VALUES ('a, epoch 1')").execute(&mut *write).await?;
    write.commit().await?;
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    let new = b.acquire("chain-follower:1", "node-b", TTL).await?.ok_or("expired")?;
    assert!(lost(a.fenced(&old).await.map(|_| ())), "the stale leader's write is refused");
    let mut write = b.fenced(&new).await?;
    sqlx::query("INSERT INTO probe VALUES ('b, epoch 2')").execute(&mut *write).await?;
    write.commit().await?;
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT writer FROM probe").fetch_all(a.pool()).await?;
    assert_eq!(rows, vec![("a, epoch 1".into(),), ("b, epoch 2".into(),)]);
    Ok(())
}

/// A store whose renewals hang while `stalled` (a SIGSTOPped process, a partition).
struct Stalling {
    inner: PgStore,
    stalled: AtomicBool,
}

impl LeaseStore for Stalling {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        self.inner.acquire(name, holder, ttl).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LeaseError> {
        while self.stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.inner.renew(lease, ttl).await
    }
    async fn check(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.inner.check(lease).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.inner.release(lease).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_steps_down_and_is_fenced_off() -> TestResult {
    let mut postgres = TestPostgres::start()?;
    let url = postgres.url();
    let a = Arc::new(Stalling {
        inner: PgStore::connect(&url, Duration::from_secs(2)).await?,
        stalled: AtomicBool::new(false),
    });
    let b = Arc::new(PgStore::connect(&url, Duration::from_secs(2)).await?);
    let cancel = CancellationToken::new();
    let keeper_a = LeaseKeeper::new(a.clone(), "settlement:0xop", "node-a", TTL);
    let keeper_b = LeaseKeeper::new(b.clone(), "settlement:0xop", "node-b", TTL);
    let leader = keeper_a.lead(&cancel).await.ok_or("a leads")?;
    let first = leader.lease().ok_or("lease")?;
    // Kept across several lifetimes of the lease by renewals.
    tokio::time::sleep(TTL * 3).await;
    assert!(!leader.lost.is_cancelled(), "renewed");

    a.stalled.store(true, Ordering::SeqCst);
    let stalled_at = Instant::now();
    let follower = tokio::spawn(async move {
        let cancel = CancellationToken::new();
        keeper_b.lead(&cancel).await.map(|l| (l.lease(), l.acquired()))
    });
    tokio::time::timeout(TTL * 2, leader.lost.cancelled()).await?;
    let stepped_down = stalled_at.elapsed();
    let (lease_b, acquired) = follower.await?.ok_or("b leads")?;
    let lease_b = lease_b.ok_or("lease")?;
    let takeover = acquired.duration_since(stalled_at);
    println!(
        "stalled leader stepped down after {stepped_down:?}; takeover after {takeover:?} (TTL {TTL:?}); epochs {} -> {}",
        first.epoch, lease_b.epoch
    );
    assert!(lease_b.epoch > first.epoch);
    a.stalled.store(false, Ordering::SeqCst);
    let resumed = leader.lease().ok_or("lease")?;
    assert!(lost(a.inner.fenced(&resumed).await.map(|_| ())), "its next write is refused");

    // PostgreSQL dies: the leader cannot renew and steps down before its deadline ends.
    let keeper_b = LeaseKeeper::new(b.clone(), "settlement:0xop", "node-b", TTL);
    b.release(&lease_b).await?;
    let leader_b = keeper_b.lead(&cancel).await.ok_or("b leads again")?;
    postgres.kill()?;
    let died = Instant::now();
    tokio::time::timeout(TTL * 2, leader_b.lost.cancelled()).await?;
    println!("store killed: leader stepped down after {:?}", died.elapsed());
    assert!(
        matches!(b.check(&leader_b.lease().ok_or("lease")?).await, Err(LeaseError::Store(_))),
        "fails closed"
    );
    postgres.run()?;
    let again = tokio::time::timeout(Duration::from_secs(10), keeper_b.lead(&cancel))
        .await?
        .ok_or("leads")?;
    assert!(again.lease().is_some_and(|l| l.epoch > lease_b.epoch), "the epoch survived the crash");
    cancel.cancel();
    Ok(())
}

/// The feed's next notice, retrying while the store is down (the feed resumes after its last id).
async fn next(feed: &mut NoticeFeed) -> TestResult<Notice> {
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), feed.next()).await {
            Ok(Ok(notice)) => return Ok(notice),
            Ok(Err(_)) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("no notice within 10 s".into()),
        }
    }
}

/// Notices published on one node reach a listener on another in id order, once each — also
/// from concurrent publishers on both nodes, and across a PostgreSQL crash (caught up by id);
/// a late listener resumes after the id it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_fan_out_in_order_across_a_store_crash() -> TestResult {
    let mut postgres = TestPostgres::start()?;
    let url = postgres.url();
    let a = PgStore::connect(&url, Duration::from_secs(2)).await?;
    let b = PgStore::connect(&url, Duration::from_secs(2)).await?;
    let mut feed = b.notices("alerts", 0).await?;
    for n in 1..=3 {
        a.publish("alerts", &json!({ "n": n })).await?;
    }
    a.publish("other", &json!({ "n": 99 })).await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut feed).await?.payload["n"].clone());
    }
    assert_eq!(seen, vec![json!(1), json!(2), json!(3)], "in order, only its channel");

    // Twenty publishers at once on both nodes: every notice once, ids rising.
    let publishers = (0..20).map(|n| {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { store.publish("alerts", &json!({ "n": 10 + n })).await })
    });
    for publisher in publishers {
        publisher.await??;
    }
    let (mut ids, mut ns) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let notice = next(&mut feed).await?;
        ids.push(notice.id);
        ns.push(notice.payload["n"].as_i64().ok_or("n")?);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise: {ids:?}");
    ns.sort_unstable();
    assert_eq!(ns, (10..30).collect::<Vec<i64>>(), "each once");

    // PostgreSQL crashes: publishing fails (closed); after the restart the feed catches up.
    postgres.kill()?;
    assert!(a.publish("alerts", &json!({ "n": -1 })).await.is_err(), "fails closed");
    postgres.run()?;
    let mut first = None;
    for n in 100..104 {
        let give_up = Instant::now() + Duration::from_secs(10);
        let id = loop {
            match a.publish("alerts", &json!({ "n": n })).await {
                Ok(id) => break id,
                Err(e) if Instant::now() > give_up => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        first.get_or_insert(id);
    }
    let mut after = Vec::new();
    for _ in 0..4 {
        after.push(next(&mut feed).await?.payload["n"].clone());
    }
    assert_eq!(after, vec![json!(100), json!(101), json!(102), json!(103)]);
    let mut late = b.notices("alerts", first.ok_or("published")?).await?;
    assert_eq!(next(&mut late).await?.payload["n"], json!(101), "resumes after the id it names");
    Ok(())
}

fn intent(nonce: u64, carries: &str, version: u8) -> Intent {
    Intent {
        signer: Address::repeat_byte(0xaa),
        nonce,
        carries: carries.into(),
        raw: Bytes::from(vec![version; 4]),
        hashes: vec![B256::repeat_byte(version)],
    }
}

/// What every send store must do; `a` and `b` are two nodes' handles on one store, `fence`
/// entitles their writes.
async fn send_contract(a: &dyn SendStore, b: &dyn SendStore, fence: &Fence) -> TestResult {
    let (id, params) = (B256::repeat_byte(1), B256::repeat_byte(2));
    assert_eq!(a.claim(id, params, "a").await?, None, "a free key is claimed");
    let taken = b.claim(id, params, "b").await?;
    assert_eq!(taken, Some(CallRecord::Claimed { params, owner: "a".into() }));
    assert!(!b.release_claim(id, "b").await?, "only the claimant frees its claim");
    assert!(a.release_claim(id, "a").await?);
    assert_eq!(b.call(id).await?, None);

    // A claim another call holds now: committing under it writes nothing at all.
    assert_eq!(b.claim(id, params, "b").await?, None);
    let first = intent(0, "stream_pause 7", 1);
    let refused = a.commit_intent(fence, &first, Some(CallRef { id, owner: "a" })).await;
    assert!(matches!(refused, Err(SendStoreError::NotClaimed(_))), "{refused:?}");
    assert!(a.unfinished(first.signer).await?.is_empty(), "the intent did not land alone");

    // The claimant commits: intent and `Sent` in one step.
    b.commit_intent(fence, &first, Some(CallRef { id, owner: "b" })).await?;
    let sent = CallRecord::Sent { params, transaction: first.hashes[0], raw: first.raw.clone() };
    assert_eq!(a.call(id).await?, Some(sent));
    assert_eq!(a.unfinished(first.signer).await?, vec![first.clone()]);

    // A fee bump keeps the payload and every hash; another payload at the nonce is refused.
    let bumped = intent(0, "stream_pause 7", 2);
    a.commit_intent(fence, &bumped, None).await?;
    let kept = a.unfinished(first.signer).await?;
    assert_eq!(kept[0].hashes, vec![first.hashes[0], bumped.hashes[0]]);
    assert_eq!(kept[0].raw, bumped.raw);
    let other = a.commit_intent(fence, &intent(0, "settlement batch 3", 3), None).await;
    assert!(matches!(other, Err(SendStoreError::NonceTaken { .. })), "{other:?}");
    a.commit_intent(fence, &intent(1, "settlement batch 3", 4), None).await?;
    let nonces: Vec<u64> = b.unfinished(first.signer).await?.iter().map(|i| i.nonce).collect();
    assert_eq!(nonces, vec![0, 1], "by nonce");
    // A new leader finds the payload its predecessor signed: the latest version at its nonce.
    let found = b.intent_carrying(first.signer, "stream_pause 7").await?.ok_or("recorded")?;
    assert_eq!((found.nonce, found.raw), (0, bumped.raw.clone()));
    assert_eq!(b.intent_carrying(first.signer, "settlement batch 9").await?, None);

    let receipt = json!({"transactionHash": B256::repeat_byte(2), "blockNumber": 9});
    a.complete(id, params, receipt.clone()).await?;
    assert_eq!(b.call(id).await?, Some(CallRecord::Done { params, receipt }));
    b.finish(first.signer, 0).await?;
    assert_eq!(a.unfinished(first.signer).await?.len(), 1, "nonce 0 finished");
    let kept = b.intent(first.signer, 0).await?.ok_or("a finished intent is kept")?;
    assert_eq!(kept.hashes.len(), 2);
    assert_eq!(b.intent(first.signer, 9).await?, None);

    // A call on a node that does not lead is queued; the leader signs it under the caller's
    // claim, or records why it cannot.
    let (queued, refused) = (B256::repeat_byte(4), B256::repeat_byte(5));
    let request = json!({"to": Address::repeat_byte(1), "input": "0x01"});
    for id in [queued, refused] {
        assert_eq!(b.claim(id, params, "q").await?, None);
        assert!(b.queue(id, "q", request.clone()).await?);
    }
    assert!(!b.queue(queued, "other", request.clone()).await?, "only the claimant queues");
    let waiting: Vec<B256> = a.queued().await?.iter().map(|q| q.id).collect();
    assert!(waiting.contains(&queued) && waiting.contains(&refused), "{waiting:?}");
    a.commit_intent(
        fence,
        &intent(2, "billing call 4", 6),
        Some(CallRef { id: queued, owner: "q" }),
    )
    .await?;
    assert!(matches!(b.call(queued).await?, Some(CallRecord::Sent { .. })));
    a.refuse(refused, "q", "the vault refuses: StreamPaused").await?;
    let answer = b.call(refused).await?;
    assert!(
        matches!(answer, Some(CallRecord::Refused { ref reason, .. }) if reason.contains("Paused"))
    );
    assert!(a.queued().await?.is_empty(), "nothing waits any more");
    assert!(b.release_claim(refused, "q").await?, "the caller frees its refused key");

    // A claim of a process that is gone (no liveness anywhere) is freed.
    let orphan = B256::repeat_byte(3);
    assert_eq!(a.claim(orphan, params, "ghost").await?, None);
    assert!(b.release_dead_claim(orphan, "ghost").await?);
    assert_eq!(b.claim(orphan, params, "b").await?, None, "claimed again");
    Ok(())
}

#[tokio::test]
async fn sled_keeps_the_send_contract() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path())?;
    let (a, b) = (SledSends::open(&db, "a")?, SledSends::open(&db, "b")?);
    send_contract(&a, &b, &Fence::Exclusive).await?;
    assert!(!a.release_dead_claim(B256::repeat_byte(9), "a").await?, "its own claims are alive");
    Ok(())
}

/// On PostgreSQL: the contract; claims race across nodes with one winner; a live node's claim
/// stays; an intent under a stale epoch (or no lease) is never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_send_contract_and_fences_intents() -> TestResult {
    let postgres = TestPostgres::start()?;
    let (a, b) = (
        PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?,
        PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?,
    );
    let lease = a.acquire("sender:0xaa", "node-a", Duration::from_secs(30)).await?.ok_or("free")?;
    send_contract(&a, &b, &Fence::Lease(lease.clone())).await?;

    // Twenty calls with one key on two nodes at once: one claim.
    let key = B256::repeat_byte(7);
    let racers = (0..20).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { store.claim(key, B256::ZERO, &format!("p{i}")).await })
    });
    let mut claims = 0;
    for racer in racers {
        claims += usize::from(racer.await??.is_none());
    }
    assert_eq!(claims, 1, "one call per idempotency key");

    // A claim whose owner keeps its liveness lease is not taken over.
    let live = B256::repeat_byte(8);
    a.acquire(&liveness_lease("alive"), "alive", Duration::from_secs(30)).await?.ok_or("free")?;
    assert_eq!(a.claim(live, B256::ZERO, "alive").await?, None);
    assert!(!b.release_dead_claim(live, "alive").await?, "a live node's claim stays");

    // Fencing: no lease, or an epoch taken over, commits nothing.
    let next = intent(5, "stream_resume 7", 5);
    let unfenced = a.commit_intent(&Fence::Exclusive, &next, None).await;
    assert!(matches!(unfenced, Err(SendStoreError::Unfenced)), "{unfenced:?}");
    b.release(&lease).await?;
    let taken = b.acquire("sender:0xaa", "node-b", Duration::from_secs(30)).await?.ok_or("free")?;
    let stale = a.commit_intent(&Fence::Lease(lease), &next, None).await;
    assert!(matches!(stale, Err(SendStoreError::Lost(_))), "{stale:?}");
    assert!(a.unfinished(next.signer).await?.iter().all(|i| i.nonce != 5), "nothing landed");
    b.commit_intent(&Fence::Lease(taken), &next, None).await?;
    assert!(a.unfinished(next.signer).await?.iter().any(|i| i.nonce == 5));
    Ok(())
}

/// A shared store over the network is reached over TLS, its certificate checked: a cluster that
/// takes TCP only over TLS is used with `sslmode=verify-full`, and refuses a plain connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_checks_the_server() -> TestResult {
    let (postgres, ca) = TestPostgres::start_tls()?;
    let store = PgStore::connect(&postgres.tls_url(&ca), Duration::from_secs(5)).await?;
    let lease = store.acquire("operator:0xtls", "node-a", TTL).await?.ok_or("free")?;
    store.check(&lease).await?;
    let plain = postgres.tls_url(&ca).replace("sslmode=verify-full", "sslmode=disable");
    let refused = PgStore::connect(&plain, Duration::from_secs(5)).await;
    assert!(refused.is_err(), "a plain connection is refused");
    // Without the CA, only the system's roots are trusted: the throwaway CA is not among them.
    let system_roots = postgres.tls_url(&ca).replace(&format!("&sslrootcert={}", ca.display()), "");
    let untrusted = PgStore::connect(&system_roots, Duration::from_secs(5)).await;
    assert!(untrusted.is_err(), "an unknown CA is not trusted");
    Ok(())
}

fn sponsorship<'a>(policy: &'a SponsorshipPolicy, sender: u8, cost: u64) -> ReservationRequest<'a> {
    ReservationRequest {
        policy,
        customer: "acme",
        sender: Address::repeat_byte(sender),
        entry_point: Address::repeat_byte(0xee),
        max_cost: U256::from(cost),
        now: 1_000_000,
        valid_until: 1_000_300,
        daily_budget: Some(U256::from(10_000)),
    }
}

fn mined(hash: u8, cost: u64, block: u8) -> SettledOp {
    SettledOp {
        user_op_hash: B256::repeat_byte(hash),
        sender: Address::repeat_byte(1),
        entry_point: Address::repeat_byte(0xee),
        actual_cost: U256::from(cost),
        block: B256::repeat_byte(block),
        timestamp: 1_000_010,
    }
}

/// What every ledger must do: caps, binding and settling at the actual cost (once), reorgs,
/// cancellation and expiry, each visible in usage and status.
async fn ledger_contract(ledger: &dyn LedgerStore) -> TestResult {
    let policy = SponsorshipPolicy {
        max_ops_per_sender: Some(2),
        max_wei_per_customer: Some(U256::from(1_000)),
        ..SponsorshipPolicy::unlimited("p")
    };
    let first = ledger.reserve(&sponsorship(&policy, 1, 400)).await??;
    let second = ledger.reserve(&sponsorship(&policy, 1, 400)).await??;
    let refused = ledger.reserve(&sponsorship(&policy, 1, 1)).await?;
    assert_eq!(refused.map_err(|r| r.rule), Err(PolicyRule::SenderOps));
    let over = ledger.check(&sponsorship(&policy, 2, 300)).await?;
    assert_eq!(over.map_err(|r| r.rule), Err(PolicyRule::CustomerWei), "800 + 300 > 1,000");
    let customer = customer_slot(&policy, "acme", 1_000_000);
    assert_eq!(ledger.usage(customer.clone()).await?, Usage { ops: 2, wei: U256::from(800) });

    // Bound and mined: charged at the actual cost, once; a reorg reopens it.
    ledger.bind(first.id, B256::repeat_byte(0xa1)).await?;
    ledger.settle(mined(0xa1, 150, 7)).await?;
    ledger.settle(mined(0xa1, 150, 7)).await?;
    assert_eq!(ledger.usage(customer.clone()).await?.wei, U256::from(550));
    ledger.settle(mined(0xb2, 90, 7)).await?; // mined without a reservation here
    let status = ledger.status().await?;
    assert_eq!((status.totals.settled_ops, status.totals.unreserved_ops), (2, 1));
    assert_eq!(status.totals.settled_wei, U256::from(240));
    assert_eq!((status.open_reservations, status.open_wei), (1, U256::from(400)));
    assert_eq!(ledger.unsettle(&[B256::repeat_byte(7)]).await?, 2);
    assert_eq!(ledger.usage(customer.clone()).await?.wei, U256::from(800), "open again");
    assert_eq!(ledger.status().await?.totals, Default::default());

    // Cancelled: nothing left; expired: released, charged nothing.
    ledger.cancel(second.id).await?;
    assert_eq!(ledger.reservation(second.id).await?, None);
    assert_eq!(
        ledger.usage(sender_slot(&policy, Address::repeat_byte(1), 1_000_000)).await?.ops,
        1
    );
    assert_eq!(ledger.expire(1_000_400, 60).await?, 1);
    let released = ledger.reservation(first.id).await?.ok_or("kept")?;
    assert_eq!(released.state, ReservationState::Released);
    assert_eq!(ledger.usage(customer).await?, Usage::default());
    assert_eq!(ledger.usage(daily_slot(1_000_000)).await?, Usage::default());
    ledger.flush().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_keeps_the_ledger_contract() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path())?;
    ledger_contract(&Ledger::open(db.open_tree("ledger")?)?).await
}

/// On PostgreSQL: the contract, and 50 concurrent reservations split over two nodes against a
/// cap of 20 ops and a budget of 30 × 100 wei: exactly 20 granted, usage exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_ledger_contract_and_caps_under_concurrency() -> TestResult {
    let postgres = TestPostgres::start()?;
    let url = postgres.url();
    let connect = || PgStore::connect(&url, Duration::from_secs(5));
    let (a, b) = (PgLedger::new(connect().await?), PgLedger::new(connect().await?));
    ledger_contract(&a).await?;

    let policy = Arc::new(SponsorshipPolicy {
        max_ops_per_customer: Some(20),
        ..SponsorshipPolicy::unlimited("burst")
    });
    let started = Instant::now();
    let racers: Vec<_> = (0..50)
        .map(|i| {
            let (node, policy) = (if i % 2 == 0 { a.clone() } else { b.clone() }, policy.clone());
            tokio::spawn(async move {
                let mut request = sponsorship(&policy, i as u8, 100);
                request.daily_budget = Some(U256::from(3_000));
                node.reserve(&request).await.map(|granted| granted.is_ok())
            })
        })
        .collect();
    let mut granted = 0;
    for racer in racers {
        granted += usize::from(racer.await??);
    }
    eprintln!("ledger: 50 concurrent reservations on two nodes in {:?}", started.elapsed());
    assert_eq!(granted, 20, "a cap of 20 ops admits exactly 20");
    let used = a.usage(customer_slot(&policy, "acme", 1_000_000)).await?;
    assert_eq!(used, Usage { ops: 20, wei: U256::from(2_000) });
    assert_eq!(b.status().await?.open_reservations, 20);
    Ok(())
}

/// Settlement's store on PostgreSQL: the contract the sled backend keeps (in the settlement
/// crate), rounds' writes fenced by the operator key's lease, and usage reports racing a
/// period's close on another node: each is either in the period's fold or refused, never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_settlement_contract_and_fences_rounds() -> TestResult {
    use settled_settlement::{
        PgSettlement, SettlementStore, UsageError, fold_usage, store_contract,
    };
    let postgres = TestPostgres::start()?;
    let (a, b) = (
        PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?,
        PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?,
    );
    let lease =
        a.acquire("operator:0xaa", "node-a", Duration::from_secs(30)).await?.ok_or("free")?;
    let (on_a, on_b) = (PgSettlement::new(a.clone()), Arc::new(PgSettlement::new(b.clone())));
    let fence = Fence::Lease(lease.clone());
    store_contract::usage_reports_fold_and_close(&on_a, &fence).await?;
    store_contract::periods_batches_and_orders(&on_a, &fence).await?;

    // 40 reports on node b while node a closes the next period (the contract's last period
    // ended at 2026-01-01 00:01:39).
    const AFTER: u64 = 1_767_225_600 + 1_000;
    let racers: Vec<_> = (0..40u64)
        .map(|i| {
            let store = on_b.clone();
            tokio::spawn(async move {
                // Spread over 40 ms, so the close lands among them.
                tokio::time::sleep(Duration::from_millis(i)).await;
                let digest = B256::from(U256::from(i + 1));
                (AFTER + 1 + i, digest, store.record_usage(9, AFTER + 1 + i, digest).await)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let folds = on_a.close_usage(&fence, AFTER, AFTER + 100).await?;
    let mut expected = B256::ZERO;
    let (mut accepted, mut refused) = (0, 0);
    for racer in racers {
        match racer.await? {
            (at, digest, Ok(())) => {
                expected = fold_usage(expected, at, digest);
                accepted += 1;
            }
            (_, _, Err(UsageError::Settled { .. })) => refused += 1,
            (_, _, Err(e)) => return Err(e.into()),
        }
    }
    eprintln!("usage reports racing a close: {accepted} in the period, {refused} refused");
    let folded = folds.get(&9).copied().unwrap_or_default();
    assert_eq!(folded, expected, "every accepted report is in the period, in order");
    assert_eq!(accepted + refused, 40);

    // Fencing: once another node took the operator key over, the old epoch writes nothing.
    b.release(&lease).await?;
    let taken =
        b.acquire("operator:0xaa", "node-b", Duration::from_secs(30)).await?.ok_or("free")?;
    let before = on_a.batch(1).await?.ok_or("batch 1")?;
    let mut changed = before.clone();
    changed.stage = settled_settlement::BatchStage::Built;
    let stale = on_a.put_batch(&fence, &changed).await;
    assert!(matches!(stale, Err(settled_settlement::SchedulerError::Lost(_))), "{stale:?}");
    assert!(on_a.close_usage(&fence, AFTER + 100, AFTER + 200).await.is_err(), "a stale close");
    assert!(on_a.put_batch(&Fence::Exclusive, &changed).await.is_err(), "unfenced");
    assert_eq!(on_b.batch(1).await?, Some(before), "nothing landed");
    on_b.put_batch(&Fence::Lease(taken), &changed).await?;
    assert_eq!(on_a.batch(1).await?, Some(changed), "every node reads the leader's write");
    Ok(())
}

/// The bundler's contract on PostgreSQL (sled's runs in the bundler's unit tests), with the
/// submissions only a shared store has; a node without the bundler key's lease, or with a lease
/// taken over since, writes nothing, while its idempotent writes (indexing) still land.
#[tokio::test]
async fn postgres_keeps_the_bundler_contract_and_fences_the_leader() -> TestResult {
    use settled_bundler::{BundlerStore as _, BundlerStoreError, store_contract};
    use settled_store::PgBundler;
    let postgres = TestPostgres::start()?;
    let store = PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?;
    let lease =
        store.acquire("bundler:0xbb", "node-a", Duration::from_millis(300)).await?.ok_or("free")?;
    let (fence_tx, fence) = tokio::sync::watch::channel(Some(Fence::Lease(lease)));
    let leader = PgBundler::new(store.clone(), fence);
    store_contract::pool_index_and_records(&leader).await?;
    store_contract::submissions(&leader).await?;

    // Not leading: refused, nothing written.
    let (_, none) = tokio::sync::watch::channel(None);
    let follower = PgBundler::new(store.clone(), none);
    let op = store_contract::op(0x41, 0);
    let v08 = settled_contracts::EntryPointVersion::V08;
    let id = follower.submit(v08.canonical_address(), &op).await?;
    let refused =
        settled_bundler::Verdict::Refused { code: -32602, message: "x".into(), data: None };
    assert!(matches!(follower.answer(id, &refused).await, Err(BundlerStoreError::Lost(_))));
    assert!(matches!(follower.clear_reputation().await, Err(BundlerStoreError::Lost(_))));

    // Taken over by node b after the lease lapsed: node a's fence is stale.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = store.acquire("bundler:0xbb", "node-b", Duration::from_secs(30)).await?;
    assert_eq!(taken.map(|l| l.epoch), Some(2));
    let record = settled_bundler::SentOps { ops: Vec::new(), raw: None };
    assert!(matches!(leader.record_sent(3, &record).await, Err(BundlerStoreError::Lost(_))));
    assert!(matches!(leader.answer(id, &refused).await, Err(BundlerStoreError::Lost(_))));
    assert!(leader.sent().await?.is_empty(), "the stale leader's record did not land");
    assert_eq!(follower.verdict(id, false).await?, None, "still waiting for the new leader");
    drop(fence_tx);
    Ok(())
}
