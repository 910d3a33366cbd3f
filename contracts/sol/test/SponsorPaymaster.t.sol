// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TestBase} from "./utils/Cheats.sol";
import {SponsorPaymaster} from "../src/SponsorPaymaster.sol";
import {IEntryPoint} from "account-abstraction-v07/interfaces/IEntryPoint.sol";
import {PackedUserOperation} from "account-abstraction-v07/interfaces/PackedUserOperation.sol";

/// @notice An account that accepts every op (its own signature is not what these tests are
///         about) and counts executions, so a test sees whether the sponsored call ran.
contract CountingAccount {
    uint256 public count;

    function validateUserOp(PackedUserOperation calldata, bytes32, uint256) external pure returns (uint256) {
        return 0;
    }

    function bump() external {
        count += 1;
    }
}

/// @notice The paymaster against the real EntryPoint (deployed from the pinned npm artifact):
///         the EntryPoint enforces the window and the signature verdict the paymaster reports.
abstract contract SponsorPaymasterTest is TestBase {
    uint256 internal constant SIGNER_KEY = 0x5167E5;
    uint256 internal constant OTHER_KEY = 0xBAD;
    uint256 internal constant NOW = 1_700_000_000;

    IEntryPoint internal entryPoint;
    SponsorPaymaster internal paymaster;
    CountingAccount internal account;
    address payable internal beneficiary = payable(address(0xBE1));

    function artifact() internal pure virtual returns (string memory);

    function setUp() public {
        vm.warp(NOW);
        bytes memory code = vm.parseJsonBytes(vm.readFile(artifact()), ".bytecode");
        address deployed;
        assembly {
            deployed := create(0, add(code, 0x20), mload(code))
        }
        require(deployed != address(0), "EntryPoint deployment failed");
        entryPoint = IEntryPoint(deployed);
        paymaster = new SponsorPaymaster(entryPoint, address(this));
        paymaster.setSigner(vm.addr(SIGNER_KEY));
        vm.deal(address(this), 100 ether);
        paymaster.deposit{value: 10 ether}();
        account = new CountingAccount();
    }

    function unsignedOp() internal view returns (PackedUserOperation memory op) {
        op.sender = address(account);
        op.nonce = 0;
        op.callData = abi.encodeCall(CountingAccount.bump, ());
        op.accountGasLimits = bytes32((uint256(200_000) << 128) | 100_000);
        op.preVerificationGas = 50_000;
        op.gasFees = bytes32((uint256(1 gwei) << 128) | 2 gwei);
        op.paymasterAndData = abi.encodePacked(address(paymaster), uint128(100_000), uint128(50_000));
    }

    /// Appends window, id and a signature by `key` over the op as it stands.
    function sponsor(PackedUserOperation memory op, uint256 key, uint48 validUntil, uint48 validAfter)
        internal
        view
        returns (PackedUserOperation memory)
    {
        uint64 id = 42;
        bytes32 digest = paymaster.sponsorshipHash(op, validUntil, validAfter, id);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        op.paymasterAndData = abi.encodePacked(op.paymasterAndData, validUntil, validAfter, id, r, s, v);
        return op;
    }

    function handle(PackedUserOperation memory op) internal {
        PackedUserOperation[] memory ops = new PackedUserOperation[](1);
        ops[0] = op;
        entryPoint.handleOps(ops, beneficiary);
    }

    function expectFailedOp(string memory reason) internal {
        vm.expectRevert(abi.encodeWithSelector(IEntryPoint.FailedOp.selector, 0, reason));
    }

    function test_validSponsorshipPaysAndRuns() public {
        uint256 before = paymaster.getDeposit();
        handle(sponsor(unsignedOp(), SIGNER_KEY, uint48(NOW + 300), uint48(NOW - 1)));
        assertEq(account.count(), 1, "sponsored call ran");
        assertTrue(paymaster.getDeposit() < before, "deposit paid for the op");
        assertTrue(beneficiary.balance > 0, "bundler was paid");
    }

    function test_expiredSignatureRejected() public {
        PackedUserOperation memory op = sponsor(unsignedOp(), SIGNER_KEY, uint48(NOW - 1), 0);
        expectFailedOp("AA32 paymaster expired or not due");
        handle(op);
    }

    function test_notYetValidRejected() public {
        PackedUserOperation memory op = sponsor(unsignedOp(), SIGNER_KEY, uint48(NOW + 600), uint48(NOW + 60));
        expectFailedOp("AA32 paymaster expired or not due");
        handle(op);
    }

    function test_wrongSignerRejected() public {
        PackedUserOperation memory op = sponsor(unsignedOp(), OTHER_KEY, uint48(NOW + 300), 0);
        expectFailedOp("AA34 signature error");
        handle(op);
    }

    function test_signatureFromOtherChainRejected() public {
        uint256 here = block.chainid;
        vm.chainId(1);
        PackedUserOperation memory op = sponsor(unsignedOp(), SIGNER_KEY, uint48(NOW + 300), 0);
        vm.chainId(here);
        expectFailedOp("AA34 signature error");
        handle(op);
    }

    function test_tamperedGasLimitRejected() public {
        PackedUserOperation memory op = sponsor(unsignedOp(), SIGNER_KEY, uint48(NOW + 300), 0);
        op.accountGasLimits = bytes32((uint256(200_000) << 128) | 100_001);
        expectFailedOp("AA34 signature error");
        handle(op);
    }

    function test_tamperedWindowRejected() public {
        PackedUserOperation memory op = sponsor(unsignedOp(), SIGNER_KEY, uint48(NOW + 300), 0);
        op.paymasterAndData[57] = bytes1(uint8(op.paymasterAndData[57]) ^ 1); // validUntil's last byte
        expectFailedOp("AA34 signature error");
        handle(op);
    }

    function test_wrongLengthReverts() public {
        PackedUserOperation memory op = unsignedOp();
        op.paymasterAndData = abi.encodePacked(op.paymasterAndData, uint48(0));
        vm.prank(address(entryPoint));
        vm.expectRevert(abi.encodeWithSelector(SponsorPaymaster.InvalidPaymasterDataLength.selector, 58));
        paymaster.validatePaymasterUserOp(op, bytes32(0), 0);
    }

    function test_onlyEntryPointValidates() public {
        PackedUserOperation memory op = sponsor(unsignedOp(), SIGNER_KEY, uint48(NOW + 300), 0);
        vm.expectRevert(abi.encodeWithSelector(SponsorPaymaster.NotEntryPoint.selector, address(this)));
        paymaster.validatePaymasterUserOp(op, bytes32(0), 0);
    }

    function test_onlyOwnerWithdraws() public {
        vm.prank(address(0xE11));
        vm.expectRevert();
        paymaster.withdrawTo(payable(address(0xE11)), 1 ether);
        paymaster.withdrawTo(beneficiary, 1 ether);
        assertEq(beneficiary.balance, 1 ether, "owner withdrew");
    }

    /// Any change to the signed call data voids the signature.
    function testFuzz_tamperedCallDataFailsSignature(bytes calldata callData) public {
        PackedUserOperation memory op = sponsor(unsignedOp(), SIGNER_KEY, uint48(NOW + 300), 0);
        vm.assume(keccak256(callData) != keccak256(op.callData));
        op.callData = callData;
        vm.prank(address(entryPoint));
        (, uint256 validationData) = paymaster.validatePaymasterUserOp(op, bytes32(0), 0);
        assertEq(validationData & 1, 1, "signature failure reported");
        assertEq(validationData >> 208, 0, "validAfter kept");
    }

    /// The window the EntryPoint enforces is exactly the one signed.
    function testFuzz_windowIsPackedAsSigned(uint48 validUntil, uint48 validAfter) public {
        PackedUserOperation memory op = sponsor(unsignedOp(), SIGNER_KEY, validUntil, validAfter);
        vm.prank(address(entryPoint));
        (bytes memory context, uint256 validationData) = paymaster.validatePaymasterUserOp(op, bytes32(uint256(7)), 0);
        assertEq(validationData & 1, 0, "valid signature");
        assertEq(uint48(validationData >> 160), validUntil, "validUntil");
        assertEq(uint48(validationData >> 208), validAfter, "validAfter");
        (uint64 id, address sender, bytes32 hash) = abi.decode(context, (uint64, address, bytes32));
        assertEq(id, 42, "sponsorship id");
        assertEq(sender, address(account), "sender");
        assertEq(uint256(hash), 7, "op hash");
    }
}

contract SponsorPaymasterV07Test is SponsorPaymasterTest {
    function artifact() internal pure override returns (string memory) {
        return "artifacts/v07/EntryPoint.json";
    }
}

contract SponsorPaymasterV08Test is SponsorPaymasterTest {
    function artifact() internal pure override returns (string memory) {
        return "artifacts/v08/EntryPoint.json";
    }
}
