//! One loop for every WebSocket subscription that relays a broadcast channel (stream notices,
//! customer pages, purchase-order alerts): each item the subscription's filter keeps is sent
//! until the client leaves, the channel closes or the filter ends it; a lagging receiver skips
//! what it missed rather than ending the subscription.

use jsonrpsee::{SubscriptionSink, core::SubscriptionResult};
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};

/// What a subscription does with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// Send it.
    Send,
    /// Not for this subscriber.
    Skip,
    /// End the subscription (a link expired).
    Stop,
}

/// Relays `items` to `sink` through `filter`.
pub async fn forward<T: Serialize + Clone>(
    sink: SubscriptionSink,
    mut items: broadcast::Receiver<T>,
    mut filter: impl FnMut(&T) -> Relay + Send,
) -> SubscriptionResult {
    loop {
        let item = tokio::select! {
            _ = sink.closed() => break,
            item = items.recv() => item,
        };
        let item = match item {
            Ok(item) => item,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => break,
        };
        match filter(&item) {
            Relay::Skip => continue,
            Relay::Stop => break,
            Relay::Send => {}
        }
        if sink.send(serde_json::value::to_raw_value(&item)?).await.is_err() {
            break;
        }
    }
    Ok(())
}
