// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title SettlementAnchor
/// @notice Anchors settlement batches on chain: per (operator, batch id) the Merkle root of the
///         batch's settlement records, the hash of the data that carries the records — the
///         versioned hash of the EIP-4844 blob (`commit`), or on a chain without blobs the
///         keccak256 of the records sent in calldata (`commitCalldata`) — the record count, the
///         total amount and the period. Anyone can then check a record against a committed
///         batch with `verify`, and the carried data against `blobHash`.
///
/// @dev Permissionless by namespace: each operator commits under its own address, so one
///      deployment serves every vendor and needs no roles. A batch id commits once; committing
///      the same root again is a no-op (a retried transaction does no harm), another root is
///      refused. `commit` must be sent in a type-3 transaction: it records `blobhash(0)`.
///
///      Leaves are `keccak256(keccak256(record))` over the record's fixed binary encoding (the
///      double hash keeps a 64-byte inner node from passing as a leaf); inner nodes hash their
///      two children in sorted order (OpenZeppelin's `MerkleProof`), so a proof is the list of
///      siblings from the leaf up.
contract SettlementAnchor {
    /// @dev Three slots per batch.
    struct Batch {
        bytes32 root;
        bytes32 blobHash;
        uint32 recordCount;
        uint128 totalAmount;
        uint48 periodStart;
        uint48 periodEnd;
    }

    mapping(address operator => mapping(uint256 batchId => Batch)) internal _batches;

    event BatchCommitted(
        address indexed operator,
        uint256 indexed batchId,
        bytes32 root,
        bytes32 blobHash,
        uint32 recordCount,
        uint128 totalAmount,
        uint48 periodStart,
        uint48 periodEnd
    );

    /// The batch id was committed with another root.
    error AlreadyCommitted(uint256 batchId, bytes32 root);
    /// `commit` came in a transaction without a blob.
    error NoBlob();
    /// A root of zero, no records, or a period that ends before it starts.
    error EmptyBatch();

    /// @notice Commits batch `batchId` of the caller: its records' Merkle `root`, how many there
    ///         are, their total amount, and the period `[periodStart, periodEnd]` they settle.
    ///         The records travel in the transaction's first blob.
    function commit(
        uint256 batchId,
        bytes32 root,
        uint32 recordCount,
        uint128 totalAmount,
        uint48 periodStart,
        uint48 periodEnd
    ) external {
        if (!_open(batchId, root, recordCount, periodStart, periodEnd)) return;
        bytes32 blobHash = blobhash(0);
        if (blobHash == bytes32(0)) revert NoBlob();
        _store(batchId, root, blobHash, recordCount, totalAmount, periodStart, periodEnd);
    }

    /// @notice `commit` for a chain without blobs: the records travel in `records` (the same
    ///         payload a blob would carry) and the anchor keeps `keccak256(records)`.
    function commitCalldata(
        uint256 batchId,
        bytes32 root,
        uint32 recordCount,
        uint128 totalAmount,
        uint48 periodStart,
        uint48 periodEnd,
        bytes calldata records
    ) external {
        if (!_open(batchId, root, recordCount, periodStart, periodEnd)) return;
        if (records.length == 0) revert EmptyBatch();
        _store(batchId, root, keccak256(records), recordCount, totalAmount, periodStart, periodEnd);
    }

    /// @dev Whether the batch is still to be stored: false when already committed with `root`
    ///      (a retry), a revert when committed with another root or the batch is empty.
    function _open(uint256 batchId, bytes32 root, uint32 recordCount, uint48 periodStart, uint48 periodEnd)
        internal
        view
        returns (bool)
    {
        if (root == bytes32(0) || recordCount == 0 || periodEnd < periodStart) revert EmptyBatch();
        bytes32 committed = _batches[msg.sender][batchId].root;
        if (committed == bytes32(0)) return true;
        if (committed == root) return false;
        revert AlreadyCommitted(batchId, committed);
    }

    function _store(
        uint256 batchId,
        bytes32 root,
        bytes32 blobHash,
        uint32 recordCount,
        uint128 totalAmount,
        uint48 periodStart,
        uint48 periodEnd
    ) internal {
        Batch storage b = _batches[msg.sender][batchId];
        b.root = root;
        b.blobHash = blobHash;
        b.recordCount = recordCount;
        b.totalAmount = totalAmount;
        b.periodStart = periodStart;
        b.periodEnd = periodEnd;
        emit BatchCommitted(msg.sender, batchId, root, blobHash, recordCount, totalAmount, periodStart, periodEnd);
    }

    /// @notice The committed batch (all zero if none).
    function getBatch(address operator, uint256 batchId) external view returns (Batch memory) {
        return _batches[operator][batchId];
    }

    /// @notice Whether `record` (its binary encoding) is in the committed batch, by `proof`.
    function verify(address operator, uint256 batchId, bytes calldata record, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        bytes32 root = _batches[operator][batchId].root;
        return root != bytes32(0) && MerkleProof.verifyCalldata(proof, root, leafHash(record));
    }

    /// @notice The leaf of a record's binary encoding.
    function leafHash(bytes calldata record) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(record)));
    }
}
