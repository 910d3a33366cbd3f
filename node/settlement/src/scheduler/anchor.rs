//! Where batches are committed: the anchor chain (the streams' chain, or an L1 that takes blobs
//! when the streams live on an L2 that does not), how (a blob, or calldata on a chain without
//! blobs), and what settling cost.

use super::*;

/// How a batch's records reach the anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnchorMode {
    /// In an EIP-4844 blob of a type-3 transaction (`SettlementAnchor.commit`); the anchor keeps
    /// the blob's versioned hash.
    #[default]
    Blob,
    /// In the commit's calldata (`SettlementAnchor.commitCalldata`), for chains without blobs;
    /// the anchor keeps the payload's keccak256.
    Calldata,
}

impl AnchorMode {
    /// The name used in flags and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blob => "blob",
            Self::Calldata => "calldata",
        }
    }
}

impl std::str::FromStr for AnchorMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blob" => Ok(Self::Blob),
            "calldata" => Ok(Self::Calldata),
            other => Err(format!("unknown anchor mode {other:?} (blob, calldata)")),
        }
    }
}

/// The chain batches are committed on.
#[derive(Debug, Clone)]
pub struct AnchorChain {
    /// Sends the commits; batches are committed under its address.
    pub sender: Arc<TransactionSender>,
    /// The `SettlementAnchor` there.
    pub anchor: Address,
    /// The anchor chain's id.
    pub chain_id: u64,
    /// Blob or calldata.
    pub mode: AnchorMode,
}

impl AnchorChain {
    /// The address batches are committed under.
    pub fn committer(&self) -> Address {
        self.sender.address()
    }

    /// The anchor chain's provider.
    pub fn provider(&self) -> &DynProvider {
        self.sender.provider()
    }
}

/// What settling a batch cost, in wei of each chain's native token (decimal strings in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchCosts {
    /// The batch's share of its period's withdrawal transactions: their L2 gas (gas used ×
    /// effective gas price), shared among the period's batches by record count.
    #[serde(with = "crate::record::decimal_amount")]
    pub withdrawal_gas_wei: u128,
    /// The same transactions' L1 data fee (OP stack; 0 elsewhere).
    #[serde(with = "crate::record::decimal_amount")]
    pub withdrawal_l1_fee_wei: u128,
    /// The commit's execution gas on the anchor chain (gas used × effective gas price).
    #[serde(with = "crate::record::decimal_amount")]
    pub anchor_gas_wei: u128,
    /// The commit's blob gas (blob gas used × blob gas price; 0 in calldata mode).
    #[serde(with = "crate::record::decimal_amount")]
    pub anchor_blob_wei: u128,
}

impl BatchCosts {
    /// On the streams' chain.
    pub fn l2_wei(&self) -> u128 {
        self.withdrawal_gas_wei.saturating_add(self.withdrawal_l1_fee_wei)
    }

    /// On the anchor chain.
    pub fn anchor_wei(&self) -> u128 {
        self.anchor_gas_wei.saturating_add(self.anchor_blob_wei)
    }

    /// `part / whole` of each cost, rounded down (an invoice line's share of its batch).
    pub fn share(&self, part: u128, whole: u128) -> Self {
        let of = |wei: u128| {
            if whole == 0 {
                return 0;
            }
            let shared = alloy::primitives::U256::from(wei) * alloy::primitives::U256::from(part)
                / alloy::primitives::U256::from(whole);
            u128::try_from(shared).unwrap_or(u128::MAX)
        };
        Self {
            withdrawal_gas_wei: of(self.withdrawal_gas_wei),
            withdrawal_l1_fee_wei: of(self.withdrawal_l1_fee_wei),
            anchor_gas_wei: of(self.anchor_gas_wei),
            anchor_blob_wei: of(self.anchor_blob_wei),
        }
    }

