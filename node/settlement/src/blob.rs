//! Carrying a batch in an EIP-4844 blob: the payload goes in with alloy's `SimpleCoder` (a
//! length word, then 31 data bytes per field element), so one blob holds 126,945 payload bytes;
//! records are split into as few batches as possible, each filling one blob. Anyone with the
//! blob can check it against the versioned hash the anchor stored, and decode the records.

use alloy::{
    eips::eip4844::{
        Blob, BlobTransactionSidecar, FIELD_ELEMENTS_PER_BLOB,
        builder::{SidecarBuilder, SidecarCoder, SimpleCoder},
        env_settings::EnvKzgSettings,
    },
    primitives::B256,
};

use super::{
    SettlementError,
    record::{BatchContext, PAYLOAD_HEADER_LEN, SettlementRecord, put_record},
};

/// Payload bytes one blob carries with `SimpleCoder` (one field element holds the length).
pub const BLOB_PAYLOAD_CAPACITY: usize = (FIELD_ELEMENTS_PER_BLOB as usize - 1) * 31;

/// Blob gas one blob costs (EIP-4844: 2^17).
pub const BLOB_GAS_PER_BLOB: u64 = 1 << 17;

/// The blob sidecar (blob, KZG commitment and proof) carrying `payload`.
pub fn sidecar(payload: &[u8]) -> Result<BlobTransactionSidecar, SettlementError> {
    if payload.len() > BLOB_PAYLOAD_CAPACITY {
        return Err(SettlementError::Malformed(format!(
            "{} payload bytes exceed one blob's {BLOB_PAYLOAD_CAPACITY}",
            payload.len()
        )));
    }
    SidecarBuilder::<SimpleCoder>::from_slice(payload)
        .build_4844()
        .map_err(|e| SettlementError::Kzg(e.to_string()))
}

/// The payload a blob carries, after checking it against `versioned_hash`: the blob's KZG
/// commitment must hash to it and `proof` must prove the blob against the commitment.
pub fn payload_of(
    blob: &Blob,
    commitment: &alloy::eips::eip4844::Bytes48,
    proof: &alloy::eips::eip4844::Bytes48,
    versioned_hash: B256,
) -> Result<Vec<u8>, SettlementError> {
    let sidecar = BlobTransactionSidecar {
        blobs: vec![*blob],
        commitments: vec![*commitment],
        proofs: vec![*proof],
    };
    sidecar
        .validate(&[versioned_hash], EnvKzgSettings::Default.get())
        .map_err(|e| SettlementError::BlobMismatch(e.to_string()))?;
    let mut chunks = SimpleCoder::default()
        .decode_all(&sidecar.blobs)
        .ok_or_else(|| SettlementError::Malformed("the blob holds no SimpleCoder data".into()))?;
    if chunks.len() != 1 {
        return Err(SettlementError::Malformed(format!("{} payloads in one blob", chunks.len())));
    }
    Ok(chunks.remove(0))
}

/// `records` (sorted by stream id) split into consecutive batches from `first` on, each as many
/// records as fit one blob. Every batch shares `first`'s chain, vault and period.
pub fn split_into_blobs(
    first: BatchContext,
    records: Vec<SettlementRecord>,
) -> Result<Vec<(BatchContext, Vec<SettlementRecord>)>, SettlementError> {
    let mut batches = Vec::new();
    let mut current: Vec<SettlementRecord> = Vec::new();
    let mut size = PAYLOAD_HEADER_LEN;
    let mut context = first;
    for record in records {
        // The record's size where it would go: its id delta depends on the previous record.
        let previous = current.last().map(|r| r.stream_id);
        let bytes = encoded_len(&record, previous)?;
        if size + bytes > BLOB_PAYLOAD_CAPACITY && !current.is_empty() {
            batches.push((context, std::mem::take(&mut current)));
            context.batch_id += 1;
            size = PAYLOAD_HEADER_LEN;
            let bytes = encoded_len(&record, None)?;
            size += bytes;
        } else {
            size += bytes;
        }
        current.push(record);
    }
    if !current.is_empty() {
        batches.push((context, current));
    }
    Ok(batches)
}

/// Bytes `record` takes in a payload after a record of stream `previous`.
fn encoded_len(record: &SettlementRecord, previous: Option<u64>) -> Result<usize, SettlementError> {
    let mut out = Vec::new();
    put_record(&mut out, record, previous)?;
    Ok(out.len())
}

#[cfg(test)]
mod tests {
    use alloy::primitives::keccak256;

    use super::*;
    use crate::record::{
        decode_payload, encode_payload,
        samples::{context, parties, record},
    };

    /// A full blob round-trips through its sidecar, and is refused against another hash.
    #[test]
    fn a_blob_carries_its_batch_and_proves_it() -> Result<(), SettlementError> {
        let records: Vec<_> = (1..=20_000).map(|id| record(id, false)).collect();
        let batches = split_into_blobs(context(), records)?;
        assert!(batches.len() >= 2, "20,000 records need more than one blob");
        assert_eq!(batches.iter().map(|(_, r)| r.len()).sum::<usize>(), 20_000);
        assert_eq!(batches[1].0.batch_id, context().batch_id + 1, "consecutive batch ids");
        let (first_context, first) = &batches[0];
        assert!(first.len() >= 3_900, "{} records in a blob", first.len());
        let payload = encode_payload(first_context, first)?;
        let sidecar = sidecar(&payload)?;
        let hash = sidecar
            .versioned_hash_for_blob(0)
            .ok_or_else(|| SettlementError::Malformed("no versioned hash".into()))?;
        let decoded =
            payload_of(&sidecar.blobs[0], &sidecar.commitments[0], &sidecar.proofs[0], hash)?;
        assert_eq!(decoded, payload);
        assert_eq!(decode_payload(&decoded, parties)?.1, *first);
        let wrong = keccak256(b"another blob");
        assert!(matches!(
            payload_of(&sidecar.blobs[0], &sidecar.commitments[0], &sidecar.proofs[0], wrong),
            Err(SettlementError::BlobMismatch(_))
        ));
        Ok(())
    }
}
