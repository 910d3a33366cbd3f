// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TestBase} from "./utils/Cheats.sol";
import {CountingAccount} from "./SponsorPaymaster.t.sol";
import {SponsorPaymaster} from "../src/SponsorPaymaster.sol";
import {IEntryPoint} from "account-abstraction-v07/interfaces/IEntryPoint.sol";
import {PackedUserOperation} from "account-abstraction-v07/interfaces/PackedUserOperation.sol";

/// Drives random sponsored ops — validly signed, signed by another key, tampered after signing —
/// and owner withdrawals against the real EntryPoint v0.7.
contract SponsorPaymasterHandler is TestBase {
    uint256 internal constant SIGNER_KEY = 0x5167E5;
    IEntryPoint public immutable entryPoint;
    SponsorPaymaster public immutable paymaster;
    CountingAccount public immutable account;
    address payable public constant BENEFICIARY = payable(address(0xBE1));
    address payable public constant TREASURY = payable(address(0x7EA));

    uint256 public validHandled;
    uint256 public withdrawn;
    uint192 internal nextKey;

    constructor(IEntryPoint entryPoint_, SponsorPaymaster paymaster_, CountingAccount account_) {
        entryPoint = entryPoint_;
        paymaster = paymaster_;
        account = account_;
    }

    function _op(uint256 callGas) internal returns (PackedUserOperation memory op) {
        nextKey += 1;
        op.sender = address(account);
        op.nonce = uint256(nextKey) << 64;
        op.callData = abi.encodeCall(CountingAccount.bump, ());
        op.accountGasLimits = bytes32((uint256(200_000) << 128) | callGas);
        op.preVerificationGas = 50_000;
        op.gasFees = bytes32((uint256(1 gwei) << 128) | 2 gwei);
        op.paymasterAndData = abi.encodePacked(address(paymaster), uint128(100_000), uint128(50_000));
    }

    function _sign(PackedUserOperation memory op, uint256 key) internal view {
        uint48 validUntil = uint48(block.timestamp + 300);
        bytes32 digest = paymaster.sponsorshipHash(op, validUntil, 0, 7);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        op.paymasterAndData = abi.encodePacked(op.paymasterAndData, validUntil, uint48(0), uint64(7), r, s, v);
    }

    function _handle(PackedUserOperation memory op) internal returns (bool) {
        PackedUserOperation[] memory ops = new PackedUserOperation[](1);
        ops[0] = op;
        try entryPoint.handleOps(ops, BENEFICIARY) {
            return true;
        } catch {
            return false;
        }
    }

    function sponsorValid(uint256 callGas) external {
        PackedUserOperation memory op = _op(bound(callGas, 30_000, 200_000));
        _sign(op, SIGNER_KEY);
        require(_handle(op), "a valid sponsorship was refused");
        validHandled += 1;
    }

    function sponsorForged(uint256 key, uint256 callGas) external {
        key = bound(key, 1, 1e30);
        vm.assume(key != SIGNER_KEY);
        PackedUserOperation memory op = _op(bound(callGas, 30_000, 200_000));
        _sign(op, key);
        require(!_handle(op), "a forged sponsorship was paid");
    }

    function sponsorTampered(uint256 callGas, uint256 newCallGas) external {
        callGas = bound(callGas, 30_000, 200_000);
        newCallGas = bound(newCallGas, 30_000, 200_000);
        vm.assume(callGas != newCallGas);
        PackedUserOperation memory op = _op(callGas);
        _sign(op, SIGNER_KEY);
        op.accountGasLimits = bytes32((uint256(200_000) << 128) | newCallGas);
        require(!_handle(op), "a tampered sponsorship was paid");
    }

    function withdraw(uint256 amount) external {
        // Keep 1 ether so valid ops stay payable (a refused valid op fails the run).
        uint256 deposit = paymaster.getDeposit();
        if (deposit <= 1 ether) return;
        amount = bound(amount, 0, (deposit - 1 ether) / 10);
        paymaster.withdrawTo(TREASURY, amount);
        withdrawn += amount;
    }
}

/// Invariants: only validly signed ops run, and every wei of the deposit is accounted for — it
/// is still deposited, was withdrawn by the owner, or paid a bundler for a sponsored op.
contract SponsorPaymasterInvariantTest is TestBase {
    uint256 internal constant INITIAL_DEPOSIT = 10 ether;
    SponsorPaymasterHandler internal handler;
    SponsorPaymaster internal paymaster;
    CountingAccount internal account;

    function setUp() public {
        vm.warp(1_700_000_000);
        bytes memory code = vm.parseJsonBytes(vm.readFile("artifacts/v07/EntryPoint.json"), ".bytecode");
        address deployed;
        assembly {
            deployed := create(0, add(code, 0x20), mload(code))
        }
        require(deployed != address(0), "EntryPoint deployment failed");
        IEntryPoint entryPoint = IEntryPoint(deployed);
        account = new CountingAccount();
        paymaster = new SponsorPaymaster(entryPoint, address(this));
        handler = new SponsorPaymasterHandler(entryPoint, paymaster, account);
        paymaster.setSigner(vm.addr(0x5167E5));
        vm.deal(address(this), INITIAL_DEPOSIT);
        paymaster.deposit{value: INITIAL_DEPOSIT}();
        paymaster.transferOwnership(address(handler));
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_onlyValidSponsorshipsRun() public view {
        assertEq(account.count(), handler.validHandled(), "executed ops equal validly signed ops");
    }

    function invariant_depositIsConserved() public view {
        uint256 paidToBundlers = handler.BENEFICIARY().balance;
        assertEq(
            paymaster.getDeposit() + handler.withdrawn() + paidToBundlers,
            INITIAL_DEPOSIT,
            "deposit + withdrawn + paid to bundlers"
        );
        assertEq(handler.TREASURY().balance, handler.withdrawn(), "withdrawals reached the owner's address");
    }
}
