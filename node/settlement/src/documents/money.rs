//! Exact money for invoice documents: token base units to decimal text, to cents (Peppol allows
//! two decimals), tax splits and largest-remainder shares, all in integers.
//!
//! Rounding, documented in the README: the gross paid in a period is rounded half up to the
//! cent once; tax is taken out of that gross (net = gross × 100 / (100 + rate), half up; tax =
//! net × rate / 100, half up, as EN 16931 computes it) and any cent left over is the invoice's
//! rounding amount; line amounts are the net shared by largest remainder in proportion to what
//! each line paid, so they add up to the net exactly.

use alloy::primitives::U256;

/// `amount / 10^decimals` as decimal text, exact, without trailing zeros (`"7.2"`, `"0.000001"`).
pub fn units(amount: u128, decimals: u8) -> String {
    let text = amount.to_string();
    let decimals = usize::from(decimals);
    if decimals == 0 {
        return text;
    }
    let padded = format!("{text:0>width$}", width = decimals + 1);
    let (whole, fraction) = padded.split_at(padded.len() - decimals);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() { whole.to_string() } else { format!("{whole}.{fraction}") }
}

/// `cents` as a two-decimal amount (`"7.20"`, `"-0.01"`).
pub fn cents_text(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02}", cents / 100, cents % 100)
}

/// `numerator / denominator` rounded half up (`denominator` > 0).
pub fn div_half_up(numerator: U256, denominator: U256) -> U256 {
    (numerator + denominator / U256::from(2u8)) / denominator
}

fn pow10(exp: u8) -> U256 {
    U256::from(10u8).pow(U256::from(exp))
}

/// A base-unit amount of a token with `decimals` in cents, rounded half up.
pub fn to_cents(amount: u128, decimals: u8) -> u128 {
    let amount = U256::from(amount);
    let cents = if decimals >= 2 {
        div_half_up(amount, pow10(decimals - 2))
    } else {
        amount * pow10(2 - decimals)
    };
    cents.saturating_to()
}

/// Gross cents split into (net, tax, rounding) for a rate in basis points of a percent
/// (19% = 1900): net + tax + rounding = gross, tax = net × rate, each half up.
pub fn split_tax(gross: u128, rate_bp: u32) -> (u128, u128, i128) {
    let (gross_wide, rate) = (U256::from(gross), U256::from(rate_bp));
    let scale = U256::from(10_000u32);
    let net = div_half_up(gross_wide * scale, scale + rate);
    let tax = div_half_up(net * rate, scale);
    let (net, tax): (u128, u128) = (net.saturating_to(), tax.saturating_to());
    let rounding = gross as i128 - net as i128 - tax as i128;
    (net, tax, rounding)
}

/// `total` shared in proportion to `weights` by largest remainder: the shares add up to `total`
/// exactly (equal shares when every weight is zero). Ties go to the earlier weight.
pub fn shares(total: u128, weights: &[u128]) -> Vec<u128> {
    if weights.is_empty() {
        return Vec::new();
    }
    let sum: U256 = weights.iter().map(|w| U256::from(*w)).fold(U256::ZERO, |a, b| a + b);
    let (weights, sum): (Vec<U256>, U256) = if sum.is_zero() {
        (vec![U256::from(1u8); weights.len()], U256::from(weights.len()))
    } else {
        (weights.iter().map(|w| U256::from(*w)).collect(), sum)
    };
    let total = U256::from(total);
    let mut out: Vec<(U256, U256)> =
        weights.iter().map(|w| ((total * *w) / sum, (total * *w) % sum)).collect();
    let given = out.iter().fold(U256::ZERO, |a, (s, _)| a + *s);
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|a, b| out[*b].1.cmp(&out[*a].1).then(a.cmp(b)));
    let left: usize = (total - given).saturating_to();
    for index in order.into_iter().take(left) {
        out[index].0 += U256::from(1u8);
    }
    out.into_iter().map(|(share, _)| share.saturating_to()).collect()
}

