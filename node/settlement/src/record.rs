//! Settlement records: one per stream per settled period, in two encodings.
//!
//! **Leaf encoding** (fixed, 193 bytes, big-endian integers): what a Merkle leaf commits to and
//! what a receipt carries. It binds the chain, the vault and the batch, so a record cannot be
//! replayed against another.
//!
//! | bytes | field |
//! | --- | --- |
//! | 0 | version, `0x01` |
//! | 1..9 | chain id (u64) |
//! | 9..29 | `StreamVault` address |
//! | 29..37 | batch id (u64) |
//! | 37..45 | stream id (u64) |
//! | 45..65, 65..85, 85..105 | payer, payee, token |
//! | 105..113, 113..121 | period start, period end (unix seconds, u64) |
//! | 121..129 | seconds billed in the period (u64) |
//! | 129..145 | amount paid to the payee in the period (base units, u128) |
//! | 145..161 | cumulative amount paid to the payee up to the period's end (u128) |
//! | 161..193 | usage digest (the billing backend's, or zero) |
//!
//! The leaf is `keccak256(keccak256(encoding))` — what `SettlementAnchor.leafHash` computes.
//!
//! **Blob payload** (compact): what the blob carries, so that the blob plus the chain rebuild
//! every leaf. A 60-byte header — magic `STL1`, chain id (8), vault (20), batch id (8), period
//! start (8), period end (8), record count (4) — then per record, in stream-id order, LEB128
//! varints: the stream id's increase over the previous record's (the first: over 0),
//! `seconds billed × 2 + (1 if a usage digest follows)`, the amount, the cumulative amount
//! before the period (cumulative − amount), then the 32-byte digest if flagged. Payer, payee and
//! token are not repeated: each is fixed by the stream's `StreamOpened` event on chain.

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

use super::SettlementError;

/// The leaf encoding's length.
pub const RECORD_LEN: usize = 193;
const VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"STL1";
/// The blob payload header's length.
pub const PAYLOAD_HEADER_LEN: usize = 60;

/// What one stream paid in one settled period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementRecord {
    /// The stream.
    pub stream_id: u64,
    /// Who funds it.
    pub payer: Address,
    /// Who was paid.
    pub payee: Address,
    /// In what.
    pub token: Address,
    /// Seconds it accrued in the period (running: opened, not paused, not closed).
    pub seconds_billed: u64,
    /// Base units paid to the payee in the period.
    #[serde(with = "decimal_amount")]
    pub amount: u128,
    /// Base units paid to the payee over the stream's life, up to the period's end.
    #[serde(with = "decimal_amount")]
    pub cumulative_amount: u128,
    /// The billing backend's digest of the usage behind the period (zero: none reported).
    pub usage_digest: B256,
}

/// Token amounts in JSON: decimal strings, as every namespace of the node answers them (a JSON
/// number above 2^53 is rounded by JavaScript's `JSON.parse` and by `jq`). Reading also takes a
/// JSON integer, as batches stored before this convention hold them.
pub(crate) mod decimal_amount {
    use serde::{Deserializer, Serializer, de};

    /// `value` as a decimal string.
    pub(crate) fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    /// A decimal string or a JSON integer.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<u128, D::Error> {
        struct Amount;
        impl de::Visitor<'_> for Amount {
            type Value = u128;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a token amount: a decimal string of base units")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<u128, E> {
                let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
                digits.then(|| text.parse().ok()).flatten().ok_or_else(|| {
                    E::custom(format!("{text:?} is not a decimal amount of base units"))
                })
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<u128, E> {
                Ok(u128::from(value))
            }
            fn visit_u128<E: de::Error>(self, value: u128) -> Result<u128, E> {
                Ok(value)
            }
        }
        deserializer.deserialize_any(Amount)
    }
}

/// What every record of a batch shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchContext {
    /// The chain.
    pub chain_id: u64,
    /// The `StreamVault` the streams live in.
    pub vault: Address,
    /// The operator's batch id.
    pub batch_id: u64,
    /// First second of the period.
    pub period_start: u64,
    /// Last second of the period.
    pub period_end: u64,
}

