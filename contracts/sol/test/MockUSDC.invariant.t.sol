// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TestBase} from "./utils/Cheats.sol";
import {MockUSDC} from "../src/MockUSDC.sol";

/// Drives random mints and transfers between a fixed set of holders.
contract MockUSDCHandler is TestBase {
    MockUSDC public immutable usdc;
    address[3] public holders = [address(0x1001), address(0x1002), address(0x1003)];
    uint256 public minted;

    constructor(MockUSDC token) {
        usdc = token;
    }

    function mint(uint256 who, uint256 amount) external {
        amount = bound(amount, 0, 1e18);
        usdc.mint(holders[who % 3], amount);
        minted += amount;
    }

    function transfer(uint256 from, uint256 to, uint256 amount) external {
        address src = holders[from % 3];
        amount = bound(amount, 0, usdc.balanceOf(src));
        vm.prank(src);
        usdc.transfer(holders[to % 3], amount);
    }
}

contract MockUSDCInvariantTest is TestBase {
    MockUSDC internal usdc;
    MockUSDCHandler internal handler;

    function setUp() public {
        usdc = new MockUSDC(address(this));
        handler = new MockUSDCHandler(usdc);
        usdc.transferOwnership(address(handler));
    }

    /// forge's invariant runner calls only the contracts listed here.
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_balancesSumToSupply() public view {
        uint256 sum;
        for (uint256 i = 0; i < 3; i++) {
            sum += usdc.balanceOf(handler.holders(i));
        }
        assertEq(sum, usdc.totalSupply(), "sum of balances");
        assertEq(usdc.totalSupply(), handler.minted(), "supply equals minted");
    }
}
