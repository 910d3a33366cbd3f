// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {IAccount} from "account-abstraction-v07/interfaces/IAccount.sol";
import {IPaymaster} from "account-abstraction-v07/interfaces/IPaymaster.sol";
import {PackedUserOperation} from "account-abstraction-v07/interfaces/PackedUserOperation.sol";

/// A contract with plain storage and a payable no-op, for validation code to touch.
contract RuleTarget {
    uint256 public value = 7;
    mapping(address => uint256) public balanceOf;

    /// Runs until out of gas (without `gasleft()`, which would itself break OP-012).
    function burn() external pure returns (uint256 x) {
        while (x != type(uint256).max) {
            x = x * 3 + 1;
        }
    }

    receive() external payable {}
}

/// The ERC-7562 behaviours settled's tests exercise, by number (a validation frame does each).
library Breaks {
    uint256 internal constant NONE = 0;
    uint256 internal constant TIMESTAMP = 1; // OP-011
    uint256 internal constant GAS = 2; // OP-012
    uint256 internal constant SELFBALANCE = 3; // OP-080 unless staked
    uint256 internal constant CALL_WITH_VALUE = 4; // OP-061
    uint256 internal constant EXTCODESIZE_EMPTY = 5; // OP-041
    uint256 internal constant FOREIGN_STORAGE = 6; // STO-021
    uint256 internal constant ASSOCIATED_STORAGE = 7; // allowed (STO-021, account exists)
    uint256 internal constant ENTRY_POINT_CALL = 8; // OP-054
    uint256 internal constant CREATE = 9; // OP-011 (CREATE)
    uint256 internal constant OUT_OF_GAS = 10; // OP-020
    uint256 internal constant TWO_BLOCKED = 11; // OP-011 twice
    uint256 internal constant OWN_STORAGE = 12; // STO-031 for an unstaked paymaster
    uint256 internal constant CONTEXT = 13; // EREP-050 for an unstaked paymaster
    uint256 internal constant STORAGE_SWEEP = 14; // reads fresh slots until out of gas (time bound)
    uint256 internal constant SECOND_CREATE2 = 15; // OP-031
    uint256 internal constant HUGE_KECCAK_OFFSET = 16; // KECCAK256 at offset 2^64: out of gas

    function run(uint256 what, address entryPoint, RuleTarget target) internal returns (uint256 sink) {
        if (what == TIMESTAMP) {
            sink = block.timestamp;
        } else if (what == GAS) {
            assembly {
                sink := gas()
            }
        } else if (what == SELFBALANCE) {
            sink = address(this).balance;
        } else if (what == CALL_WITH_VALUE) {
            (bool ok,) = address(target).call{value: 1}("");
            sink = ok ? 1 : 0;
        } else if (what == EXTCODESIZE_EMPTY) {
            sink = address(0xdead).code.length;
        } else if (what == FOREIGN_STORAGE) {
            sink = target.value();
        } else if (what == ASSOCIATED_STORAGE) {
            sink = target.balanceOf(address(this));
        } else if (what == ENTRY_POINT_CALL) {
            (bool ok, bytes memory ret) = entryPoint.staticcall(abi.encodeWithSignature("getNonce(address,uint192)", address(this), 0));
            sink = ok ? ret.length : 0;
        } else if (what == CREATE) {
            sink = uint160(address(new RuleTarget()));
        } else if (what == OUT_OF_GAS) {
            try target.burn{gas: 20_000}() returns (uint256 x) {
                sink = x;
            } catch {
                sink = 1;
            }
        } else if (what == TWO_BLOCKED) {
            sink = block.timestamp + block.number;
        } else if (what == SECOND_CREATE2) {
            sink = uint160(address(new RuleTarget{salt: keccak256("second")}()));
        } else if (what == HUGE_KECCAK_OFFSET) {
            assembly {
                sink := keccak256(shl(64, 1), 32)
            }
        } else if (what == STORAGE_SWEEP) {
            // Every slot is new, so a simulator forking remote state fetches each one.
            for (uint256 slot = 1000; slot != 0; slot++) {
                assembly {
                    sink := add(sink, sload(slot))
                }
            }
        }
    }
}

