//! What billing backends are told as it happens: every change of a stream, and two alerts —
//! `lowBalance` when the balance will run out within the configured horizon, `depleted` when the
//! debt exceeds the balance. Each alert fires once per situation (a new projection or balance
//! re-arms it). Also the streams' metrics.

use std::{collections::HashMap, sync::Mutex};

use metrics::{describe_counter, describe_gauge};
use serde::{Deserialize, Serialize};

use super::{
    accrual::{NEVER_DEPLETES, StreamState},
    index::StreamId,
    rpc::StreamView,
};

/// Gauge: streams neither closed nor paused.
pub(crate) const ACTIVE_STREAMS: &str = "settled_streams_active";
/// Gauge: base units streamed (withdrawn + owed now) across all streams, per `token`.
pub(crate) const STREAMED: &str = "settled_streams_streamed_base_units";
/// Counter: alerts fired, per `kind`.
pub(crate) const ALERTS: &str = "settled_streams_alerts_total";
/// Gauge: the last block the stream index applied (lag = `settled_chain_head_block` − this).
pub(crate) const INDEX_BLOCK: &str = "settled_streams_index_block";
/// Counter: vault events applied.
pub(crate) const EVENTS: &str = "settled_streams_events_total";

/// Registers the descriptions of the streams' metrics.
pub(crate) fn describe_metrics() {
    describe_gauge!(ACTIVE_STREAMS, "Streams neither closed nor paused");
    describe_gauge!(STREAMED, "Base units streamed (withdrawn + owed) across streams, by token");
    describe_counter!(ALERTS, "Stream alerts fired, by kind (lowBalance, depleted)");
    describe_gauge!(INDEX_BLOCK, "Last block applied by the stream index");
    describe_counter!(EVENTS, "StreamVault events applied by the stream index");
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

/// Which alert each stream last got, and for what situation.
#[derive(Debug, Default)]
pub(crate) struct Alerts {
    thresholds: AlertThresholds,
    fired: Mutex<HashMap<StreamId, (NoticeKind, u64, u128)>>,
}

impl Alerts {
    pub(crate) fn new(thresholds: AlertThresholds) -> Self {
        Self { thresholds, fired: Mutex::default() }
    }

    /// The alerts `streams` call for at second `at` (each once per situation), and the metrics.
    pub(crate) fn evaluate<'a>(
        &self,
        streams: impl Iterator<Item = (StreamId, &'a StreamState)>,
        at: u64,
        block: u64,
    ) -> Vec<StreamNotice> {
        let Ok(mut fired) = self.fired.lock() else { return Vec::new() };
        let mut notices = Vec::new();
        let mut active = 0u64;
        let mut streamed: HashMap<alloy::primitives::Address, f64> = HashMap::new();
        for (id, state) in streams {
            *streamed.entry(state.token).or_default() +=
                state.withdrawn as f64 + f64::from(state.total_debt(at));
            if state.closed {
                fired.remove(&id);
                continue;
            }
            if !state.paused {
                active += 1;
            }
            let depletion = state.depletion_time(at);
            let situation = match depletion {
                0 => Some(NoticeKind::Depleted),
                NEVER_DEPLETES => None,
                t if t.saturating_sub(at) <= self.thresholds.low_balance_secs => {
                    Some(NoticeKind::LowBalance)
                }
                _ => None,
            };
            let Some(kind) = situation else {
                fired.remove(&id);
                continue;
            };
            let key = (kind, depletion, state.balance);
            if fired.get(&id) == Some(&key) {
                continue;
            }
            fired.insert(id, key);
            ::metrics::counter!(ALERTS, "kind" => kind.as_str()).increment(1);
            notices.push(StreamNotice { kind, block, stream: StreamView::new(id, state, at) });
        }
        ::metrics::gauge!(ACTIVE_STREAMS).set(active as f64);
        for (token, units) in streamed {
            ::metrics::gauge!(STREAMED, "token" => token.to_string()).set(units);
        }
        notices
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::Address;

    use super::*;

    #[test]
    fn alerts_fire_once_per_situation() -> Result<(), super::super::StreamError> {
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
            alerts.evaluate(std::iter::once((1, s)), at, 0).into_iter().map(|n| n.kind).collect()
        };
        assert_eq!(kinds(1_000, &s), vec![], "500 s left: beyond the horizon");
        assert_eq!(kinds(1_450, &s), vec![NoticeKind::LowBalance]);
        assert_eq!(kinds(1_460, &s), vec![], "once");
        assert_eq!(kinds(1_600, &s), vec![NoticeKind::Depleted]);
        assert_eq!(kinds(1_700, &s), vec![], "once");
        s.deposit(1_000_000_000)?;
        assert_eq!(kinds(1_700, &s), vec![], "topped up: runway beyond the horizon");
        assert_eq!(kinds(2_450, &s), vec![NoticeKind::LowBalance], "re-armed");
        Ok(())
    }
}
