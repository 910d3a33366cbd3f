// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TestBase} from "./utils/Cheats.sol";
import {StreamVault} from "../src/StreamVault.sol";
import {MockUSDC} from "../src/MockUSDC.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// Drives random operations by every role over a few streams, tracking what went in and out.
contract StreamVaultHandler is TestBase {
    StreamVault public immutable vault;
    MockUSDC public immutable usdc;
    address public constant PAYER = address(0xA11CE);
    address public constant PAYEE = address(0xB0B);
    address public constant OPERATOR = address(0x0BE7);
    address public constant STRANGER = address(0x5757);
    uint256 public constant STREAMS = 3;
    /// The last stream is capped: it may pay at most this much in total.
    uint96 public constant MAX_TOTAL = 5e6;

    uint256[STREAMS] public ids;
    mapping(uint256 => uint256) public deposited;
    mapping(uint256 => uint256) public withdrawn;
    mapping(uint256 => uint256) public refunded;
    uint256 public paidToPayee;

    constructor(StreamVault vault_, MockUSDC usdc_) {
        vault = vault_;
        usdc = usdc_;
        vm.prank(PAYER);
        usdc.approve(address(vault), type(uint256).max);
        for (uint256 i; i < STREAMS; ++i) {
            vm.prank(PAYER);
            // Slow, odd rates: most seconds leave a fraction of a base unit.
            uint96 cap = i == STREAMS - 1 ? MAX_TOTAL : 0;
            ids[i] = vault.open(PAYEE, IERC20(address(usdc)), uint96(1e11 * (7 + 13 * i)), OPERATOR, 0, cap, 0);
        }
    }

    function _stream(uint256 seed) internal view returns (uint256) {
        return ids[seed % STREAMS];
    }

    function _closed(uint256 id) internal view returns (bool) {
        return vault.getStream(id).flags & 2 != 0;
    }

    function warp(uint256 secs) external {
        vm.warp(block.timestamp + bound(secs, 1, 7 days));
    }

    function deposit(uint256 seed, uint256 amount) external {
        uint256 id = _stream(seed);
        if (_closed(id)) return;
        amount = bound(amount, 1, 1e12);
        vm.prank(PAYER);
        vault.deposit(id, uint128(amount));
        deposited[id] += amount;
    }

    function withdraw(uint256 seed, uint256 amount, uint8 caller) external {
        uint256 id = _stream(seed);
        uint256 available = vault.coveredDebt(id);
        if (available == 0) return;
        amount = bound(amount, 1, available);
        // Anyone may pay the payee.
        vm.prank([PAYEE, OPERATOR, PAYER, STRANGER][caller % 4]);
        vault.withdraw(id, uint128(amount));
        withdrawn[id] += amount;
        paidToPayee += amount;
    }

    function withdrawAll() external {
        uint256[] memory all = new uint256[](STREAMS);
        uint256 expected;
        for (uint256 i; i < STREAMS; ++i) {
            all[i] = ids[i];
            uint256 covered = vault.coveredDebt(ids[i]);
            withdrawn[ids[i]] += covered;
            expected += covered;
        }
        vm.prank(STRANGER);
        uint256 total = vault.withdrawBatch(all);
        assertEq(total, expected, "the batch paid every covered debt");
        paidToPayee += total;
    }

    function refund(uint256 seed, uint256 amount) external {
        uint256 id = _stream(seed);
        if (_closed(id)) return;
        uint256 available = vault.refundable(id);
        if (available == 0) return;
        amount = bound(amount, 1, available);
        vm.prank(PAYER);
        vault.refund(id, uint128(amount));
        refunded[id] += amount;
    }

    function pauseOrResume(uint256 seed, bool byOperator) external {
        uint256 id = _stream(seed);
        if (_closed(id)) return;
        bool paused = vault.getStream(id).flags & 1 != 0;
        vm.prank(byOperator ? OPERATOR : PAYER);
        if (paused) vault.resume(id);
        else vault.pause(id);
    }

    function adjust(uint256 seed, uint96 rate) external {
        uint256 id = _stream(seed);
        if (_closed(id)) return;
        rate = uint96(bound(rate, 1, 1e20));
        vm.prank(PAYER);
        vault.adjustRate(id, rate);
    }

    function close(uint256 seed) external {
        // Rarely, so most runs exercise open streams for long.
        if (seed % 16 != 0) return;
        uint256 id = _stream(seed / 16);
        if (_closed(id)) return;
        StreamVault.StreamView memory s = vault.getStream(id);
        uint256 covered = vault.coveredDebt(id);
        vm.prank(OPERATOR);
        vault.close(id);
        withdrawn[id] += covered;
        paidToPayee += covered;
        refunded[id] += s.balance - covered;
    }
}

/// For every stream and in total: deposits = withdrawn + refunded + balance, at all times; the
/// vault holds exactly what it owes; the payee got exactly what was withdrawn; a capped stream's
/// remainder is its cap less what it paid.
contract StreamVaultInvariantTest is TestBase {
    StreamVault internal vault;
    MockUSDC internal usdc;
    StreamVaultHandler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        vault = new StreamVault();
        usdc = new MockUSDC(address(this));
        usdc.mint(address(0xA11CE), 1e30);
        handler = new StreamVaultHandler(vault, usdc);
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_conservation() public view {
        uint256 balances;
        for (uint256 i; i < handler.STREAMS(); ++i) {
            uint256 id = handler.ids(i);
            uint256 balance = vault.getStream(id).balance;
            assertEq(
                handler.deposited(id), handler.withdrawn(id) + handler.refunded(id) + balance, "per stream"
            );
            if (i == handler.STREAMS() - 1) {
                assertEq(
                    vault.getStream(id).remaining, handler.MAX_TOTAL() - handler.withdrawn(id), "cap's remainder"
                );
            }
            balances += balance;
        }
        assertEq(usdc.balanceOf(address(vault)), balances, "the vault holds exactly the balances");
        assertEq(usdc.balanceOf(handler.PAYEE()), handler.paidToPayee(), "payee received");
    }

    function invariant_coveredNeverExceedsBalance() public view {
        for (uint256 i; i < handler.STREAMS(); ++i) {
            uint256 id = handler.ids(i);
            assertTrue(vault.coveredDebt(id) <= vault.getStream(id).balance, "covered <= balance");
            assertEq(vault.coveredDebt(id) + vault.refundable(id), vault.getStream(id).balance, "covered + refundable = balance");
        }
    }
}