    /// The sum of `self` and `other`.
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            withdrawal_gas_wei: self.withdrawal_gas_wei.saturating_add(other.withdrawal_gas_wei),
            withdrawal_l1_fee_wei: self
                .withdrawal_l1_fee_wei
                .saturating_add(other.withdrawal_l1_fee_wei),
            anchor_gas_wei: self.anchor_gas_wei.saturating_add(other.anchor_gas_wei),
            anchor_blob_wei: self.anchor_blob_wei.saturating_add(other.anchor_blob_wei),
        }
    }
}

/// `total` shared among `counts` by weight, rounded down, the remainder on the first: the
/// shares sum to `total` exactly.
pub(super) fn split_by_count(total: u128, counts: &[usize]) -> Vec<u128> {
    let all: u128 = counts.iter().map(|c| *c as u128).sum();
    if all == 0 {
        return vec![0; counts.len()];
    }
    let mut shares: Vec<u128> = counts
        .iter()
        .map(|c| {
            let share = alloy::primitives::U256::from(total) * alloy::primitives::U256::from(*c)
                / alloy::primitives::U256::from(all);
            u128::try_from(share).unwrap_or(u128::MAX)
        })
        .collect();
    let given: u128 = shares.iter().sum();
    if let Some(first) = shares.first_mut() {
        *first += total - given;
    }
    shares
}

/// The settlement overhead of `costs` (wei) against `settled` token base units, at
/// `eth_price_micro_usd` micro-dollars per ETH for a USD token with 6 decimals (USDC): parts
/// per million, rounded up (an overhead is never understated).
pub fn overhead_ppm(costs_wei: u128, settled: u128, eth_price_micro_usd: u128) -> Option<u128> {
    use alloy::primitives::U256;
    if settled == 0 {
        return None;
    }
    // wei × micro-USD/ETH / 1e18 = micro-USD = USDC base units.
    let cost_micro_usd = U256::from(costs_wei) * U256::from(eth_price_micro_usd);
    let scaled = cost_micro_usd * U256::from(1_000_000u64);
    let denominator = U256::from(settled) * U256::from(10u128.pow(18));
    u128::try_from(scaled.div_ceil(denominator)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_the_total() {
        assert_eq!(split_by_count(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(split_by_count(0, &[2, 5]), vec![0, 0]);
        assert_eq!(split_by_count(7, &[0, 0]), vec![0, 0]);
        for (total, counts) in [(1_000_003u128, vec![3usize, 7, 11]), (u128::MAX, vec![1, 2])] {
            let shares = split_by_count(total, &counts);
            assert_eq!(shares.iter().fold(0u128, |a, b| a.saturating_add(*b)), total);
        }
    }

    #[test]
    fn overhead_is_parts_per_million_rounded_up() {
        // 0.0001 ETH at $3,000 = $0.30 on $100 settled: 0.3% = 3,000 ppm.
        let cost = 100_000_000_000_000u128;
        assert_eq!(overhead_ppm(cost, 100_000_000, 3_000_000_000), Some(3_000));
        assert_eq!(overhead_ppm(1, 100_000_000, 3_000_000_000), Some(1), "never rounds to 0");
        assert_eq!(overhead_ppm(cost, 0, 3_000_000_000), None);
    }

    #[test]
    fn a_share_rounds_down() {
        let costs = BatchCosts {
            withdrawal_gas_wei: 100,
            withdrawal_l1_fee_wei: 10,
            anchor_gas_wei: 7,
            anchor_blob_wei: 1,
        };
        let third = costs.share(1, 3);
        assert_eq!(
            (third.withdrawal_gas_wei, third.anchor_gas_wei, third.anchor_blob_wei),
            (33, 2, 0)
        );
        assert_eq!(costs.share(1, 0), BatchCosts::default());
        assert_eq!(costs.l2_wei() + costs.anchor_wei(), 118);
        assert_eq!(third.plus(&third).withdrawal_gas_wei, 66);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("blob".parse(), Ok(AnchorMode::Blob));
        assert_eq!("calldata".parse(), Ok(AnchorMode::Calldata));
        assert!("ipfs".parse::<AnchorMode>().is_err());
        assert_eq!(
            serde_json::to_string(&AnchorMode::Calldata).ok().as_deref(),
            Some("\"calldata\"")
        );
    }
}
