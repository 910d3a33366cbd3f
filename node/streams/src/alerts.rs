//! What billing backends are told as it happens: every change of a stream, and two alerts —
//! `lowBalance` when the balance will run out within the configured horizon, `depleted` when the
//! debt exceeds the balance. Each alert fires once per situation (a new projection or balance
//! re-arms it). Also the streams' metrics.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use metrics::{describe_counter, describe_gauge};
use serde::{Deserialize, Serialize};

use super::{
    accrual::{NEVER_DEPLETES, StreamState},
    index::StreamId,
    rpc::StreamView,
};

/// Gauge: streams neither closed nor paused.
pub(crate) const ACTIVE_STREAMS: &str = "settled_streams_active";
/// Gauge: base units paid to payees since the node started indexing, per `token`.
pub(crate) const WITHDRAWN: &str = "settled_streams_withdrawn_base_units";
/// Counter: alerts fired, per `kind`.
pub(crate) const ALERTS: &str = "settled_streams_alerts_total";
/// Gauge: the last block the stream index applied (lag = `settled_chain_head_block` − this).
pub(crate) const INDEX_BLOCK: &str = "settled_streams_index_block";
/// Counter: vault events applied.
pub(crate) const EVENTS: &str = "settled_streams_events_total";

/// Registers the descriptions of the streams' metrics.
pub fn describe_metrics() {
    describe_gauge!(ACTIVE_STREAMS, "Streams neither closed nor paused");
    describe_gauge!(WITHDRAWN, "Base units paid to payees (as indexed), by token");
    describe_counter!(ALERTS, "Stream alerts fired, by kind (lowBalance, depleted)");
    describe_gauge!(INDEX_BLOCK, "Last block applied by the stream index");
    describe_counter!(EVENTS, "StreamVault events applied by the stream index");
    // Served from the start at zero, not only after its first event.
    metrics::counter!(EVENTS).increment(0);
}

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NoticeKind {
    /// The stream changed (an event of the vault).
    Changed,
    /// It will run out within the low-balance horizon.
    LowBalance,
    /// Its debt exceeds its balance.
    Depleted,
}

impl NoticeKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::LowBalance => "lowBalance",
            Self::Depleted => "depleted",
        }
    }
}

/// One notice to `stream_subscribe`rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamNotice {
    /// What happened.
    pub kind: NoticeKind,
    /// The block it was seen at.
    pub block: u64,
    /// The stream, with balances at the block's time.
    pub stream: StreamView,
}

/// The alert horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertThresholds {
    /// `lowBalance` when the stream depletes within this many seconds.
    pub low_balance_secs: u64,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self { low_balance_secs: 3_600 }
    }
}

/// Which alert each stream last got, and when each needs looking at again: streams are only
/// re-examined when they change or when their next alert is due, never all at every block.
#[derive(Debug, Default)]
pub(crate) struct Alerts {
    thresholds: AlertThresholds,
    state: Mutex<AlertState>,
}

#[derive(Debug, Default)]
struct AlertState {
    /// The situation each stream was last alerted for: one alert per crossing into it, however
    /// often the stream changes while in it.
    fired: HashMap<StreamId, NoticeKind>,
    /// `(second, stream)`: when a stream's next alert may be due.
    schedule: BTreeSet<(u64, StreamId)>,
    /// Each scheduled stream's entry in `schedule`.
    due_at: HashMap<StreamId, u64>,
}

impl Alerts {
    pub(crate) fn new(thresholds: AlertThresholds) -> Self {
        Self { thresholds, state: Mutex::default() }
    }

    /// Forgets every stream's alerts and schedule (before scheduling them all again).
    pub(crate) fn reset(&self) {
        if let Ok(mut alerts) = self.state.lock() {
            *alerts = AlertState::default();
        }
    }

    /// Examines `state` at second `at`: the alert it calls for now (once per situation), and
    /// when to look again.
    pub(crate) fn check(
        &self,
        id: StreamId,
        state: &StreamState,
        at: u64,
        block: u64,
    ) -> Option<StreamNotice> {
        let Ok(mut alerts) = self.state.lock() else { return None };
        if let Some(previous) = alerts.due_at.remove(&id) {
            alerts.schedule.remove(&(previous, id));
        }
        if state.closed {
            alerts.fired.remove(&id);
            return None;
        }
        let depletion = state.depletion_time(at);
        let horizon = self.thresholds.low_balance_secs;
        let (situation, next) = match depletion {
            0 => (Some(NoticeKind::Depleted), None),
            NEVER_DEPLETES => (None, None),
            t if t.saturating_sub(at) <= horizon => (Some(NoticeKind::LowBalance), Some(t)),
            t => (None, Some(t - horizon)),
        };
        if let Some(next) = next {
            alerts.schedule.insert((next, id));
            alerts.due_at.insert(id, next);
        }
        let Some(kind) = situation else {
            alerts.fired.remove(&id);
            return None;
        };
        if alerts.fired.get(&id) == Some(&kind) {
            return None;
        }
        alerts.fired.insert(id, kind);
        ::metrics::counter!(ALERTS, "kind" => kind.as_str()).increment(1);
        Some(StreamNotice { kind, block, stream: StreamView::new(id, state, at) })
    }

    /// The streams whose next alert is due by second `at` (taken off the schedule).
    pub(crate) fn due(&self, at: u64) -> Vec<StreamId> {
        let Ok(mut alerts) = self.state.lock() else { return Vec::new() };
        let due: Vec<(u64, StreamId)> =
            alerts.schedule.range(..=(at, StreamId::MAX)).copied().collect();
        for entry in &due {
            alerts.schedule.remove(entry);
            alerts.due_at.remove(&entry.1);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::Address;

    use super::*;

    #[test]
    fn alerts_fire_once_per_situation() -> Result<(), crate::StreamError> {
        let alerts = Alerts::new(AlertThresholds { low_balance_secs: 100 });
        let mut s = StreamState::opened(
            Address::ZERO,
            Address::ZERO,
            Address::ZERO,
            Address::ZERO,
            6,
            1_000_000_000_000_000_000,
            0,
            0,
            1_000,
        )?;
        s.deposit(500_000_000)?; // 500 s of runway
        let kinds = |at: u64, s: &StreamState| -> Vec<NoticeKind> {
            alerts.check(1, s, at, 0).into_iter().map(|n| n.kind).collect()
        };
        assert_eq!(kinds(1_000, &s), vec![], "500 s left: beyond the horizon");
        assert_eq!(alerts.due(1_399), Vec::<StreamId>::new(), "not yet due");
        assert_eq!(alerts.due(1_401), vec![1], "due when 100 s are left");
        assert_eq!(kinds(1_450, &s), vec![NoticeKind::LowBalance]);
        assert_eq!(kinds(1_460, &s), vec![], "once");
        s.deposit(10_000_000)?; // 10 s more: still within the horizon
        assert_eq!(kinds(1_465, &s), vec![], "a change while low is no new crossing");
        assert_eq!(alerts.due(1_511), vec![1], "due again at depletion (10 s later)");
        assert_eq!(kinds(1_600, &s), vec![NoticeKind::Depleted]);
        assert_eq!(kinds(1_700, &s), vec![], "once");
        s.deposit(1_000_000_000)?;
        assert_eq!(kinds(1_700, &s), vec![], "topped up: runway beyond the horizon");
        assert_eq!(kinds(2_450, &s), vec![NoticeKind::LowBalance], "re-armed");
        Ok(())
    }
}
