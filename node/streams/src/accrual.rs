//! `StreamVault`'s accounting, mirrored exactly: the same 18-decimal scaled debt, the same
//! round-down to base units, the same snapshot updates on every state change. Given the
//! timestamps of the blocks that changed a stream, it answers every view of the contract at any
//! later second without asking the chain.

use alloy::primitives::{Address, U256};
use serde::{Deserialize, Serialize};

/// `type(uint40).max`: the vault's "never" for a depletion time.
pub const NEVER_DEPLETES: u64 = (1 << 40) - 1;

/// The vault stores rates in 80 bits.
pub(crate) const MAX_RATE_PER_SECOND: u128 = (1 << 80) - 1;

/// The vault stores balances in 96 bits.
pub(crate) const MAX_BALANCE: u128 = (1 << 96) - 1;

/// Why an operation cannot apply to a stream (the vault reverts for the same reasons).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The stream was closed.
    #[error("stream is closed")]
    Closed,
    /// Pausing a paused stream.
    #[error("stream is already paused")]
    AlreadyPaused,
    /// Resuming a running stream.
    #[error("stream is not paused")]
    NotPaused,
    /// A rate of zero (pause instead).
    #[error("rate must be positive")]
    ZeroRate,
    /// Above the payer's `maxRate`.
    #[error("rate {rate} above the stream's cap {max_rate}")]
    RateAboveCap {
        /// Asked.
        rate: u128,
        /// Cap.
        max_rate: u128,
    },
    /// More than can be withdrawn or refunded.
    #[error("amount {amount} above the {available} available")]
    AboveAvailable {
        /// Asked.
        amount: u128,
        /// Available.
        available: u128,
    },
    /// A zero amount.
    #[error("amount must be positive")]
    ZeroAmount,
    /// The token has more than 18 decimals.
    #[error("tokens with {0} decimals (above 18) are not supported")]
    DecimalsAboveEighteen(u8),
    /// The balance would overflow the 96 bits the vault stores.
    #[error("balance overflow")]
    BalanceOverflow,
    /// The rate does not fit the 80 bits the vault stores.
    #[error("rate {0} above the vault's limit")]
    RateTooHigh(u128),
}

/// One stream as `StreamVault` stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamState {
    /// Funds the stream.
    pub payer: Address,
    /// Earns from it.
    pub payee: Address,
    /// The ERC-20.
    pub token: Address,
    /// The vendor's node: pauses, resumes, lowers the rate, withdraws to the payee, closes.
    pub operator: Address,
    /// The token's decimals (≤ 18).
    pub decimals: u8,
    /// Token units per second, scaled to 18 decimals.
    pub rate_per_second: u128,
    /// The payer's cap on the rate (0: none).
    pub max_rate: u128,
    /// The payer's cap on everything streamed, in base units (0: none).
    pub max_total: u128,
    /// Second of the last snapshot.
    pub snapshot_time: u64,
    /// Accrual stopped.
    pub paused: bool,
    /// Ended.
    pub closed: bool,
    /// Base units held for the stream.
    pub balance: u128,
    /// Base units paid to the payee so far.
    pub withdrawn: u128,
    /// Debt at `snapshot_time`, 18-decimal scaled.
    pub snapshot_debt_scaled: U256,
}

impl StreamState {
    /// A stream opened at `at` (its deposit, if any, applied with [`StreamState::deposit`]).
    #[allow(clippy::too_many_arguments)]
    pub fn opened(
        payer: Address,
        payee: Address,
        token: Address,
        operator: Address,
        decimals: u8,
        rate_per_second: u128,
        max_rate: u128,
        max_total: u128,
        at: u64,
    ) -> Result<Self, StreamError> {
        if decimals > 18 {
            return Err(StreamError::DecimalsAboveEighteen(decimals));
        }
        if rate_per_second == 0 {
            return Err(StreamError::ZeroRate);
        }
        if max_rate != 0 && rate_per_second > max_rate {
            return Err(StreamError::RateAboveCap { rate: rate_per_second, max_rate });
        }
        if rate_per_second > MAX_RATE_PER_SECOND {
            return Err(StreamError::RateTooHigh(rate_per_second));
        }
        Ok(Self {
            payer,
            payee,
            token,
            operator,
            decimals,
            rate_per_second,
            max_rate,
            max_total,
            snapshot_time: at,
            paused: false,
            closed: false,
            balance: 0,
            withdrawn: 0,
            snapshot_debt_scaled: U256::ZERO,
        })
    }