/// An account whose `validateUserOp` does `breaks` and then accepts (no signature check).
contract RuleBreakingAccount is IAccount {
    address public immutable entryPoint;
    RuleTarget public immutable target;
    uint256 public breaks;

    constructor(address entryPoint_, RuleTarget target_) payable {
        entryPoint = entryPoint_;
        target = target_;
    }

    function setBreaks(uint256 what) external {
        breaks = what;
    }

    function validateUserOp(PackedUserOperation calldata, bytes32, uint256 missingAccountFunds)
        external
        returns (uint256)
    {
        require(msg.sender == entryPoint, "not from EntryPoint");
        Breaks.run(breaks, entryPoint, target);
        if (missingAccountFunds > 0) {
            (bool ok,) = payable(msg.sender).call{value: missingAccountFunds}("");
            ok;
        }
        return 0;
    }

    receive() external payable {}
}

/// A paymaster whose `validatePaymasterUserOp` does `breaks` and then sponsors anything.
contract RuleBreakingPaymaster is IPaymaster {
    address public immutable entryPoint;
    RuleTarget public immutable target;
    uint256 public breaks;

    constructor(address entryPoint_, RuleTarget target_) {
        entryPoint = entryPoint_;
        target = target_;
    }

    function setBreaks(uint256 what) external {
        breaks = what;
    }

    function deposit() external payable {
        (bool ok,) = entryPoint.call{value: msg.value}(abi.encodeWithSignature("depositTo(address)", address(this)));
        require(ok, "deposit failed");
    }

    function stake(uint32 unstakeDelaySec) external payable {
        (bool ok,) = entryPoint.call{value: msg.value}(abi.encodeWithSignature("addStake(uint32)", unstakeDelaySec));
        require(ok, "stake failed");
    }

    function validatePaymasterUserOp(PackedUserOperation calldata, bytes32, uint256)
        external
        returns (bytes memory context, uint256 validationData)
    {
        // Reading `breaks` is this paymaster's own storage: STO-031 unless staked.
        uint256 what = breaks;
        if (what == Breaks.CONTEXT) {
            return (hex"c0ffee", 0);
        }
        if (what != Breaks.OWN_STORAGE) {
            Breaks.run(what, entryPoint, target);
        }
        return ("", 0);
    }

    function postOp(PostOpMode, bytes calldata, uint256, uint256) external {}
}

/// A factory that deploys a `RuleBreakingAccount` with CREATE2, then does `factoryBreaks` in its
/// own frame and sets the new account's `breaks` (what the account's validation then does).
/// Arguments, not storage: reading its own storage would itself be STO-031 while unstaked.
contract RuleBreakingFactory {
    address public immutable entryPoint;
    RuleTarget public immutable target;

    constructor(address entryPoint_, RuleTarget target_) {
        entryPoint = entryPoint_;
        target = target_;
    }

    function createAccount(uint256 salt, uint256 factoryBreaks, uint256 accountBreaks)
        external
        returns (RuleBreakingAccount account)
    {
        account = new RuleBreakingAccount{salt: bytes32(salt)}(entryPoint, target);
        Breaks.run(factoryBreaks, entryPoint, target);
        account.setBreaks(accountBreaks);
    }

    function getAddress(uint256 salt) external view returns (address) {
        bytes memory creation =
            abi.encodePacked(type(RuleBreakingAccount).creationCode, abi.encode(entryPoint, target));
        bytes32 hash = keccak256(abi.encodePacked(bytes1(0xff), address(this), bytes32(salt), keccak256(creation)));
        return address(uint160(uint256(hash)));
    }

    function stake(uint32 unstakeDelaySec) external payable {
        (bool ok,) = entryPoint.call{value: msg.value}(abi.encodeWithSignature("addStake(uint32)", unstakeDelaySec));
        require(ok, "stake failed");
    }
}
