//! Unit tests of the parent module.

use std::sync::Arc;

use super::*;
use crate::policy::PolicyRule;

fn ledger() -> Result<(tempfile::TempDir, sled::Db, Ledger), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path())?;
    let ledger = Ledger::open(db.open_tree("ledger")?)?;
    Ok((dir, db, ledger))
}

fn request<'a>(policy: &'a SponsorshipPolicy, sender: u8, cost: u64) -> ReservationRequest<'a> {
    ReservationRequest {
        policy,
        customer: "acme",
        sender: Address::repeat_byte(sender),
        entry_point: Address::repeat_byte(0xee),
        max_cost: U256::from(cost),
        now: 1_000_000,
        valid_until: 1_000_300,
        daily_budget: None,
    }
}

#[test]
fn caps_table() -> Result<(), Box<dyn std::error::Error>> {
    let base = SponsorshipPolicy::unlimited("p");
    let cases = [
        (
            SponsorshipPolicy { max_ops_per_sender: Some(2), ..base.clone() },
            None,
            PolicyRule::SenderOps,
        ),
        (
            SponsorshipPolicy { max_wei_per_sender: Some(U256::from(250)), ..base.clone() },
            None,
            PolicyRule::SenderWei,
        ),
        (
            SponsorshipPolicy { max_ops_per_customer: Some(2), ..base.clone() },
            None,
            PolicyRule::CustomerOps,
        ),
        (
            SponsorshipPolicy { max_wei_per_customer: Some(U256::from(250)), ..base.clone() },
            None,
            PolicyRule::CustomerWei,
        ),
        (base.clone(), Some(U256::from(250)), PolicyRule::DailyBudget),
    ];
    for (policy, budget, rule) in cases {
        let (_dir, _db, ledger) = ledger()?;
        let mut req = request(&policy, 1, 100);
        req.daily_budget = budget;
        assert!(ledger.reserve(&req)?.is_ok(), "{rule}: first");
        assert!(ledger.reserve(&req)?.is_ok(), "{rule}: second");
        let third = ledger.reserve(&req)?.err().map(|r| r.rule);
        assert_eq!(third, Some(rule), "{rule}: third refused");
    }
    Ok(())
}

#[test]
fn settlement_charges_actual_cost_and_expiry_frees_the_cap()
-> Result<(), Box<dyn std::error::Error>> {
    let policy = SponsorshipPolicy {
        max_wei_per_sender: Some(U256::from(200)),
        ..SponsorshipPolicy::unlimited("p")
    };
    let (_dir, _db, ledger) = ledger()?;
    let a = ledger.reserve(&request(&policy, 1, 100))?.map_err(|r| r.to_string())?;
    let b = ledger.reserve(&request(&policy, 1, 100))?.map_err(|r| r.to_string())?;
    assert!(ledger.reserve(&request(&policy, 1, 100))?.is_err(), "cap full at worst case");
    let hash = B256::repeat_byte(1);
    ledger.bind(a.id, hash)?;
    ledger.settle(
        hash,
        a.sender,
        a.entry_point,
        U256::from(30),
        B256::repeat_byte(0xb1),
        1_000_010,
    )?;
    ledger.settle(
        hash,
        a.sender,
        a.entry_point,
        U256::from(30),
        B256::repeat_byte(0xb1),
        1_000_010,
    )?;
    let usage = ledger.sender_usage(&policy, a.sender, 1_000_000)?;
    assert_eq!((usage.ops, usage.wei), (2, U256::from(130)), "settled at actual cost, once");
    assert!(ledger.reserve(&request(&policy, 1, 100))?.is_err(), "30 + 100 + 100 > 200");
    assert_eq!(ledger.expire(1_000_300 + 60, 60)?, 0, "not past the grace yet");
    assert_eq!(ledger.expire(1_000_300 + 61, 60)?, 1, "b expired unused");
    assert_eq!(ledger.reservation(b.id)?.map(|r| r.state), Some(ReservationState::Released));
    let c = ledger.reserve(&request(&policy, 1, 100))?;
    assert!(c.is_ok(), "the released reservation freed the cap");
    let status = ledger.status()?;
    assert_eq!(status.totals.settled_wei, U256::from(30));
    assert_eq!(status.open_reservations, 1);
    Ok(())
}

#[test]
fn reorg_reopens_and_restart_rebuilds() -> Result<(), Box<dyn std::error::Error>> {
    let policy =
        SponsorshipPolicy { max_ops_per_sender: Some(5), ..SponsorshipPolicy::unlimited("p") };
    let dir = tempfile::tempdir()?;
    let block = B256::repeat_byte(0xb1);
    let before = {
        let db = sled::open(dir.path())?;
        let ledger = Ledger::open(db.open_tree("ledger")?)?;
        let a = ledger.reserve(&request(&policy, 1, 100))?.map_err(|r| r.to_string())?;
        ledger.bind(a.id, B256::repeat_byte(1))?;
        ledger.settle(B256::repeat_byte(1), a.sender, a.entry_point, U256::from(40), block, 1)?;
        ledger.settle(B256::repeat_byte(2), a.sender, a.entry_point, U256::from(7), block, 1)?;
        let cancelled = ledger.reserve(&request(&policy, 1, 100))?.map_err(|r| r.to_string())?;
        ledger.cancel(cancelled.id)?;
        assert_eq!(ledger.status()?.totals.settled_wei, U256::from(47));
        assert_eq!(ledger.status()?.totals.unreserved_ops, 1);
        assert_eq!(ledger.unsettle(&[block])?, 2);
        let status = ledger.status()?;
        assert_eq!((status.totals.settled_wei, status.totals.unreserved_ops), (U256::ZERO, 0));
        assert_eq!(status.open_reservations, 1);
        ledger.flush()?;
        (status, ledger.sender_usage(&policy, a.sender, 1_000_000)?)
    };
    let db = settled_contracts::reopen_sled(dir.path())?;
    let ledger = Ledger::open(db.open_tree("ledger")?)?;
    assert_eq!(ledger.status()?, before.0);
    assert_eq!(ledger.sender_usage(&policy, Address::repeat_byte(1), 1_000_000)?, before.1);
    let next = ledger.reserve(&request(&policy, 1, 1))?.map_err(|r| r.to_string())?;
    assert!(next.id > 3, "ids are never reused: {}", next.id);
    Ok(())
}

#[test]
fn concurrent_reservations_never_overshoot_a_cap() -> Result<(), Box<dyn std::error::Error>> {
    let policy = Arc::new(SponsorshipPolicy {
        max_ops_per_customer: Some(17),
        ..SponsorshipPolicy::unlimited("p")
    });
    let (_dir, _db, ledger) = ledger()?;
    let ledger = Arc::new(ledger);
    let granted: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100u8)
            .map(|i| {
                let (ledger, policy) = (ledger.clone(), policy.clone());
                scope.spawn(move || {
                    ledger.reserve(&request(&policy, i, 10)).ok().and_then(|r| r.ok()).is_some()
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).filter(|ok| *ok).count()
    });
    assert_eq!(granted, 17);
    Ok(())
}