impl SettlementRecord {
    /// The fixed leaf encoding (see the module's table).
    pub fn encode(&self, context: &BatchContext) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0] = VERSION;
        out[1..9].copy_from_slice(&context.chain_id.to_be_bytes());
        out[9..29].copy_from_slice(context.vault.as_slice());
        out[29..37].copy_from_slice(&context.batch_id.to_be_bytes());
        out[37..45].copy_from_slice(&self.stream_id.to_be_bytes());
        out[45..65].copy_from_slice(self.payer.as_slice());
        out[65..85].copy_from_slice(self.payee.as_slice());
        out[85..105].copy_from_slice(self.token.as_slice());
        out[105..113].copy_from_slice(&context.period_start.to_be_bytes());
        out[113..121].copy_from_slice(&context.period_end.to_be_bytes());
        out[121..129].copy_from_slice(&self.seconds_billed.to_be_bytes());
        out[129..145].copy_from_slice(&self.amount.to_be_bytes());
        out[145..161].copy_from_slice(&self.cumulative_amount.to_be_bytes());
        out[161..193].copy_from_slice(self.usage_digest.as_slice());
        out
    }

    /// The record and its batch's context from a leaf encoding.
    pub fn decode(bytes: &[u8]) -> Result<(Self, BatchContext), SettlementError> {
        if bytes.len() != RECORD_LEN || bytes[0] != VERSION {
            return Err(SettlementError::Malformed(format!(
                "a record is {RECORD_LEN} bytes starting with version {VERSION}"
            )));
        }
        let u64_at = |at: usize| u64_be(bytes, at);
        let u128_at = |at: usize| u128::from_be_bytes(array(&bytes[at..at + 16]));
        let context = BatchContext {
            chain_id: u64_at(1),
            vault: Address::from_slice(&bytes[9..29]),
            batch_id: u64_at(29),
            period_start: u64_at(105),
            period_end: u64_at(113),
        };
        let record = Self {
            stream_id: u64_at(37),
            payer: Address::from_slice(&bytes[45..65]),
            payee: Address::from_slice(&bytes[65..85]),
            token: Address::from_slice(&bytes[85..105]),
            seconds_billed: u64_at(121),
            amount: u128_at(129),
            cumulative_amount: u128_at(145),
            usage_digest: B256::from_slice(&bytes[161..193]),
        };
        Ok((record, context))
    }

    /// The Merkle leaf: `keccak256(keccak256(encoding))`.
    pub fn leaf(&self, context: &BatchContext) -> B256 {
        leaf_of(&self.encode(context))
    }
}

/// The leaf of an encoded record.
pub fn leaf_of(encoded: &[u8]) -> B256 {
    keccak256(keccak256(encoded))
}

/// The big-endian u64 at `at` (the caller checked the length).
fn u64_be(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(array(&bytes[at..at + 8]))
}

fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u128) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn take_varint(bytes: &[u8], at: &mut usize) -> Result<u128, SettlementError> {
    let mut value = 0u128;
    for shift in (0..128).step_by(7) {
        let byte = *bytes
            .get(*at)
            .ok_or_else(|| SettlementError::Malformed("payload ends inside a number".into()))?;
        *at += 1;
        value |= u128::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(SettlementError::Malformed("a number longer than 128 bits".into()))
}

/// Appends `record`'s compact encoding after a record of stream `previous` (none: the first).
pub(crate) fn put_record(
    out: &mut Vec<u8>,
    record: &SettlementRecord,
    previous: Option<u64>,
) -> Result<(), SettlementError> {
    let delta = match previous {
        Some(previous) if record.stream_id <= previous => {
            return Err(SettlementError::Malformed(
                "records must be in increasing stream id".into(),
            ));
        }
        Some(previous) => record.stream_id - previous,
        None => record.stream_id,
    };
    let cumulative_before =
        record.cumulative_amount.checked_sub(record.amount).ok_or_else(|| {
            SettlementError::Malformed(format!("stream {}: cumulative < amount", record.stream_id))
        })?;
    put_varint(out, u128::from(delta));
    let has_digest = record.usage_digest != B256::ZERO;
    put_varint(out, u128::from(record.seconds_billed) << 1 | u128::from(has_digest));
    put_varint(out, record.amount);
    put_varint(out, cumulative_before);
    if has_digest {
        out.extend_from_slice(record.usage_digest.as_slice());
    }
    Ok(())
}

/// The compact payload of `records` (sorted by stream id, ids distinct) for a blob.
pub fn encode_payload(
    context: &BatchContext,
    records: &[SettlementRecord],
) -> Result<Vec<u8>, SettlementError> {
    let count = u32::try_from(records.len())
        .map_err(|_| SettlementError::Malformed("more than 2^32 records".into()))?;
    let mut out = Vec::with_capacity(PAYLOAD_HEADER_LEN + records.len() * 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&context.chain_id.to_be_bytes());
    out.extend_from_slice(context.vault.as_slice());
    out.extend_from_slice(&context.batch_id.to_be_bytes());
    out.extend_from_slice(&context.period_start.to_be_bytes());
    out.extend_from_slice(&context.period_end.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    let mut previous = None;
    for record in records {
        put_record(&mut out, record, previous)?;
        previous = Some(record.stream_id);
    }
    Ok(out)
}

/// The records of a payload, with payer, payee and token from `parties(stream id)` (the chain's
/// `StreamOpened`), and the batch's context.
pub fn decode_payload(
    payload: &[u8],
    mut parties: impl FnMut(u64) -> Result<(Address, Address, Address), SettlementError>,
) -> Result<(BatchContext, Vec<SettlementRecord>), SettlementError> {
    if payload.len() < PAYLOAD_HEADER_LEN || &payload[..4] != MAGIC {
        return Err(SettlementError::Malformed("not a settlement payload (STL1)".into()));
    }
    let u64_at = |at: usize| u64_be(payload, at);
    let context = BatchContext {
        chain_id: u64_at(4),
        vault: Address::from_slice(&payload[12..32]),
        batch_id: u64_at(32),
        period_start: u64_at(40),
        period_end: u64_at(48),
    };
    let count = u32::from_be_bytes(array(&payload[56..60]));
    let mut at = PAYLOAD_HEADER_LEN;
    let mut previous = 0u64;
    let mut records = Vec::with_capacity(count as usize);
    let narrow = |v: u128, what: &str| {
        u64::try_from(v).map_err(|_| SettlementError::Malformed(format!("{what} beyond 64 bits")))
    };
    for _ in 0..count {
        let stream_id = previous
            .checked_add(narrow(take_varint(payload, &mut at)?, "stream id")?)
            .ok_or_else(|| SettlementError::Malformed("stream id beyond 64 bits".into()))?;
        let flagged = take_varint(payload, &mut at)?;
        let amount = take_varint(payload, &mut at)?;
        let before = take_varint(payload, &mut at)?;
        let usage_digest = if flagged & 1 == 1 {
            let digest = payload
                .get(at..at + 32)
                .ok_or_else(|| SettlementError::Malformed("payload ends inside a digest".into()))?;
            at += 32;
            B256::from_slice(digest)
        } else {
            B256::ZERO
        };
        let (payer, payee, token) = parties(stream_id)?;
        records.push(SettlementRecord {
            stream_id,
            payer,
            payee,
            token,
            seconds_billed: narrow(flagged >> 1, "seconds")?,
            amount,
            cumulative_amount: before
                .checked_add(amount)
                .ok_or_else(|| SettlementError::Malformed("cumulative beyond 128 bits".into()))?,
            usage_digest,
        });
        previous = stream_id;
    }
    if at != payload.len() {
        return Err(SettlementError::Malformed("bytes after the last record".into()));
    }
    Ok((context, records))
}

/// Sample records and contexts for the settlement module's tests.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;

    pub(crate) fn context() -> BatchContext {
        BatchContext {
            chain_id: 31_337,
            vault: Address::repeat_byte(0x5a),
            batch_id: 3,
            period_start: 1_700_000_000,
            period_end: 1_700_000_600,
        }
    }

    /// A 10-minute USDC record of `stream_id`, with a usage digest or not.
    pub(crate) fn record(stream_id: u64, digest: bool) -> SettlementRecord {
        SettlementRecord {
            stream_id,
            payer: Address::repeat_byte(1),
            payee: Address::repeat_byte(2),
            token: Address::repeat_byte(3),
            seconds_billed: 600,
            amount: 600_000_000 + u128::from(stream_id),
            cumulative_amount: 6_000_000_000 + u128::from(stream_id),
            usage_digest: if digest { keccak256(stream_id.to_be_bytes()) } else { B256::ZERO },
        }
    }

    /// Every record's parties, as the chain would give them.
    pub(crate) fn parties(_: u64) -> Result<(Address, Address, Address), SettlementError> {
        Ok((Address::repeat_byte(1), Address::repeat_byte(2), Address::repeat_byte(3)))
    }
}

#[cfg(test)]
mod tests {
    use super::{samples::*, *};

    /// Amounts above 2^53 travel as decimal strings (exact through `JSON.parse` and `jq`); a
    /// stored batch's JSON integers still read.
    #[test]
    fn amounts_are_decimal_strings_in_json() -> Result<(), Box<dyn std::error::Error>> {
        let mut r = record(7, false);
        r.amount = 9_061_027_183_009_061; // above 2^53
        r.cumulative_amount = u128::MAX;
        let json = serde_json::to_value(&r)?;
        assert_eq!(json["amount"], serde_json::json!("9061027183009061"));
        assert_eq!(json["cumulativeAmount"], serde_json::json!(u128::MAX.to_string()));
        assert_eq!(serde_json::from_value::<SettlementRecord>(json.clone())?, r);
        let mut legacy = json;
        legacy["amount"] = serde_json::json!(600_000_007u64);
        assert_eq!(serde_json::from_value::<SettlementRecord>(legacy.clone())?.amount, 600_000_007);
        for bad in ["", "-1", "1.5", "0x10", "1e3"] {
            legacy["amount"] = serde_json::json!(bad);
            assert!(serde_json::from_value::<SettlementRecord>(legacy.clone()).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn leaf_encoding_round_trips() -> Result<(), SettlementError> {
        let r = record(42, true);
        let encoded = r.encode(&context());
        assert_eq!(SettlementRecord::decode(&encoded)?, (r.clone(), context()));
        assert_eq!(r.leaf(&context()), keccak256(keccak256(encoded)));
        assert!(SettlementRecord::decode(&encoded[1..]).is_err(), "wrong length");
        Ok(())
    }

    #[test]
    fn payload_round_trips_with_parties_from_the_chain() -> Result<(), SettlementError> {
        let records = vec![record(1, false), record(2, true), record(900, false)];
        let payload = encode_payload(&context(), &records)?;
        let parties =
            |_| Ok((Address::repeat_byte(1), Address::repeat_byte(2), Address::repeat_byte(3)));
        assert_eq!(decode_payload(&payload, parties)?, (context(), records.clone()));
        // Truncated or padded payloads are refused, never half-read.
        assert!(decode_payload(&payload[..payload.len() - 1], parties).is_err());
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode_payload(&longer, parties).is_err());
        let unsorted = vec![record(2, false), record(1, false)];
        assert!(encode_payload(&context(), &unsorted).is_err());
        Ok(())
    }

    /// A typical record (10-minute period, USDC amounts, no digest) takes about 15 bytes: well
    /// over 3,900 fit in a blob's 126,945 usable bytes.
    #[test]
    fn typical_records_are_compact() -> Result<(), SettlementError> {
        let records: Vec<_> = (1..=1_000).map(|id| record(id, false)).collect();
        let payload = encode_payload(&context(), &records)?;
        let per_record = (payload.len() - PAYLOAD_HEADER_LEN) as f64 / 1_000.0;
        assert!(per_record < 20.0, "{per_record} bytes per record");
        Ok(())
    }
}
