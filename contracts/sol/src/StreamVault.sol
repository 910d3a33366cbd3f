// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

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
///      Roles. The payer funds, tops up, refunds unstreamed surplus, raises or lowers the rate,
///      pauses, resumes and closes. The operator (the vendor's settled node) may pause and resume
///      (usage metering), lower the rate, withdraw to the payee and close; it never moves funds
///      anywhere but to the payee (earned) or the payer (surplus). Anyone may top up a stream.
///      Fee-on-transfer tokens are not supported.
contract StreamVault {
    using SafeERC20 for IERC20;

    /// @dev Six storage slots, packed so that opening a funded stream writes five fresh ones.
    struct Stream {
        // slot 0
        address payer;
        uint40 snapshotTime;
        bool paused;
        bool closed;
        uint8 decimals;
        // slot 1
        address payee;
        uint96 ratePerSecond;
        // slot 2
        address token;
        uint96 maxRate;
        // slot 3
        address operator;
        uint96 maxTotal;
        // slot 4
        uint128 balance;
        uint128 withdrawn;
        // slot 5: full width, so no rate and duration can overflow it
        uint256 snapshotDebtScaled;
    }

    /// @notice The next stream's id (ids start at 1).
    uint256 public nextStreamId = 1;

    mapping(uint256 => Stream) internal _streams;

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
    event Refunded(uint256 indexed streamId, address indexed payer, uint128 amount);
    event Paused(uint256 indexed streamId, address indexed by, uint256 snapshotDebtScaled);
    event Resumed(uint256 indexed streamId, address indexed by);
    event RateAdjusted(uint256 indexed streamId, address indexed by, uint96 oldRate, uint96 newRate);
    event Closed(uint256 indexed streamId, address indexed by, uint128 paid, uint128 refunded, uint256 forfeitedDebt);

    error ZeroAddress();
    error ZeroRate();
    error ZeroAmount();
    error RateAboveCap(uint96 rate, uint96 maxRate);
    error DecimalsAboveEighteen(uint8 decimals);
    error UnknownStream(uint256 streamId);
    error StreamIsClosed(uint256 streamId);
    error StreamIsPaused(uint256 streamId);
    error StreamNotPaused(uint256 streamId);
    error NotAllowed(uint256 streamId, address caller);
    error RateIncreaseNeedsPayer(uint256 streamId);
    error AmountAboveAvailable(uint256 streamId, uint256 amount, uint256 available);
    error BalanceOverflow(uint256 streamId);

    // ---------------------------------------------------------------- views

    /// @notice The stream's stored state.
    function getStream(uint256 streamId) external view returns (Stream memory) {
        return _existing(streamId);
    }

    /// @notice Debt in 18-decimal units at `block.timestamp` (capped by `maxTotal`).
    function totalDebtScaled(uint256 streamId) public view returns (uint256) {
        return _totalDebtScaled(_existing(streamId), block.timestamp);
    }

    /// @notice Debt in token units (rounded down) now.
    function totalDebt(uint256 streamId) public view returns (uint256) {
        Stream storage s = _existing(streamId);
        return _totalDebtScaled(s, block.timestamp) / _scale(s.decimals);
    }

    /// @notice The part of the debt the balance covers: what the payee can withdraw now.
    function coveredDebt(uint256 streamId) public view returns (uint256) {
        Stream storage s = _existing(streamId);
        return _min(_totalDebtScaled(s, block.timestamp) / _scale(s.decimals), s.balance);
    }

    /// @notice The part of the debt the balance does not cover.
    function uncoveredDebt(uint256 streamId) external view returns (uint256) {
        Stream storage s = _existing(streamId);
        uint256 debt = _totalDebtScaled(s, block.timestamp) / _scale(s.decimals);
        return debt > s.balance ? debt - s.balance : 0;
    }

    /// @notice What the payer could take back now (balance not owed).
    function refundable(uint256 streamId) public view returns (uint256) {
        Stream storage s = _existing(streamId);
        uint256 debt = _totalDebtScaled(s, block.timestamp) / _scale(s.decimals);
        return debt >= s.balance ? 0 : s.balance - debt;
    }

    /// @notice The first second at which the debt exceeds the balance; 0 when it already does,
    ///         `type(uint40).max` when it never will (paused, closed or capped below the balance).
    function depletionTime(uint256 streamId) external view returns (uint256) {
        Stream storage s = _existing(streamId);
        uint256 scale = _scale(s.decimals);
        uint256 now_ = block.timestamp;
        if (_totalDebtScaled(s, now_) / scale > s.balance) return 0;
        if (s.paused || s.closed) return type(uint40).max;
        // Debt exceeds the balance once the scaled debt reaches (balance + 1) × scale.
        uint256 threshold = (uint256(s.balance) + 1) * scale;
        if (s.maxTotal != 0 && (s.maxTotal <= s.withdrawn || uint256(s.maxTotal) - s.withdrawn <= s.balance)) {
            return type(uint40).max;
        }
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
        if (payee == address(0) || address(token) == address(0)) revert ZeroAddress();
        if (ratePerSecond == 0) revert ZeroRate();
        if (maxRate != 0 && ratePerSecond > maxRate) revert RateAboveCap(ratePerSecond, maxRate);
        uint8 decimals = IERC20Metadata(address(token)).decimals();
        if (decimals > 18) revert DecimalsAboveEighteen(decimals);
        streamId = nextStreamId++;
        Stream storage s = _streams[streamId];
        s.payer = msg.sender;
        s.snapshotTime = uint40(block.timestamp);
        s.decimals = decimals;
        s.payee = payee;
        s.ratePerSecond = ratePerSecond;
        s.token = address(token);
        s.maxRate = maxRate;
        s.operator = operator;
        s.maxTotal = maxTotal;
        emit StreamOpened(
            streamId, msg.sender, payee, address(token), decimals, operator, ratePerSecond, maxRate, maxTotal
        );
        if (amount != 0) _deposit(streamId, s, amount);
    }

    /// @notice Adds `amount` to the stream's balance (anyone may fund a stream).
    function deposit(uint256 streamId, uint128 amount) external {
        Stream storage s = _open(streamId);
        if (amount == 0) revert ZeroAmount();
        _deposit(streamId, s, amount);
    }

    /// @notice Returns `amount` of the balance not owed to the payer.
    function refund(uint256 streamId, uint128 amount) external {
        Stream storage s = _open(streamId);
        if (msg.sender != s.payer) revert NotAllowed(streamId, msg.sender);
        if (amount == 0) revert ZeroAmount();
        uint256 available = refundable(streamId);
        if (amount > available) revert AmountAboveAvailable(streamId, amount, available);
        s.balance -= amount;
        IERC20(s.token).safeTransfer(s.payer, amount);
        emit Refunded(streamId, s.payer, amount);
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
        if (s.maxRate != 0 && newRate > s.maxRate) revert RateAboveCap(newRate, s.maxRate);
        _snapshot(s);
        s.ratePerSecond = newRate;
        emit RateAdjusted(streamId, msg.sender, oldRate, newRate);
    }

    /// @notice Stops accrual (payer or operator).
    function pause(uint256 streamId) external {
        Stream storage s = _open(streamId);
        _payerOrOperator(streamId, s);
        if (s.paused) revert StreamIsPaused(streamId);
        _snapshot(s);
        s.paused = true;
        emit Paused(streamId, msg.sender, s.snapshotDebtScaled);
    }

    /// @notice Restarts accrual from now (payer or operator).
    function resume(uint256 streamId) external {
        Stream storage s = _open(streamId);
        _payerOrOperator(streamId, s);
        if (!s.paused) revert StreamNotPaused(streamId);
        s.paused = false;
        s.snapshotTime = uint40(block.timestamp);
        emit Resumed(streamId, msg.sender);
    }

    /// @notice Ends the stream: the covered debt goes to the payee, the rest of the balance to the
    ///         payer, and the uncovered debt is forfeited (payer or operator).
    function close(uint256 streamId) external {
        Stream storage s = _open(streamId);
        _payerOrOperator(streamId, s);
        uint256 debt = _totalDebtScaled(s, block.timestamp) / _scale(s.decimals);
        uint128 balance = s.balance;
        uint128 paid = uint128(_min(debt, balance));
        uint128 refunded = balance - paid;
        s.closed = true;
        s.balance = 0;
        s.snapshotDebtScaled = 0;
        s.snapshotTime = uint40(block.timestamp);
        s.withdrawn += paid;
        if (paid != 0) {
            IERC20(s.token).safeTransfer(s.payee, paid);
            emit Withdrawn(streamId, s.payee, paid);
        }
        if (refunded != 0) {
            IERC20(s.token).safeTransfer(s.payer, refunded);
            emit Refunded(streamId, s.payer, refunded);
        }
        emit Closed(streamId, msg.sender, paid, refunded, debt - paid);
    }

    // ---------------------------------------------------------------- payee

    /// @notice Pays `amount` of the covered debt to the payee (payee, operator or payer may call).
    function withdraw(uint256 streamId, uint128 amount) external {
        Stream storage s = _existing(streamId);
        if (msg.sender != s.payee && msg.sender != s.operator && msg.sender != s.payer) {
            revert NotAllowed(streamId, msg.sender);
        }
        if (amount == 0) revert ZeroAmount();
        uint256 debtScaled = _totalDebtScaled(s, block.timestamp);
        uint256 available = _min(debtScaled / _scale(s.decimals), s.balance);
        if (amount > available) revert AmountAboveAvailable(streamId, amount, available);
        _withdrawInternal(s, debtScaled, amount);
        IERC20(s.token).safeTransfer(s.payee, amount);
        emit Withdrawn(streamId, s.payee, amount);
    }

    /// @notice Pays every listed stream's covered debt to its payee, one transfer per
    ///         (token, payee) pair. The caller must be each stream's operator or payee. Returns the
    ///         total paid.
    function withdrawBatch(uint256[] calldata streamIds) external returns (uint256 total) {
        uint256 n = streamIds.length;
        address[] memory tokens = new address[](n);
        address[] memory payees = new address[](n);
        uint256[] memory amounts = new uint256[](n);
        uint256 groups;
        for (uint256 i; i < n; ++i) {
            uint256 streamId = streamIds[i];
            Stream storage s = _existing(streamId);
            address payee = s.payee;
            if (msg.sender != s.operator && msg.sender != payee) revert NotAllowed(streamId, msg.sender);
            uint256 debtScaled = _totalDebtScaled(s, block.timestamp);
            uint128 amount = uint128(_min(debtScaled / _scale(s.decimals), s.balance));
            if (amount == 0) continue;
            _withdrawInternal(s, debtScaled, amount);
            emit Withdrawn(streamId, payee, amount);
            address token = s.token;
            uint256 g;
            while (g < groups && (payees[g] != payee || tokens[g] != token)) ++g;
            if (g == groups) {
                tokens[g] = token;
                payees[g] = payee;
                ++groups;
            }
            amounts[g] += amount;
            total += amount;
        }
        for (uint256 g; g < groups; ++g) {
            IERC20(tokens[g]).safeTransfer(payees[g], amounts[g]);
        }
    }

    // ---------------------------------------------------------------- internals

    function _existing(uint256 streamId) internal view returns (Stream storage s) {
        s = _streams[streamId];
        if (s.payer == address(0)) revert UnknownStream(streamId);
    }

    function _open(uint256 streamId) internal view returns (Stream storage s) {
        s = _existing(streamId);
        if (s.closed) revert StreamIsClosed(streamId);
    }

    function _payerOrOperator(uint256 streamId, Stream storage s) internal view {
        if (msg.sender != s.payer && msg.sender != s.operator) revert NotAllowed(streamId, msg.sender);
    }

    function _scale(uint8 decimals) internal pure returns (uint256) {
        return 10 ** (18 - uint256(decimals));
    }

    function _min(uint256 a, uint256 b) internal pure returns (uint256) {
        return a < b ? a : b;
    }

    /// @dev Snapshot debt plus what accrued since, capped so that withdrawn + debt ≤ maxTotal.
    function _totalDebtScaled(Stream storage s, uint256 at) internal view returns (uint256 debt) {
        debt = s.snapshotDebtScaled;
        if (!s.paused && !s.closed && at > s.snapshotTime) {
            debt += uint256(s.ratePerSecond) * (at - s.snapshotTime);
        }
        if (s.maxTotal != 0) {
            uint256 scale = _scale(s.decimals);
            uint256 room = s.maxTotal > s.withdrawn ? (uint256(s.maxTotal) - s.withdrawn) * scale : 0;
            if (debt > room) debt = room;
        }
    }

    function _snapshot(Stream storage s) internal {
        s.snapshotDebtScaled = _totalDebtScaled(s, block.timestamp);
        s.snapshotTime = uint40(block.timestamp);
    }

    /// @dev Moves `amount` out of the debt (`debtScaled`, as of now) and the balance; the scaled
    ///      remainder stays. One write per slot.
    function _withdrawInternal(Stream storage s, uint256 debtScaled, uint128 amount) internal {
        s.snapshotDebtScaled = debtScaled - uint256(amount) * _scale(s.decimals);
        s.snapshotTime = uint40(block.timestamp);
        s.balance -= amount;
        s.withdrawn += amount;
    }

    function _deposit(uint256 streamId, Stream storage s, uint128 amount) internal {
        if (uint256(s.balance) + amount > type(uint128).max) revert BalanceOverflow(streamId);
        s.balance += amount;
        IERC20(s.token).safeTransferFrom(msg.sender, address(this), amount);
        emit Deposited(streamId, msg.sender, amount);
    }
}
