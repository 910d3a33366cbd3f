// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title MockUSDC
/// @notice A 6-decimal ERC-20 with EIP-2612 permit for local development and tests: the same
///         decimals and permit domain shape as USDC, with an owner-controlled mint.
contract MockUSDC is ERC20, ERC20Permit, Ownable {
    constructor(address initialOwner) ERC20("Mock USD Coin", "USDC") ERC20Permit("Mock USD Coin") Ownable(initialOwner) {}

    /// @notice USDC has 6 decimals; streams and settlement rely on this being honoured.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Mints `amount` base units to `to`. Only the owner (the dev deployer) may mint.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
