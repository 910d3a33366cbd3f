// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TestBase} from "./utils/Cheats.sol";
import {MockUSDC} from "../src/MockUSDC.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

contract MockUSDCTest is TestBase {
    MockUSDC internal usdc;
    uint256 internal constant OWNER_KEY = 0xA11CE;
    address internal owner;

    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    function setUp() public {
        usdc = new MockUSDC(address(this));
        owner = vm.addr(OWNER_KEY);
    }

    function test_metadata() public view {
        assertEq(usdc.decimals(), 6, "decimals");
        assertTrue(keccak256(bytes(usdc.symbol())) == keccak256("USDC"), "symbol");
    }

    function test_ownerMints() public {
        usdc.mint(owner, 5_000_000);
        assertEq(usdc.balanceOf(owner), 5_000_000, "balance");
        assertEq(usdc.totalSupply(), 5_000_000, "supply");
    }

    function test_strangerCannotMint() public {
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, owner));
        usdc.mint(owner, 1);
    }

    function test_permitSetsAllowance() public {
        address spender = address(0xBEEF);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(OWNER_KEY, spender, 123, 0, deadline);
        usdc.permit(owner, spender, 123, deadline, v, r, s);
        assertEq(usdc.allowance(owner, spender), 123, "allowance");
        assertEq(usdc.nonces(owner), 1, "nonce");
    }

    function test_permitReplayRejected() public {
        address spender = address(0xBEEF);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(OWNER_KEY, spender, 123, 0, deadline);
        usdc.permit(owner, spender, 123, deadline, v, r, s);
        vm.expectRevert();
        usdc.permit(owner, spender, 123, deadline, v, r, s);
    }

    function test_expiredPermitRejected() public {
        vm.warp(1_000_000);
        uint256 deadline = block.timestamp - 1;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(OWNER_KEY, address(0xBEEF), 1, 0, deadline);
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612ExpiredSignature.selector, deadline));
        usdc.permit(owner, address(0xBEEF), 1, deadline, v, r, s);
    }

    /// Transfers conserve supply and never create or destroy base units.
    function testFuzz_transferConservesSupply(uint256 minted, uint256 sent, address to) public {
        vm.assume(to != address(0) && to != owner);
        minted = bound(minted, 0, type(uint128).max);
        sent = bound(sent, 0, minted);
        usdc.mint(owner, minted);
        vm.prank(owner);
        usdc.transfer(to, sent);
        assertEq(usdc.balanceOf(owner) + usdc.balanceOf(to), minted, "conservation");
        assertEq(usdc.totalSupply(), minted, "supply");
    }

    function _signPermit(uint256 key, address spender, uint256 value, uint256 nonce, uint256 deadline)
        internal
        view
        returns (uint8, bytes32, bytes32)
    {
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, vm.addr(key), spender, value, nonce, deadline));
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash));
        return vm.sign(key, digest);
    }
}
