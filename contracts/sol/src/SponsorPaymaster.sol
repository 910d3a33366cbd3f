// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {IEntryPoint} from "account-abstraction-v07/interfaces/IEntryPoint.sol";
import {IPaymaster} from "account-abstraction-v07/interfaces/IPaymaster.sol";
import {PackedUserOperation} from "account-abstraction-v07/interfaces/PackedUserOperation.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title SponsorPaymaster
/// @notice settled's verifying paymaster: it pays for any UserOperation its off-chain signer
///         approved, for a bounded window, and reports what each sponsorship actually cost.
/// @dev One instance per EntryPoint; the v0.7 and v0.8 EntryPoints call paymasters identically.
///
///      paymasterAndData layout (137 bytes):
///        [0:20)    paymaster address                     (EntryPoint)
///        [20:36)   paymasterVerificationGasLimit uint128 (EntryPoint)
///        [36:52)   paymasterPostOpGasLimit uint128       (EntryPoint)
///        [52:58)   validUntil uint48
///        [58:64)   validAfter uint48
///        [64:72)   sponsorshipId uint64 — the signer's reservation id, echoed by `GasSponsored`
///        [72:137)  signature (r, s, v) over `sponsorshipHash`
///
///      The signature covers every op field the EntryPoint hashes except the account's own
///      signature and this signature, plus the chain id, this paymaster's address and the window:
///      a signature cannot be replayed on another chain, another paymaster, or a changed op.
///      A bad signature is reported as SIG_VALIDATION_FAILED (never a revert) so that bundlers
///      can estimate gas with stub data of the right length.
contract SponsorPaymaster is IPaymaster, Ownable {
    /// @notice The EntryPoint this paymaster serves and holds its deposit at.
    IEntryPoint public immutable entryPoint;

    /// @notice The off-chain key that approves sponsorships.
    address public signer;

    uint256 private constant PAYMASTER_DATA_OFFSET = 52;
    uint256 private constant SIGNATURE_OFFSET = 72;
    uint256 private constant PAYMASTER_AND_DATA_LENGTH = 137;
    uint256 private constant SIG_VALIDATION_FAILED = 1;

    /// @notice The signer changed (key rotation).
    event SignerChanged(address indexed previous, address indexed current);

    /// @notice A sponsored op's postOp ran: `actualGasCost` is what the EntryPoint charged so far
    ///         (the final charge, postOp included, is in the EntryPoint's `UserOperationEvent`).
    event GasSponsored(
        uint64 indexed sponsorshipId,
        address indexed sender,
        bytes32 indexed userOpHash,
        uint256 actualGasCost,
        uint256 actualUserOpFeePerGas
    );

    /// @notice Only the EntryPoint may call validation and postOp.
    error NotEntryPoint(address caller);
    /// @notice paymasterAndData is not 137 bytes.
    error InvalidPaymasterDataLength(uint256 length);

    constructor(IEntryPoint entryPoint_, address owner_) Ownable(owner_) {
        entryPoint = entryPoint_;
    }

    modifier onlyEntryPoint() {
        if (msg.sender != address(entryPoint)) revert NotEntryPoint(msg.sender);
        _;
    }

    /// @notice Sets the key that approves sponsorships.
    function setSigner(address signer_) external onlyOwner {
        emit SignerChanged(signer, signer_);
        signer = signer_;
    }

    /// @notice The digest the signer signs for `op` with this window and sponsorship id.
    function sponsorshipHash(PackedUserOperation calldata op, uint48 validUntil, uint48 validAfter, uint64 sponsorshipId)
        public
        view
        returns (bytes32)
    {
        // Two levels keep the encoder within the stack without via-IR.
        bytes32 opFields = keccak256(
            abi.encode(
                op.sender,
                op.nonce,
                keccak256(op.initCode),
                keccak256(op.callData),
                op.accountGasLimits,
                bytes32(op.paymasterAndData[20:PAYMASTER_DATA_OFFSET]),
                op.preVerificationGas,
                op.gasFees
            )
        );
        return keccak256(abi.encode(opFields, block.chainid, address(this), validUntil, validAfter, sponsorshipId));
    }

    /// @inheritdoc IPaymaster
    function validatePaymasterUserOp(PackedUserOperation calldata op, bytes32 userOpHash, uint256)
        external
        view
        onlyEntryPoint
        returns (bytes memory context, uint256 validationData)
    {
        bytes calldata data = op.paymasterAndData;
        if (data.length != PAYMASTER_AND_DATA_LENGTH) revert InvalidPaymasterDataLength(data.length);
        uint64 sponsorshipId = uint64(bytes8(data[64:72]));
        validationData = _validationData(op, data, sponsorshipId);
        context = abi.encode(sponsorshipId, op.sender, userOpHash);
    }

    /// @dev The signature verdict and the signed window, packed as the EntryPoint reads them.
    function _validationData(PackedUserOperation calldata op, bytes calldata data, uint64 sponsorshipId)
        private
        view
        returns (uint256)
    {
        uint48 validUntil = uint48(bytes6(data[52:58]));
        uint48 validAfter = uint48(bytes6(data[58:64]));
        // The signer is read whatever the signature: a stub signature must cost the same gas as
        // a real one, or gas estimated with stub data falls short (AA36).
        address expected = signer;
        (address recovered, ECDSA.RecoverError error,) =
            ECDSA.tryRecover(sponsorshipHash(op, validUntil, validAfter, sponsorshipId), data[SIGNATURE_OFFSET:]);
        bool valid = error == ECDSA.RecoverError.NoError && recovered == expected && recovered != address(0);
        return (valid ? 0 : SIG_VALIDATION_FAILED) | (uint256(validUntil) << 160) | (uint256(validAfter) << 208);
    }

    /// @inheritdoc IPaymaster
    function postOp(PostOpMode, bytes calldata context, uint256 actualGasCost, uint256 actualUserOpFeePerGas)
        external
        onlyEntryPoint
    {
        (uint64 sponsorshipId, address sender, bytes32 userOpHash) = abi.decode(context, (uint64, address, bytes32));
        emit GasSponsored(sponsorshipId, sender, userOpHash, actualGasCost, actualUserOpFeePerGas);
    }

    /// @notice Adds to this paymaster's deposit at the EntryPoint (anyone may fund it).
    function deposit() external payable {
        entryPoint.depositTo{value: msg.value}(address(this));
    }

    /// @notice This paymaster's deposit at the EntryPoint.
    function getDeposit() external view returns (uint256) {
        return entryPoint.balanceOf(address(this));
    }

    /// @notice Withdraws `amount` of the deposit to `to`.
    function withdrawTo(address payable to, uint256 amount) external onlyOwner {
        entryPoint.withdrawTo(to, amount);
    }

    /// @notice Stakes `msg.value` with `unstakeDelaySec` (ERC-7562 lets staked paymasters use
    ///         their own storage and return a context).
    function addStake(uint32 unstakeDelaySec) external payable onlyOwner {
        entryPoint.addStake{value: msg.value}(unstakeDelaySec);
    }

    /// @notice Starts the unstake delay.
    function unlockStake() external onlyOwner {
        entryPoint.unlockStake();
    }

    /// @notice Withdraws the unlocked stake to `to`.
    function withdrawStake(address payable to) external onlyOwner {
        entryPoint.withdrawStake(to);
    }
}
