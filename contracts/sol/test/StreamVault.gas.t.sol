// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {StreamVaultFixture} from "./StreamVault.t.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {MockUSDC} from "../src/MockUSDC.sol";

/// @notice Gas per operation, measured as Sablier Flow's benchmark measures its functions: the
///         call's own gas (`gasleft()` around it), on streams created in `setUp`, so their storage
///         is cold in the test's transaction as on chain. Print with
///         `forge test --match-contract StreamVaultGas -vv`; a batch is reported per stream.
contract StreamVaultGasTest is StreamVaultFixture {
    uint256 internal stream;
    uint256[] internal batch;

    function setUp() public {
        _deployFunded();
        usdc.mint(payee, 1); // the payee already holds USDC, as a vendor's treasury does
        stream = openStream(ONE_USDC_PER_SEC, 1_000e6);
        for (uint256 i; i < 100; ++i) {
            batch.push(openStream(ONE_USDC_PER_SEC, 1_000e6));
        }
        vm.warp(T0 + 100);
    }

    function _report(string memory name, uint256 before) internal {
        emit log_named_uint(name, before - gasleft());
    }

    function test_gas_open() public {
        vm.prank(payer);
        uint256 g = gasleft();
        vault.open(payee, IERC20(address(usdc)), 1e18, operator, 0, 0, 0);
        _report("open", g);
    }

    function test_gas_openInANewToken() public {
        MockUSDC other = new MockUSDC(address(this));
        vm.prank(payer);
        uint256 g = gasleft();
        vault.open(payee, IERC20(address(other)), 1e18, operator, 0, 0, 0);
        _report("open, the first stream in its token (registers it)", g);
    }

    function test_gas_openWithDeposit() public {
        vm.prank(payer);
        uint256 g = gasleft();
        vault.open(payee, IERC20(address(usdc)), 1e18, operator, 0, 0, 1_000e6);
        _report("open with deposit", g);
    }

    function test_gas_topUp() public {
        vm.prank(payer);
        uint256 g = gasleft();
        vault.deposit(stream, 100e6);
        _report("top up", g);
    }

    function test_gas_pause() public {
        vm.prank(operator);
        uint256 g = gasleft();
        vault.pause(stream);
        _report("pause", g);
    }

    function test_gas_resume() public {
        vm.prank(operator);
        vault.pause(stream);
        vm.warp(T0 + 200);
        vm.prank(operator);
        uint256 g = gasleft();
        vault.resume(stream);
        _report("resume (warm: after a pause in the same transaction)", g);
    }

    function test_gas_adjustRate() public {
        vm.prank(operator);
        uint256 g = gasleft();
        vault.adjustRate(stream, 5e17);
        _report("adjust rate", g);
    }

    function test_gas_withdraw() public {
        vm.prank(payee);
        uint256 g = gasleft();
        vault.withdraw(stream, 50e6);
        _report("withdraw", g);
    }

    function test_gas_refund() public {
        vm.prank(payer);
        uint256 g = gasleft();
        vault.refund(stream, 100e6);
        _report("refund", g);
    }

    function test_gas_close() public {
        vm.prank(payer);
        uint256 g = gasleft();
        vault.close(stream);
        _report("close", g);
    }

    function test_gas_batchWithdrawPerStream() public {
        uint256[] memory ids = batch;
        vm.prank(operator);
        uint256 g = gasleft();
        vault.withdrawBatch(ids);
        emit log_named_uint("batch withdraw of 100, per stream", (g - gasleft()) / ids.length);
    }
}

/// @notice The same operations in the order and with the warmth of Sablier's own benchmark
///         (sablier-labs/benchmarks `contracts/flow/Benchmark.sol`): one transaction, 100 funded
///         streams, two days between calls, the payer calling; some calls hit a stream an
///         earlier call already touched (warm), others a fresh one (cold). Print with
///         `forge test --match-contract StreamVaultSablierOrder -vv`.
contract StreamVaultSablierOrderTest is StreamVaultFixture {
    uint96 internal constant RATE = 1e15; // 0.001 token per second, Sablier's default
    uint128 internal constant DEPOSIT = 50_000e6;

    function setUp() public {
        _deployFunded();
        usdc.mint(payer, 100 * DEPOSIT);
        usdc.mint(payee, 1);
        for (uint256 i; i < 100; ++i) {
            openStream(RATE, DEPOSIT);
        }
    }

    function _measure(string memory name, bytes memory call) internal {
        vm.warp(block.timestamp + 2 days);
        vm.prank(payer);
        uint256 g = gasleft();
        (bool ok,) = address(vault).call(call);
        uint256 used = g - gasleft();
        require(ok, name);
        emit log_named_uint(name, used);
    }

    function test_gas_inSablierOrder() public {
        uint256 id = 50;
        _measure("adjust rate (cold)", abi.encodeCall(vault.adjustRate, (id, RATE + 1)));
        _measure(
            "open (no deposit)", abi.encodeCall(vault.open, (payee, IERC20(address(usdc)), RATE, operator, 0, 0, 0))
        );
        _measure("top up (warm)", abi.encodeCall(vault.deposit, (id, DEPOSIT)));
        _measure("pause (warm)", abi.encodeCall(vault.pause, (id)));
        _measure("refund (cold)", abi.encodeCall(vault.refund, (++id, 1e6)));
        ++id; // Sablier measures refundMax here; the vault has no such call
        vm.prank(payer);
        vault.pause(id);
        _measure("resume (warm)", abi.encodeCall(vault.resume, (id)));
        _measure("close, solvent (warm)", abi.encodeCall(vault.close, (id)));
        vm.warp(vault.depletionTime(++id) + 2 days);
        _measure("close, insolvent (cold)", abi.encodeCall(vault.close, (id)));
        _measure("withdraw, insolvent (cold)", abi.encodeCall(vault.withdraw, (++id, 1e6)));
        ++id;
        vm.startPrank(payer);
        vault.deposit(id, uint128(vault.uncoveredDebt(id)) + DEPOSIT);
        vm.stopPrank();
        _measure("withdraw, solvent (warm)", abi.encodeCall(vault.withdraw, (id, 1e6)));
        ++id;
        vm.warp(block.timestamp + 2 days);
        uint128 all = uint128(vault.coveredDebt(id));
        vm.prank(payer);
        uint256 g = gasleft();
        vault.withdraw(id, all);
        emit log_named_uint("withdraw everything covered (cold)", g - gasleft());
    }
}
