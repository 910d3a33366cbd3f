// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TestBase} from "./utils/Cheats.sol";
import {SettlementAnchor} from "../src/SettlementAnchor.sol";

contract SettlementAnchorTest is TestBase {
    event log_named_uint(string key, uint256 val);

    SettlementAnchor internal anchor;
    address internal operator = address(0x0BE7);
    bytes32 internal constant BLOB = bytes32(uint256(0x01) << 248 | 0xb10b);

    function setUp() public {
        anchor = new SettlementAnchor();
    }

    function _withBlob(bytes32 hash) internal {
        bytes32[] memory hashes = new bytes32[](1);
        hashes[0] = hash;
        vm.blobhashes(hashes);
    }

    /// Records as the node encodes them are opaque bytes here; any bytes make a leaf.
    function _record(uint256 i) internal pure returns (bytes memory) {
        return abi.encodePacked(uint8(1), uint64(i), bytes20(uint160(0xA11CE + i)), uint128(1e6 * i));
    }

    function _hashPair(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encodePacked(a, b)) : keccak256(abi.encodePacked(b, a));
    }

    /// The root and every leaf's proof of `n` records, built as the node builds them: leaves in
    /// order, pairs hashed sorted, an odd node carried up unchanged.
    function _tree(uint256 n) internal view returns (bytes32 root, bytes32[][] memory proofs) {
        bytes32[] memory level = new bytes32[](n);
        uint256[] memory position = new uint256[](n);
        proofs = new bytes32[][](n);
        uint256 depth;
        for (uint256 w = n; w > 1; w = (w + 1) / 2) ++depth;
        for (uint256 i; i < n; ++i) {
            level[i] = anchor.leafHash(_record(i));
            position[i] = i;
            proofs[i] = new bytes32[](depth);
        }
        uint256[] memory lengths = new uint256[](n);
        for (uint256 width = n; width > 1; width = (width + 1) / 2) {
            for (uint256 i; i < n; ++i) {
                uint256 p = position[i];
                uint256 sibling = p ^ 1;
                if (sibling < width) proofs[i][lengths[i]++] = level[sibling];
                position[i] = p / 2;
            }
            bytes32[] memory next = new bytes32[]((width + 1) / 2);
            for (uint256 j; j < width / 2; ++j) {
                next[j] = _hashPair(level[2 * j], level[2 * j + 1]);
            }
            if (width % 2 == 1) next[width / 2] = level[width - 1];
            level = next;
        }
        root = level[0];
        for (uint256 i; i < n; ++i) {
            bytes32[] memory proof = proofs[i];
            uint256 len = lengths[i];
            assembly {
                mstore(proof, len)
            }
        }
    }

    function test_commitStoresTheBatchAndItsBlob() public {
        (bytes32 root,) = _tree(5);
        _withBlob(BLOB);
        vm.prank(operator);
        anchor.commit(7, root, 5, 15e6, 1_700_000_000, 1_700_000_600);
        SettlementAnchor.Batch memory b = anchor.getBatch(operator, 7);
        assertTrue(b.root == root, "root");
        assertTrue(b.blobHash == BLOB, "blob versioned hash");
        assertEq(b.recordCount, 5, "count");
        assertEq(b.totalAmount, 15e6, "total");
        assertEq(b.periodStart, 1_700_000_000, "start");
        assertEq(b.periodEnd, 1_700_000_600, "end");
        assertTrue(anchor.getBatch(address(0xBAD), 7).root == bytes32(0), "per-operator namespaces");
    }

    function test_aBatchIdCommitsOnce() public {
        (bytes32 root,) = _tree(3);
        _withBlob(BLOB);
        vm.prank(operator);
        anchor.commit(1, root, 3, 6e6, 0, 600);
        // The same commit again (a retried transaction) changes nothing and does not revert.
        _withBlob(bytes32(uint256(0x01) << 248 | 0xbeef));
        vm.prank(operator);
        anchor.commit(1, root, 3, 6e6, 0, 600);
        assertTrue(anchor.getBatch(operator, 1).blobHash == BLOB, "first blob kept");
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(SettlementAnchor.AlreadyCommitted.selector, 1, root));
        anchor.commit(1, keccak256("other"), 3, 6e6, 0, 600);
        // Another operator's batch 1 is its own.
        _withBlob(BLOB);
        vm.prank(address(0xBAD));
        anchor.commit(1, keccak256("other"), 1, 1, 0, 600);
    }

    function test_badCommitsAreRefused() public {
        vm.prank(operator);
        vm.expectRevert(SettlementAnchor.NoBlob.selector);
        anchor.commit(1, keccak256("root"), 1, 1, 0, 600);
        _withBlob(BLOB);
        vm.startPrank(operator);
        vm.expectRevert(SettlementAnchor.EmptyBatch.selector);
        anchor.commit(1, bytes32(0), 1, 1, 0, 600);
        vm.expectRevert(SettlementAnchor.EmptyBatch.selector);
        anchor.commit(1, keccak256("root"), 0, 0, 0, 600);
        vm.expectRevert(SettlementAnchor.EmptyBatch.selector);
        anchor.commit(1, keccak256("root"), 1, 1, 600, 0);
        vm.stopPrank();
    }

    function test_everyRecordVerifiesAndNothingElseDoes() public {
        uint256 n = 7;
        (bytes32 root, bytes32[][] memory proofs) = _tree(n);
        _withBlob(BLOB);
        vm.prank(operator);
        anchor.commit(2, root, uint32(n), 0, 0, 600);
        for (uint256 i; i < n; ++i) {
            assertTrue(anchor.verify(operator, 2, _record(i), proofs[i]), "record verifies");
        }
        bytes memory tampered = _record(3);
        tampered[tampered.length - 1] ^= 0x01;
        assertTrue(!anchor.verify(operator, 2, tampered, proofs[3]), "tampered record");
        assertTrue(!anchor.verify(operator, 2, _record(3), proofs[4]), "another record's proof");
        assertTrue(!anchor.verify(operator, 3, _record(3), proofs[3]), "unknown batch");
        assertTrue(!anchor.verify(address(0xBAD), 2, _record(3), proofs[3]), "another operator");
        // An inner node is not a record: the double-hashed leaf keeps it out.
        bytes32 inner = _hashPair(anchor.leafHash(_record(0)), anchor.leafHash(_record(1)));
        bytes32[] memory rest = new bytes32[](proofs[0].length - 1);
        for (uint256 j = 1; j < proofs[0].length; ++j) {
            rest[j - 1] = proofs[0][j];
        }
        assertTrue(!anchor.verify(operator, 2, abi.encodePacked(inner), rest), "inner node as a record");
    }

    /// Any batch size: every record verifies against the root built the node's way.
    function testFuzz_treesOfAnySize(uint8 size) public {
        uint256 n = bound(size, 1, 40);
        (bytes32 root, bytes32[][] memory proofs) = _tree(n);
        _withBlob(BLOB);
        vm.prank(operator);
        anchor.commit(9, root, uint32(n), 0, 0, 1);
        for (uint256 i; i < n; ++i) {
            assertTrue(anchor.verify(operator, 9, _record(i), proofs[i]), "verifies");
        }
    }

    /// Execution gas of a commit (the call's own; a transaction adds 21,000 and its calldata).
    function test_gas_commit() public {
        _withBlob(BLOB);
        vm.prank(operator);
        uint256 g = gasleft();
        anchor.commit(1, keccak256("root"), 3_900, 1e12, 1_700_000_000, 1_700_000_600);
        emit log_named_uint("commit (call gas)", g - gasleft());
    }

    /// Calldata mode: the anchor keeps keccak256 of the records sent along; retries are no-ops,
    /// another root is refused, and a blob commit of the same id is the same batch.
    function test_commitCalldataKeepsTheRecordsHash() public {
        (bytes32 root,) = _tree(4);
        bytes memory records = abi.encodePacked(_record(0), _record(1), _record(2), _record(3));
        vm.prank(operator);
        anchor.commitCalldata(3, root, 4, 6e6, 0, 600, records);
        SettlementAnchor.Batch memory b = anchor.getBatch(operator, 3);
        assertTrue(b.root == root, "root");
        assertTrue(b.blobHash == keccak256(records), "the records' hash");
        assertEq(b.recordCount, 4, "count");
        vm.prank(operator);
        anchor.commitCalldata(3, root, 4, 6e6, 0, 600, hex"01");
        assertTrue(anchor.getBatch(operator, 3).blobHash == keccak256(records), "a retry changes nothing");
        vm.startPrank(operator);
        vm.expectRevert(abi.encodeWithSelector(SettlementAnchor.AlreadyCommitted.selector, 3, root));
        anchor.commitCalldata(3, keccak256("other"), 4, 6e6, 0, 600, records);
        vm.expectRevert(SettlementAnchor.EmptyBatch.selector);
        anchor.commitCalldata(4, root, 4, 6e6, 0, 600, "");
        vm.stopPrank();
    }

    /// Whatever the records, the stored hash is theirs.
    function testFuzz_commitCalldataHashesWhatItIsSent(bytes calldata records, uint32 count) public {
        vm.assume(records.length > 0 && count > 0);
        vm.prank(operator);
        anchor.commitCalldata(9, keccak256(records), count, 1, 0, 1, records);
        assertTrue(anchor.getBatch(operator, 9).blobHash == keccak256(records), "hash");
    }

    /// Execution gas of a calldata commit of 100 records of 109 bytes (the call's own).
    function test_gas_commitCalldata() public {
        bytes memory records = new bytes(100 * 109);
        for (uint256 i; i < records.length; ++i) records[i] = bytes1(uint8(i * 7 + 1));
        vm.prank(operator);
        uint256 g = gasleft();
        anchor.commitCalldata(1, keccak256("root"), 100, 1e12, 1_700_000_000, 1_700_000_600, records);
        emit log_named_uint("commitCalldata, 100 records (call gas)", g - gasleft());
    }
}
