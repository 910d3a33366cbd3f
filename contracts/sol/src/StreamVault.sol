// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

/// @title StreamVault
/// @notice Open-ended per-second payment streams of any ERC-20 with at most 18 decimals. A payer
///         funds a stream; its payee earns `ratePerSecond` every second, computed lazily from a
///         snapshot, so no transaction is ever needed per second.
///
/// @dev Units and rounding.
///      * Rates are token units per second scaled to 18 decimals (1 USDC/s = 1e18 whatever the
///        token's decimals), so slow rates keep their precision.
///      * Debt accrues in the same 18-decimal scale: `snapshotDebtScaled` plus
///        `ratePerSecond × (now − snapshotTime)` while running.
///      * In token units the debt is that scaled amount divided by 10^(18 − decimals), ROUNDED DOWN:
///        the payee is never paid more than accrued. The remainder is never dropped: a withdrawal
///        subtracts exactly `amount × scale` from the scaled debt, so the fraction stays and is
///        paid once it adds up to a whole unit. No dust is lost over any sequence of operations.
///      * Debt beyond the balance is "uncovered"; `depletionTime` is the first second it exists.
///
///      * Widths: rates fit 80 bits (1.2e6 whole tokens per second) and times 32 bits (until
///        2106), so no debt, however long a stream runs, reaches 2^112: the 120-bit snapshot
///        cannot overflow. Balances fit 96 bits.
///
///      Roles. The payer funds, tops up, refunds unstreamed surplus, raises or lowers the rate,
///      pauses, resumes and closes. The operator (the vendor's settled node) may pause and resume
///      (usage metering), lower the rate and close; it never moves funds anywhere but to the
///      payee (earned) or the payer (surplus). Anyone may top up a stream, and anyone may pay a
///      stream's covered debt to its payee (funds can only go to the payee, as in Sablier Flow):
///      so settlement batches read no role. Fee-on-transfer tokens are not supported.
///
///      Opening for a payer. `openFor` opens a stream on a payer's EIP-712 signature of its
///      terms (any relayer — the vendor's node — sends it and pays the gas), pulling the deposit
///      with an EIP-2612 permit when one is given: a customer with tokens and no ETH starts
///      paying in one transaction it never sends. Smart-account payers sign with ERC-1271.
///
///      Gas. The fields every accrual reads and every payment writes (balance, snapshot debt,
///      snapshot time, flags) share one slot, which is non-zero from the open on: no operation
///      pays for a first write (20,000 gas) after the open. The payee, the rate and the token's
///      registry id share the other slot a payment reads, so a batched withdrawal touches two
///      slots per stream and reads each token (address, scale) once per run of streams; it
///      logs one `BatchWithdrawn` for the whole batch instead of a `Withdrawn` per stream.
///      The stream exists while its payee is set.
contract StreamVault is EIP712 {
    using SafeERC20 for IERC20;

    /// @notice What a payer signs for `openFor`.
    struct OpenTerms {
        address payee;
        IERC20 token;
        uint96 ratePerSecond;
        address operator;
        uint96 maxRate;
        uint96 maxTotal;
        uint128 amount;
        uint256 nonce;
        uint256 deadline;
    }

    /// @notice An EIP-2612 permit of the deposit (v = 0: none; the payer approved already).
    struct Permit {
        uint8 v;
        bytes32 r;
        bytes32 s;
    }

    bytes32 public constant OPEN_TERMS_TYPEHASH = keccak256(
        "OpenTerms(address payee,address token,uint96 ratePerSecond,address operator,uint96 maxRate,uint96 maxTotal,uint128 amount,uint256 nonce,uint256 deadline)"
    );

    uint8 internal constant PAUSED = 1;
    uint8 internal constant CLOSED = 2;
    uint8 internal constant CAPPED = 4;

    /// @dev Four storage slots; the two every payment touches first.
    struct Stream {
        // slot 0: read by every accrual, written by every payment
        uint96 balance;
        uint120 snapshotDebtScaled;
        uint32 snapshotTime;
        uint8 flags;
        // slot 1: read by every accrual and payment
        address payee;
        uint80 ratePerSecond;
        uint16 tokenId;
        // slot 2: read by the payer's operations
        address payer;
        uint88 maxRate;
        // slot 3: `remaining` is what a capped stream may still pay (maxTotal − paid so far)
        address operator;
        uint96 remaining;
    }

    /// @dev A token streams are paid in, registered by the first stream in it; `scale` is
    ///      10^(18 − decimals).
    struct TokenInfo {
        IERC20 token;
        uint64 scale;
        uint8 decimals;
    }

    /// @notice A stream as `getStream` shows it.
    struct StreamView {
        uint96 balance;
        uint128 snapshotDebtScaled;
        uint32 snapshotTime;
        address payee;
        uint88 ratePerSecond;
        uint8 flags;
        address token;
        uint8 decimals;
        uint88 maxRate;
        address payer;
        address operator;
        uint96 remaining;
    }

    /// @notice The next stream's id (ids start at 1).
    uint256 public nextStreamId = 1;

    /// @notice Each token's registry id (0: no stream in it yet).
    mapping(IERC20 => uint16) public tokenIds;

    /// @notice How many tokens are registered (ids 1 to `tokenCount`).
    uint16 public tokenCount;

    /// @dev A mapping, not an array: reading a token does not read a length too.
    mapping(uint16 => TokenInfo) internal _tokens;

    /// @notice The next `OpenTerms.nonce` each payer must sign.
    mapping(address => uint256) public nonces;

    mapping(uint256 => Stream) internal _streams;

    constructor() EIP712("StreamVault", "1") {}

    event StreamOpened(
        uint256 indexed streamId,
        address indexed payer,
        address indexed payee,
        address token,
        uint8 decimals,
        address operator,
        uint96 ratePerSecond,
        uint96 maxRate,
        uint96 maxTotal
    );
    event Deposited(uint256 indexed streamId, address indexed funder, uint128 amount);
    event Withdrawn(uint256 indexed streamId, address indexed payee, uint128 amount);
    /// @notice One per `withdrawBatch` that paid anything: `paid[i]` is
    ///         `streamId << 128 | amount` for each stream paid, in call order (the payees'
    ///         transfers are the token's `Transfer` events).
    event BatchWithdrawn(uint256[] paid);
    event Refunded(uint256 indexed streamId, address indexed payer, uint128 amount);
    event Paused(uint256 indexed streamId, address indexed by, uint256 snapshotDebtScaled);
    event Resumed(uint256 indexed streamId, address indexed by);
    event RateAdjusted(uint256 indexed streamId, address indexed by, uint96 oldRate, uint96 newRate);
    event Closed(uint256 indexed streamId, address indexed by, uint128 paid, uint128 refunded, uint256 forfeitedDebt);

    error ZeroAddress();
    error ZeroRate();
    error ZeroAmount();
    error RateAboveCap(uint96 rate, uint96 maxRate);
    /// The rate does not fit the 80 bits stored (1.2e6 whole tokens per second).
    error RateTooHigh(uint96 rate);
    /// Every one of the 65,535 token ids is taken (streams in registered tokens still open).
    error TooManyTokens();
    error DecimalsAboveEighteen(uint8 decimals);
    error UnknownStream(uint256 streamId);
    error StreamIsClosed(uint256 streamId);
    error StreamIsPaused(uint256 streamId);
    error StreamNotPaused(uint256 streamId);
    error NotAllowed(uint256 streamId, address caller);
    error RateIncreaseNeedsPayer(uint256 streamId);
    error AmountAboveAvailable(uint256 streamId, uint256 amount, uint256 available);
    /// The balance would not fit the 96 bits stored.
    error BalanceOverflow(uint256 streamId);
    /// `openFor` after the terms' deadline.
    error TermsExpired(uint256 deadline);
    /// `openFor` with a nonce other than the payer's next.
    error WrongNonce(uint256 nonce, uint256 expected);
    /// `openFor` with a signature that is not the payer's over these terms.
    error BadTermsSignature(address payer);

    // ---------------------------------------------------------------- views

    /// @notice The stream's stored state.
    function getStream(uint256 streamId) external view returns (StreamView memory v) {
        Stream storage s = _existing(streamId);
        TokenInfo storage t = _tokens[s.tokenId];
        v.balance = s.balance;
        v.snapshotDebtScaled = s.snapshotDebtScaled;
        v.snapshotTime = s.snapshotTime;
        v.payee = s.payee;
        v.ratePerSecond = s.ratePerSecond;
        v.flags = s.flags;
        v.token = address(t.token);
        v.decimals = t.decimals;
        v.maxRate = s.maxRate;
        v.payer = s.payer;
        v.operator = s.operator;
        v.remaining = s.remaining;
    }

    /// @notice Token `id`'s address and decimals.
    function tokenInfo(uint16 id) external view returns (TokenInfo memory) {
        return _tokens[id];
    }

    /// @notice Debt in 18-decimal units at `block.timestamp` (capped by `maxTotal`).
    function totalDebtScaled(uint256 streamId) public view returns (uint256) {
        Stream storage s = _existing(streamId);
        return _totalDebtScaled(s, block.timestamp, _scale(s));
    }

    /// @notice Debt in token units (rounded down) now.
    function totalDebt(uint256 streamId) public view returns (uint256) {
        Stream storage s = _existing(streamId);
        uint256 scale = _scale(s);
        return _totalDebtScaled(s, block.timestamp, scale) / scale;
    }

    /// @notice The part of the debt the balance covers: what the payee can withdraw now.
    function coveredDebt(uint256 streamId) public view returns (uint256) {
        Stream storage s = _existing(streamId);
        uint256 scale = _scale(s);
        return _min(_totalDebtScaled(s, block.timestamp, scale) / scale, s.balance);
    }

    /// @notice The part of the debt the balance does not cover.
    function uncoveredDebt(uint256 streamId) external view returns (uint256) {
        Stream storage s = _existing(streamId);
        uint256 scale = _scale(s);
        uint256 debt = _totalDebtScaled(s, block.timestamp, scale) / scale;
        return debt > s.balance ? debt - s.balance : 0;
    }

    /// @notice What the payer could take back now (balance not owed).
    function refundable(uint256 streamId) public view returns (uint256) {
        Stream storage s = _existing(streamId);
        uint256 scale = _scale(s);
        uint256 debt = _totalDebtScaled(s, block.timestamp, scale) / scale;
        return debt >= s.balance ? 0 : s.balance - debt;
    }

    /// @notice The first second at which the debt exceeds the balance; 0 when it already does,
    ///         `type(uint40).max` when it never will (paused, closed or capped below the balance).
    function depletionTime(uint256 streamId) external view returns (uint256) {
        Stream storage s = _existing(streamId);
        uint256 scale = _scale(s);
        uint256 now_ = block.timestamp;
        if (_totalDebtScaled(s, now_, scale) / scale > s.balance) return 0;
        uint8 flags = s.flags;
        if (flags & (PAUSED | CLOSED) != 0) return type(uint40).max;
        if (flags & CAPPED != 0 && s.remaining <= s.balance) return type(uint40).max;
        // Debt exceeds the balance once the scaled debt reaches (balance + 1) × scale.
        uint256 threshold = (uint256(s.balance) + 1) * scale;
        uint256 needed = threshold - s.snapshotDebtScaled;
        return s.snapshotTime + (needed + s.ratePerSecond - 1) / s.ratePerSecond;
    }

    // ---------------------------------------------------------------- payer

    /// @notice Opens a stream from the caller to `payee` at `ratePerSecond` (18-decimal units per
    ///         second), funded with `amount` (may be 0). `maxRate` and `maxTotal` (0: none) bound
    ///         what anyone may later set or stream.
    function open(
        address payee,
        IERC20 token,
        uint96 ratePerSecond,
        address operator,
        uint96 maxRate,
        uint96 maxTotal,
        uint128 amount
    ) external returns (uint256 streamId) {
        streamId = _openStream(msg.sender, payee, token, ratePerSecond, operator, maxRate, maxTotal);
        if (amount != 0) _deposit(streamId, _streams[streamId], msg.sender, amount);
    }

    /// @notice Opens the stream `terms` describe for `payer`, who signed them (EIP-712; ERC-1271
    ///         for contracts). The deposit comes from the payer, through `permit` when given.
    ///         Anyone may send it: the terms fix everything, and each nonce opens one stream.
    function openFor(address payer, OpenTerms calldata terms, bytes calldata signature, Permit calldata permit)
        external
        returns (uint256 streamId)
    {
        if (block.timestamp > terms.deadline) revert TermsExpired(terms.deadline);
        uint256 expected = nonces[payer];
        if (terms.nonce != expected) revert WrongNonce(terms.nonce, expected);
        nonces[payer] = expected + 1;
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(OPEN_TERMS_TYPEHASH, terms)));
        if (!SignatureChecker.isValidSignatureNow(payer, digest, signature)) revert BadTermsSignature(payer);
        if (permit.v != 0) {
            // A permit front-run by someone else has already set the allowance: go on.
            try IERC20Permit(address(terms.token)).permit(
                payer, address(this), terms.amount, terms.deadline, permit.v, permit.r, permit.s
            ) {} catch {}
        }
        streamId = _openStream(
            payer, terms.payee, terms.token, terms.ratePerSecond, terms.operator, terms.maxRate, terms.maxTotal
        );
        if (terms.amount != 0) _deposit(streamId, _streams[streamId], payer, terms.amount);
    }

    /// @notice The EIP-712 digest a payer signs for `terms`.
    function openTermsDigest(OpenTerms calldata terms) external view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(OPEN_TERMS_TYPEHASH, terms)));
    }

    /// @notice Adds `amount` to the stream's balance (anyone may fund a stream).
    function deposit(uint256 streamId, uint128 amount) external {
        Stream storage s = _open(streamId);
        if (amount == 0) revert ZeroAmount();
        _deposit(streamId, s, msg.sender, amount);
    }

    /// @notice Returns `amount` of the balance not owed to the payer.
    function refund(uint256 streamId, uint128 amount) external {
        Stream storage s = _open(streamId);
        address payer = s.payer;
        if (msg.sender != payer) revert NotAllowed(streamId, msg.sender);
        if (amount == 0) revert ZeroAmount();
        (IERC20 token, uint256 scale) = _token(s.tokenId);
        uint256 debt = _totalDebtScaled(s, block.timestamp, scale) / scale;
        uint256 balance = s.balance;
        uint256 available = debt >= balance ? 0 : balance - debt;
        if (amount > available) revert AmountAboveAvailable(streamId, amount, available);
        s.balance = uint96(balance - amount);
        token.safeTransfer(payer, amount);
        emit Refunded(streamId, payer, amount);
    }

    /// @notice Sets a new rate. The payer may set any rate up to `maxRate`; the operator may only
    ///         lower it.
    function adjustRate(uint256 streamId, uint96 newRate) external {
        Stream storage s = _open(streamId);
        bool isPayer = msg.sender == s.payer;
        if (!isPayer && msg.sender != s.operator) revert NotAllowed(streamId, msg.sender);
        if (newRate == 0) revert ZeroRate();
        uint96 oldRate = s.ratePerSecond;
        if (!isPayer && newRate > oldRate) revert RateIncreaseNeedsPayer(streamId);
        uint96 maxRate = s.maxRate;
        if (maxRate != 0 && newRate > maxRate) revert RateAboveCap(newRate, maxRate);
        if (newRate > type(uint80).max) revert RateTooHigh(newRate);
        _snapshot(s);
        s.ratePerSecond = uint80(newRate);
        emit RateAdjusted(streamId, msg.sender, oldRate, newRate);
    }

    /// @notice Stops accrual (payer or operator).
    function pause(uint256 streamId) external {
        Stream storage s = _open(streamId);
        _payerOrOperator(streamId, s);
        if (s.flags & PAUSED != 0) revert StreamIsPaused(streamId);
        _snapshot(s);
        s.flags |= PAUSED;
        emit Paused(streamId, msg.sender, s.snapshotDebtScaled);
    }

    /// @notice Restarts accrual from now (payer or operator).
    function resume(uint256 streamId) external {
        Stream storage s = _open(streamId);
        _payerOrOperator(streamId, s);
        if (s.flags & PAUSED == 0) revert StreamNotPaused(streamId);
        s.flags &= ~PAUSED;
        s.snapshotTime = uint32(block.timestamp);
        emit Resumed(streamId, msg.sender);
    }

    /// @notice Ends the stream: the covered debt goes to the payee, the rest of the balance to the
    ///         payer, and the uncovered debt is forfeited (payer or operator).
    function close(uint256 streamId) external {
        Stream storage s = _open(streamId);
        address payer = _payerOrOperator(streamId, s);
        (IERC20 token, uint256 scale) = _token(s.tokenId);
        uint256 debt = _totalDebtScaled(s, block.timestamp, scale) / scale;
        uint96 balance = s.balance;
        uint96 paid = uint96(_min(debt, balance));
        uint96 refunded = balance - paid;
        s.flags |= CLOSED;
        s.balance = 0;
        s.snapshotDebtScaled = 0;
        s.snapshotTime = uint32(block.timestamp);
        if (s.flags & CAPPED != 0) s.remaining -= paid;
        if (paid != 0) {
            address payee = s.payee;
            token.safeTransfer(payee, paid);
            emit Withdrawn(streamId, payee, paid);
        }
        if (refunded != 0) {
            token.safeTransfer(payer, refunded);
            emit Refunded(streamId, payer, refunded);
        }
        emit Closed(streamId, msg.sender, paid, refunded, debt - paid);
    }

    // ---------------------------------------------------------------- payee

    /// @notice Pays `amount` of the covered debt to the payee (anyone may call: the funds can
    ///         only go to the payee).
    function withdraw(uint256 streamId, uint128 amount) external {
        Stream storage s = _existing(streamId);
        if (amount == 0) revert ZeroAmount();
        (IERC20 token, uint256 scale) = _token(s.tokenId);
        uint256 debtScaled = _totalDebtScaled(s, block.timestamp, scale);
        uint256 available = _min(debtScaled / scale, s.balance);
        if (amount > available) revert AmountAboveAvailable(streamId, amount, available);
        _pay(s, debtScaled, scale, uint96(amount));
        address payee = s.payee;
        token.safeTransfer(payee, amount);
        emit Withdrawn(streamId, payee, amount);
    }

    /// @notice Pays every listed stream's covered debt to its payee, one transfer per
    ///         (token, payee) run of consecutive streams (list a payee's streams together), and
    ///         logs one `BatchWithdrawn` for them all. Anyone may call. Returns the total paid.
    function withdrawBatch(uint256[] calldata streamIds) external returns (uint256 total) {
        uint256[] memory paid = new uint256[](streamIds.length);
        uint256 count;
        address payee;
        uint16 tokenId;
        IERC20 token;
        uint256 scale;
        uint256 pending;
        for (uint256 i; i < streamIds.length;) {
            uint256 streamId = streamIds[i];
            Stream storage s = _streams[streamId];
            // Slot 1 in one read: payee | rate << 160 | tokenId << 240.
            uint256 slot1;
            assembly ("memory-safe") {
                slot1 := sload(add(s.slot, 1))
            }
            address streamPayee = address(uint160(slot1));
            if (streamPayee == address(0)) revert UnknownStream(streamId);
            uint16 streamTokenId = uint16(slot1 >> 240);
            if (streamPayee != payee || streamTokenId != tokenId) {
                if (pending != 0) token.safeTransfer(payee, pending);
                if (streamTokenId != tokenId) (token, scale) = _token(streamTokenId);
                (payee, tokenId, pending) = (streamPayee, streamTokenId, 0);
            }
            uint256 amount = _payCovered(s, uint80(slot1 >> 160), scale);
            unchecked {
                if (amount != 0) {
                    // Ids come from `nextStreamId` and amounts fit 96 bits: the halves never
                    // overlap, and no sum of fewer than 2^160 such amounts overflows.
                    paid[count] = streamId << 128 | amount;
                    ++count;
                    pending += amount;
                    total += amount;
                }
                ++i;
            }
        }
        if (pending != 0) token.safeTransfer(payee, pending);
        if (count != 0) {
            // Log only the streams paid.
            assembly ("memory-safe") {
                mstore(paid, count)
            }
            emit BatchWithdrawn(paid);
        }
    }

    // ---------------------------------------------------------------- internals

    function _existing(uint256 streamId) internal view returns (Stream storage s) {
        s = _streams[streamId];
        if (s.payee == address(0)) revert UnknownStream(streamId);
    }

    function _open(uint256 streamId) internal view returns (Stream storage s) {
        s = _existing(streamId);
        if (s.flags & CLOSED != 0) revert StreamIsClosed(streamId);
    }

    /// @dev Reverts unless the caller is the payer or the operator; returns the payer.
    function _payerOrOperator(uint256 streamId, Stream storage s) internal view returns (address payer) {
        payer = s.payer;
        if (msg.sender != payer && msg.sender != s.operator) revert NotAllowed(streamId, msg.sender);
    }

    function _scale(Stream storage s) internal view returns (uint256) {
        return _tokens[s.tokenId].scale;
    }

    /// @dev The scale `_totalDebtScaled` needs: only a capped stream's (0 otherwise, unread).
    function _capScale(Stream storage s) internal view returns (uint256) {
        return s.flags & CAPPED != 0 ? _scale(s) : 0;
    }

    function _token(uint16 id) internal view returns (IERC20 token, uint256 scale) {
        TokenInfo storage t = _tokens[id];
        (token, scale) = (t.token, t.scale);
    }

    /// @dev `token`'s registry id, registering it on its first stream.
    function _tokenId(IERC20 token) internal returns (uint16 id) {
        id = tokenIds[token];
        if (id != 0) return id;
        uint8 decimals = IERC20Metadata(address(token)).decimals();
        if (decimals > 18) revert DecimalsAboveEighteen(decimals);
        if (tokenCount == type(uint16).max) revert TooManyTokens();
        id = ++tokenCount;
        _tokens[id] = TokenInfo(token, uint64(10 ** (18 - uint256(decimals))), decimals);
        tokenIds[token] = id;
    }

    function _min(uint256 a, uint256 b) internal pure returns (uint256) {
        return a < b ? a : b;
    }

    /// @dev Snapshot debt plus what accrued since, capped so that paid + debt ≤ maxTotal.
    function _totalDebtScaled(Stream storage s, uint256 at, uint256 scale) internal view returns (uint256 debt) {
        debt = s.snapshotDebtScaled;
        uint8 flags = s.flags;
        uint256 since = s.snapshotTime;
        if (flags & (PAUSED | CLOSED) == 0 && at > since) {
            debt += uint256(s.ratePerSecond) * (at - since);
        }
        if (flags & CAPPED != 0) {
            uint256 room = uint256(s.remaining) * scale;
            if (debt > room) debt = room;
        }
    }

    function _snapshot(Stream storage s) internal {
        // < 2^112: see the widths above.
        s.snapshotDebtScaled = uint120(_totalDebtScaled(s, block.timestamp, _capScale(s)));
        s.snapshotTime = uint32(block.timestamp);
    }

    /// @dev Pays (in the books) all of `s`'s covered debt now at `rate`; returns the amount.
    ///      The batch's inner loop: slot 0 (balance | snapshotDebtScaled << 96 |
    ///      snapshotTime << 216 | flags << 248) is read once and written once, where field-by-field
    ///      Solidity would read it four times and write it three.
    function _payCovered(Stream storage s, uint256 rate, uint256 scale) internal returns (uint256 amount) {
        uint256 slot0;
        assembly ("memory-safe") {
            slot0 := sload(s.slot)
        }
        uint256 balance = uint96(slot0);
        uint256 debt = uint120(slot0 >> 96);
        uint256 since = uint32(slot0 >> 216);
        uint256 flags = slot0 >> 248;
        if (flags & (PAUSED | CLOSED) == 0 && block.timestamp > since) {
            debt += rate * (block.timestamp - since);
        }
        if (flags & CAPPED != 0) {
            uint256 room = uint256(s.remaining) * scale;
            if (debt > room) debt = room;
        }
        amount = _min(debt / scale, balance);
        if (amount == 0) return 0;
        // The scaled remainder stays (no dust lost); < 2^112, so the 120 bits hold it.
        slot0 = (balance - amount) | (debt - amount * scale) << 96 | block.timestamp << 216 | flags << 248;
        assembly ("memory-safe") {
            sstore(s.slot, slot0)
        }
        if (flags & CAPPED != 0) s.remaining -= uint96(amount);
    }

    /// @dev Moves `amount` out of the debt (`debtScaled`, as of now) and the balance; the scaled
    ///      remainder stays. One slot written (two for a capped stream).
    function _pay(Stream storage s, uint256 debtScaled, uint256 scale, uint96 amount) internal {
        s.snapshotDebtScaled = uint120(debtScaled - uint256(amount) * scale);
        s.snapshotTime = uint32(block.timestamp);
        s.balance -= amount;
        if (s.flags & CAPPED != 0) s.remaining -= amount;
    }

    function _openStream(
        address payer,
        address payee,
        IERC20 token,
        uint96 ratePerSecond,
        address operator,
        uint96 maxRate,
        uint96 maxTotal
    ) internal returns (uint256 streamId) {
        if (payee == address(0) || address(token) == address(0)) revert ZeroAddress();
        if (ratePerSecond == 0) revert ZeroRate();
        if (maxRate != 0 && ratePerSecond > maxRate) revert RateAboveCap(ratePerSecond, maxRate);
        if (ratePerSecond > type(uint80).max) revert RateTooHigh(ratePerSecond);
        // A cap above what any rate can be never binds.
        if (maxRate > type(uint80).max) maxRate = 0;
        uint16 tokenId = _tokenId(token);
        uint8 decimals = _tokens[tokenId].decimals;
        streamId = nextStreamId++;
        Stream storage s = _streams[streamId];
        s.snapshotTime = uint32(block.timestamp);
        s.flags = maxTotal != 0 ? CAPPED : 0;
        s.payee = payee;
        s.ratePerSecond = uint80(ratePerSecond);
        s.tokenId = tokenId;
        s.maxRate = uint88(maxRate);
        s.payer = payer;
        if (operator != address(0) || maxTotal != 0) {
            s.operator = operator;
            s.remaining = maxTotal;
        }
        emit StreamOpened(streamId, payer, payee, address(token), decimals, operator, ratePerSecond, maxRate, maxTotal);
    }

    /// @dev `from` funds the stream (the caller, or the payer of `openFor`).
    function _deposit(uint256 streamId, Stream storage s, address from, uint128 amount) internal {
        if (uint256(s.balance) + amount > type(uint96).max) revert BalanceOverflow(streamId);
        s.balance += uint96(amount);
        (IERC20 token,) = _token(s.tokenId);
        token.safeTransferFrom(from, address(this), amount);
        emit Deposited(streamId, from, amount);
    }
}