/// `numerator / denominator` as decimal text rounded half up to `places`, trailing zeros trimmed
/// (a unit price or a quantity; `denominator` > 0).
pub fn ratio_text(numerator: u128, denominator: u128, places: u8) -> String {
    let scaled = div_half_up(U256::from(numerator) * pow10(places), U256::from(denominator));
    units(scaled.saturating_to(), places)
}

/// A quantity in millionths: `seconds / unit_seconds` rounded half up to 6 decimals.
pub fn quantity_micro(seconds: u64, unit_seconds: u64) -> u128 {
    let scaled = div_half_up(U256::from(seconds) * pow10(6), U256::from(unit_seconds.max(1)));
    scaled.saturating_to()
}

/// The price per unit of `amount` (with `amount_decimals`) over `quantity_micro` millionths of a
/// unit, rounded half up to 12 decimals: exact enough that quantity × price is within a
/// millionth of a cent of the amount for any quantity below 10^9 units.
pub fn unit_price(amount: u128, amount_decimals: u8, quantity_micro: u128) -> String {
    if quantity_micro == 0 {
        return "0".into();
    }
    let numerator = U256::from(amount) * pow10(6) * pow10(12);
    let denominator = U256::from(quantity_micro) * pow10(amount_decimals);
    units(div_half_up(numerator, denominator).saturating_to(), 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_units_print_exactly() {
        assert_eq!(units(7_200_000, 6), "7.2");
        assert_eq!(units(1, 6), "0.000001");
        assert_eq!(units(0, 6), "0");
        assert_eq!(units(123, 0), "123");
        assert_eq!(units(u128::MAX, 18), "340282366920938463463.374607431768211455");
        assert_eq!(cents_text(720), "7.20");
        assert_eq!(cents_text(-1), "-0.01");
        assert_eq!(cents_text(5), "0.05");
    }

    #[test]
    fn cents_round_half_up() {
        assert_eq!(to_cents(7_234_999, 6), 723);
        assert_eq!(to_cents(7_235_000, 6), 724);
        assert_eq!(to_cents(7_234_567, 6), 723);
        assert_eq!(to_cents(5, 0), 500);
        assert_eq!(to_cents(u128::MAX, 0), u128::MAX, "saturates instead of wrapping");
    }

    #[test]
    fn tax_splits_add_back_to_the_gross() {
        assert_eq!(split_tax(11_900, 1_900), (10_000, 1_900, 0));
        assert_eq!(split_tax(720, 0), (720, 0, 0));
        for gross in 0..5_000u128 {
            for rate in [0, 700, 1_900, 2_100, 2_550] {
                let (net, tax, rounding) = split_tax(gross, rate);
                assert_eq!(net as i128 + tax as i128 + rounding, gross as i128);
                assert!(rounding.abs() <= 1, "{gross} at {rate}: {rounding}");
                assert_eq!(tax, (net * rate as u128 + 5_000) / 10_000, "EN 16931's tax");
            }
        }
    }

    #[test]
    fn shares_add_up_exactly() {
        assert_eq!(shares(100, &[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(shares(10, &[0, 0]), vec![5, 5]);
        assert_eq!(shares(7, &[3, 0, 1]), vec![5, 0, 2]);
        assert_eq!(
            shares(u128::MAX, &[u128::MAX, u128::MAX])
                .iter()
                .fold(0u128, |a, b| a.wrapping_add(*b)),
            u128::MAX
        );
        assert!(shares(5, &[]).is_empty());
        assert_eq!(ratio_text(600, 600, 12), "1");
        assert_eq!(ratio_text(1, 3, 6), "0.333333");
        assert_eq!(ratio_text(2, 3, 6), "0.666667");
        assert_eq!(quantity_micro(600, 1), 600_000_000);
        assert_eq!(quantity_micro(1, 3_600), 278, "0.000278 h");
        assert_eq!(unit_price(600, 2, 600_000_000), "0.01", "6.00 over 600 s");
        assert_eq!(unit_price(720, 2, 278), "25899.280575539568");
        assert_eq!(unit_price(1, 2, 0), "0");
    }
}