    /// `active`, `paused` or `closed`.
    pub fn status(&self) -> &'static str {
        if self.closed {
            "closed"
        } else if self.paused {
            "paused"
        } else {
            "active"
        }
    }

    /// 10^(18 − decimals): scaled units per base unit.
    pub fn scale(&self) -> U256 {
        U256::from(10).pow(U256::from(18 - self.decimals.min(18)))
    }

    /// Debt at second `at` (≥ the snapshot), 18-decimal scaled, capped by `max_total`.
    pub fn total_debt_scaled(&self, at: u64) -> U256 {
        let mut debt = self.snapshot_debt_scaled;
        if !self.paused && !self.closed && at > self.snapshot_time {
            debt += U256::from(self.rate_per_second) * U256::from(at - self.snapshot_time);
        }
        if self.max_total != 0 {
            let room = U256::from(self.max_total.saturating_sub(self.withdrawn)) * self.scale();
            debt = debt.min(room);
        }
        debt
    }

    /// Debt in base units at `at`, rounded down (the payee is never paid more than accrued).
    pub fn total_debt(&self, at: u64) -> U256 {
        self.total_debt_scaled(at) / self.scale()
    }

    /// The debt the balance covers at `at`: what can be withdrawn.
    pub fn covered_debt(&self, at: u64) -> u128 {
        let debt = self.total_debt(at);
        // Bounded by the balance, so it fits.
        debt.min(U256::from(self.balance)).to::<u128>()
    }

    /// The debt beyond the balance at `at`.
    pub fn uncovered_debt(&self, at: u64) -> U256 {
        self.total_debt(at).saturating_sub(U256::from(self.balance))
    }

    /// What the payer could take back at `at`.
    pub fn refundable(&self, at: u64) -> u128 {
        self.balance - self.covered_debt(at)
    }

    /// First second the debt exceeds the balance, as seen at `at`: 0 if it already does,
    /// [`NEVER_DEPLETES`] if it never will.
    pub fn depletion_time(&self, at: u64) -> u64 {
        let scale = self.scale();
        if self.total_debt(at) > U256::from(self.balance) {
            return 0;
        }
        if self.paused || self.closed {
            return NEVER_DEPLETES;
        }
        if self.max_total != 0
            && (self.max_total <= self.withdrawn || self.max_total - self.withdrawn <= self.balance)
        {
            return NEVER_DEPLETES;
        }
        let threshold = (U256::from(self.balance) + U256::from(1)) * scale;
        let needed = threshold - self.snapshot_debt_scaled;
        let rate = U256::from(self.rate_per_second);
        let seconds = needed.div_ceil(rate);
        u64::try_from(seconds).unwrap_or(u64::MAX).saturating_add(self.snapshot_time)
    }

    fn snapshot(&mut self, at: u64) {
        self.snapshot_debt_scaled = self.total_debt_scaled(at);
        self.snapshot_time = at;
    }

    fn open(&self) -> Result<(), StreamError> {
        if self.closed { Err(StreamError::Closed) } else { Ok(()) }
    }

    /// `deposit(amount)`.
    pub fn deposit(&mut self, amount: u128) -> Result<(), StreamError> {
        self.open()?;
        if amount == 0 {
            return Err(StreamError::ZeroAmount);
        }
        self.balance = self
            .balance
            .checked_add(amount)
            .filter(|b| *b <= MAX_BALANCE)
            .ok_or(StreamError::BalanceOverflow)?;
        Ok(())
    }

    /// `withdraw(amount)` at `at` (also each stream of `withdrawBatch`).
    pub fn withdraw(&mut self, amount: u128, at: u64) -> Result<(), StreamError> {
        if amount == 0 {
            return Err(StreamError::ZeroAmount);
        }
        let available = self.covered_debt(at);
        if amount > available {
            return Err(StreamError::AboveAvailable { amount, available });
        }
        let debt = self.total_debt_scaled(at);
        self.snapshot_debt_scaled = debt - U256::from(amount) * self.scale();
        self.snapshot_time = at;
        self.balance -= amount;
        self.withdrawn += amount;
        Ok(())
    }

    /// `refund(amount)` at `at`.
    pub fn refund(&mut self, amount: u128, at: u64) -> Result<(), StreamError> {
        self.open()?;
        if amount == 0 {
            return Err(StreamError::ZeroAmount);
        }
        let available = self.refundable(at);
        if amount > available {
            return Err(StreamError::AboveAvailable { amount, available });
        }
        self.balance -= amount;
        Ok(())
    }

    /// `pause()` at `at`.
    pub fn pause(&mut self, at: u64) -> Result<(), StreamError> {
        self.open()?;
        if self.paused {
            return Err(StreamError::AlreadyPaused);
        }
        self.snapshot(at);
        self.paused = true;
        Ok(())
    }

    /// `resume()` at `at`.
    pub fn resume(&mut self, at: u64) -> Result<(), StreamError> {
        self.open()?;
        if !self.paused {
            return Err(StreamError::NotPaused);
        }
        self.paused = false;
        self.snapshot_time = at;
        Ok(())
    }

    /// `adjustRate(rate)` at `at` (roles are the contract's concern).
    pub fn adjust_rate(&mut self, rate: u128, at: u64) -> Result<(), StreamError> {
        self.open()?;
        if rate == 0 {
            return Err(StreamError::ZeroRate);
        }
        if self.max_rate != 0 && rate > self.max_rate {
            return Err(StreamError::RateAboveCap { rate, max_rate: self.max_rate });
        }
        if rate > MAX_RATE_PER_SECOND {
            return Err(StreamError::RateTooHigh(rate));
        }
        self.snapshot(at);
        self.rate_per_second = rate;
        Ok(())
    }

    /// `close()` at `at`: `(paid to the payee, refunded to the payer, forfeited debt)`.
    pub fn close(&mut self, at: u64) -> Result<(u128, u128, U256), StreamError> {
        self.open()?;
        let debt = self.total_debt(at);
        let paid = self.covered_debt(at);
        let refunded = self.balance - paid;
        self.closed = true;
        self.balance = 0;
        self.snapshot_debt_scaled = U256::ZERO;
        self.snapshot_time = at;
        self.withdrawn += paid;
        Ok((paid, refunded, debt - U256::from(paid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;
    const ONE_USDC_PER_SEC: u128 = 1_000_000_000_000_000_000;

    fn usdc_stream(rate: u128, deposit: u128) -> StreamState {
        let mut s = StreamState::opened(
            Address::repeat_byte(1),
            Address::repeat_byte(2),
            Address::repeat_byte(3),
            Address::repeat_byte(4),
            6,
            rate,
            0,
            0,
            T0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        if deposit > 0 {
            s.deposit(deposit).unwrap_or_else(|e| panic!("{e}"));
        }
        s
    }

    #[test]
    fn mirrors_the_forge_unit_cases() -> Result<(), StreamError> {
        let mut s = usdc_stream(ONE_USDC_PER_SEC, 100_000_000);
        assert_eq!(s.total_debt(T0 + 10), U256::from(10_000_000));
        assert_eq!(s.depletion_time(T0), T0 + 101);
        s.withdraw(4_000_000, T0 + 10)?;
        assert_eq!(s.total_debt(T0 + 10), U256::from(6_000_000));
        assert_eq!(s.covered_debt(T0 + 150), 96_000_000);
        assert_eq!(s.uncovered_debt(T0 + 150), U256::from(50_000_000));
        assert_eq!(s.depletion_time(T0 + 150), 0);

        let mut slow = usdc_stream(100_000_000_000, 100);
        assert_eq!(slow.total_debt(T0 + 15), U256::from(1));
        slow.withdraw(1, T0 + 15)?;
        assert_eq!(slow.total_debt(T0 + 20), U256::from(1), "the half unit was kept");

        let mut closing = usdc_stream(ONE_USDC_PER_SEC, 10_000_000);
        assert_eq!(closing.close(T0 + 60)?, (10_000_000, 0, U256::from(50_000_000)));
        assert_eq!(closing.deposit(1), Err(StreamError::Closed));
        Ok(())
    }

    #[test]
    fn bad_operations_are_refused_like_the_vault() {
        let mut s = usdc_stream(ONE_USDC_PER_SEC, 5);
        assert_eq!(s.withdraw(0, T0), Err(StreamError::ZeroAmount));
        assert_eq!(s.withdraw(1, T0), Err(StreamError::AboveAvailable { amount: 1, available: 0 }));
        assert_eq!(s.resume(T0), Err(StreamError::NotPaused));
        assert_eq!(s.adjust_rate(0, T0), Err(StreamError::ZeroRate));
        assert_eq!(s.deposit(u128::MAX), Err(StreamError::BalanceOverflow));
        assert_eq!(s.deposit(MAX_BALANCE - 4), Err(StreamError::BalanceOverflow), "96 bits");
        assert_eq!(
            s.adjust_rate(MAX_RATE_PER_SECOND + 1, T0),
            Err(StreamError::RateTooHigh(MAX_RATE_PER_SECOND + 1))
        );
        let wide = StreamState::opened(
            Address::ZERO,
            Address::ZERO,
            Address::ZERO,
            Address::ZERO,
            24,
            1,
            0,
            0,
            T0,
        );
        assert_eq!(wide, Err(StreamError::DecimalsAboveEighteen(24)));
    }

    #[test]
    fn no_dust_is_lost_over_any_withdrawal_schedule() -> Result<(), StreamError> {
        // xorshift: deterministic schedules without a dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let rate = u128::from(next() % 10_000_000_000_000) + 1;
            let mut s = usdc_stream(rate, MAX_BALANCE);
            let mut t = T0;
            let mut paid = 0u128;
            for _ in 0..20 {
                t += next() % 1_000;
                let owed = s.covered_debt(t);
                if owed > 0 && next() % 2 == 0 {
                    s.withdraw(owed, t)?;
                    paid += owed;
                }
            }
            let accrued = U256::from(rate) * U256::from(t - T0) / U256::from(1_000_000_000_000u64);
            assert_eq!(U256::from(paid) + s.total_debt(t), accrued, "rate {rate}");
        }
        Ok(())
    }
}
