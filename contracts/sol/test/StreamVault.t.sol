// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.28;

import {TestBase} from "./utils/Cheats.sol";
import {StreamVault} from "../src/StreamVault.sol";
import {MockUSDC} from "../src/MockUSDC.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @notice A token with any decimals, for the scale edge cases (18, and the refused 24).
contract DecimalsToken is ERC20 {
    uint8 internal immutable _decimals;

    constructor(uint8 decimals_) ERC20("Decimals", "DEC") {
        _decimals = decimals_;
    }

    function decimals() public view override returns (uint8) {
        return _decimals;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}

/// @notice A vault, USDC, and a funded payer who approved the vault, at time T0.
abstract contract StreamVaultFixture is TestBase {
    event log_named_uint(string key, uint256 val);

    StreamVault internal vault;
    MockUSDC internal usdc;
    address internal payer = address(0xA11CE);
    address internal payee = address(0xB0B);
    address internal operator = address(0x0BE7);
    address internal stranger = address(0x5757);
    uint256 internal constant T0 = 1_700_000_000;
    uint96 internal constant ONE_USDC_PER_SEC = 1e18;

    function _deployFunded() internal {
        vm.warp(T0);
        vault = new StreamVault();
        usdc = new MockUSDC(address(this));
        usdc.mint(payer, 1_000_000e6);
        vm.prank(payer);
        usdc.approve(address(vault), type(uint256).max);
    }

    function openStream(uint96 rate, uint128 amount) internal returns (uint256 id) {
        vm.prank(payer);
        id = vault.open(payee, IERC20(address(usdc)), rate, operator, 0, 0, amount);
    }
}

contract StreamVaultTest is StreamVaultFixture {
    function setUp() public {
        _deployFunded();
    }

    function test_accruesPerSecondAndPaysThePayee() public {
        uint256 id = openStream(ONE_USDC_PER_SEC, 100e6);
        assertEq(usdc.balanceOf(address(vault)), 100e6, "deposited");
        vm.warp(T0 + 10);
        assertEq(vault.totalDebt(id), 10e6, "10 s at 1 USDC/s");
        assertEq(vault.refundable(id), 90e6, "refundable");
        vm.prank(payee);
        vault.withdraw(id, 4e6);
        assertEq(usdc.balanceOf(payee), 4e6, "payee paid");
        assertEq(vault.totalDebt(id), 6e6, "debt after withdrawal");
        vm.prank(operator);
        vault.withdraw(id, 6e6);
        assertEq(usdc.balanceOf(payee), 10e6, "operator withdraws to the payee");
    }

    function test_slowRatesLoseNoDust() public {
        // 0.1 base unit per second: each whole unit is paid once it has accrued.
        uint256 id = openStream(1e11, 100);
        vm.warp(T0 + 15);
        assertEq(vault.totalDebt(id), 1, "1.5 units owed, 1 payable");
        vm.prank(payee);
        vault.withdraw(id, 1);
        vm.warp(T0 + 20);
        assertEq(vault.totalDebt(id), 1, "the half unit was kept");
        vm.prank(payee);
        vault.withdraw(id, 1);
        assertEq(usdc.balanceOf(payee), 2, "20 s x 0.1 = 2 units, exactly");
    }

    function test_pauseStopsAndResumeRestarts() public {
        uint256 id = openStream(ONE_USDC_PER_SEC, 100e6);
        vm.warp(T0 + 5);
        vm.prank(operator);
        vault.pause(id);
        vm.warp(T0 + 50);
        assertEq(vault.totalDebt(id), 5e6, "no accrual while paused");
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.StreamIsPaused.selector, id));
        vault.pause(id);
        vm.prank(payer);
        vault.resume(id);
        vm.warp(T0 + 53);
        assertEq(vault.totalDebt(id), 8e6, "accrual restarts at resume");
    }

    function test_ratesAdjustWithinRoles() public {
        vm.prank(payer);
        uint256 id = vault.open(payee, IERC20(address(usdc)), ONE_USDC_PER_SEC, operator, 3e18, 0, 100e6);
        vm.warp(T0 + 10);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.RateIncreaseNeedsPayer.selector, id));
        vault.adjustRate(id, 2e18);
        vm.prank(operator);
        vault.adjustRate(id, 5e17);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.RateAboveCap.selector, uint96(4e18), uint96(3e18)));
        vault.adjustRate(id, 4e18);
        vm.warp(T0 + 20);
        assertEq(vault.totalDebt(id), 15e6, "10 s at 1 + 10 s at 0.5");
        vm.prank(payer);
        vault.adjustRate(id, 3e18);
        vm.warp(T0 + 21);
        assertEq(vault.totalDebt(id), 18e6, "payer raised to the cap");
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.NotAllowed.selector, id, stranger));
        vault.adjustRate(id, 1);
        vm.prank(payer);
        vm.expectRevert(StreamVault.ZeroRate.selector);
        vault.adjustRate(id, 0);
    }

    function test_refundOnlySurplusToThePayer() public {
        uint256 id = openStream(ONE_USDC_PER_SEC, 100e6);
        vm.warp(T0 + 30);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.NotAllowed.selector, id, payee));
        vault.refund(id, 1);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.AmountAboveAvailable.selector, id, 71e6, 70e6));
        vault.refund(id, 71e6);
        uint256 before = usdc.balanceOf(payer);
        vm.prank(payer);
        vault.refund(id, 70e6);
        assertEq(usdc.balanceOf(payer) - before, 70e6, "surplus refunded");
        assertEq(vault.coveredDebt(id), 30e6, "the earned part stays");
    }

    function test_depletionAndUncoveredDebt() public {
        uint256 id = openStream(ONE_USDC_PER_SEC, 100e6);
        assertEq(vault.depletionTime(id), T0 + 101, "first second the debt exceeds 100 USDC");
        vm.warp(T0 + 150);
        assertEq(vault.coveredDebt(id), 100e6, "covered");
        assertEq(vault.uncoveredDebt(id), 50e6, "uncovered");
        assertEq(vault.depletionTime(id), 0, "already depleted");
        usdc.mint(address(this), 50e6);
        usdc.approve(address(vault), 50e6);
        vault.deposit(id, 50e6);
        assertEq(vault.uncoveredDebt(id), 0, "a top-up by anyone covers the debt");
    }

    function test_closePaysCoveredRefundsRestForfeitsUncovered() public {
        uint256 id = openStream(ONE_USDC_PER_SEC, 100e6);
        vm.warp(T0 + 40);
        uint256 payerBefore = usdc.balanceOf(payer);
        vm.prank(payer);
        vault.close(id);
        assertEq(usdc.balanceOf(payee), 40e6, "earned paid");
        assertEq(usdc.balanceOf(payer) - payerBefore, 60e6, "surplus refunded");
        assertEq(usdc.balanceOf(address(vault)), 0, "nothing left behind");
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.StreamIsClosed.selector, id));
        vault.deposit(id, 1);

        uint256 broke = openStream(ONE_USDC_PER_SEC, 10e6);
        vm.warp(T0 + 60);
        vm.prank(operator);
        vault.close(broke);
        assertEq(usdc.balanceOf(payee), 50e6, "only the covered 10 USDC paid; 10 forfeited");
    }

    function test_maxTotalCapsWhatIsStreamed() public {
        vm.prank(payer);
        uint256 id = vault.open(payee, IERC20(address(usdc)), ONE_USDC_PER_SEC, operator, 0, 25e6, 100e6);
        vm.warp(T0 + 20);
        vm.prank(payee);
        vault.withdraw(id, 20e6);
        vm.warp(T0 + 100);
        assertEq(vault.totalDebt(id), 5e6, "streaming stops at the 25 USDC total");
        assertEq(vault.depletionTime(id), type(uint40).max, "never depletes under the cap");
    }

    function test_badInputIsRefused() public {
        DecimalsToken wide = new DecimalsToken(24);
        vm.startPrank(payer);
        vm.expectRevert(StreamVault.ZeroRate.selector);
        vault.open(payee, IERC20(address(usdc)), 0, operator, 0, 0, 0);
        vm.expectRevert(StreamVault.ZeroAddress.selector);
        vault.open(address(0), IERC20(address(usdc)), 1, operator, 0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.DecimalsAboveEighteen.selector, uint8(24)));
        vault.open(payee, IERC20(address(wide)), 1, operator, 0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.RateAboveCap.selector, uint96(2), uint96(1)));
        vault.open(payee, IERC20(address(usdc)), 2, operator, 1, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.UnknownStream.selector, 99));
        vault.deposit(99, 1);
        vm.stopPrank();
        uint256 id = openStream(1, 0);
        vm.prank(payer);
        vm.expectRevert(StreamVault.ZeroAmount.selector);
        vault.deposit(id, 0);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.NotAllowed.selector, id, stranger));
        vault.pause(id);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.NotAllowed.selector, id, stranger));
        vault.close(id);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.RateTooHigh.selector, uint96(1) << 80));
        vault.open(payee, IERC20(address(usdc)), uint96(1) << 80, operator, 0, 0, 0);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.BalanceOverflow.selector, id));
        vault.deposit(id, uint128(1) << 96);
    }

    function test_anyonePaysThePayeeNoOneElse() public {
        uint256 id = openStream(ONE_USDC_PER_SEC, 100e6);
        vm.warp(T0 + 10);
        vm.prank(stranger);
        vault.withdraw(id, 10e6);
        assertEq(usdc.balanceOf(payee), 10e6, "a stranger's call pays the payee");
        assertEq(usdc.balanceOf(stranger), 0, "and nobody else");
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.AmountAboveAvailable.selector, id, 1, 0));
        vault.withdraw(id, 1);
    }

    function test_theWidestDebtFitsTheSnapshot() public {
        // The largest storable rate, unfunded, until the last second of uint32 time: 2^80 x 2^32
        // stays below 2^112, so the 120-bit snapshot holds it exactly.
        uint96 rate = uint96(type(uint80).max);
        uint256 id = openStream(rate, 0);
        vm.warp(type(uint32).max);
        vm.prank(payer);
        vault.pause(id);
        uint256 expected = uint256(rate) * (type(uint32).max - T0);
        assertEq(vault.getStream(id).snapshotDebtScaled, expected, "exact");
        assertEq(vault.totalDebtScaled(id), expected, "views agree");
        assertEq(vault.depletionTime(id), 0, "depleted");
    }

    function test_eighteenDecimalTokens() public {
        DecimalsToken token = new DecimalsToken(18);
        token.mint(payer, 1e24);
        vm.startPrank(payer);
        token.approve(address(vault), type(uint256).max);
        uint256 id = vault.open(payee, IERC20(address(token)), 3, operator, 0, 0, 1e18);
        vm.stopPrank();
        vm.warp(T0 + 7);
        assertEq(vault.totalDebt(id), 21, "no scaling at 18 decimals");
    }

    function test_batchWithdrawAggregatesPerPayee() public {
        address other = address(0x0DD);
        uint256 a = openStream(ONE_USDC_PER_SEC, 100e6);
        uint256 b = openStream(2 * ONE_USDC_PER_SEC, 100e6);
        vm.prank(payer);
        uint256 c = vault.open(other, IERC20(address(usdc)), ONE_USDC_PER_SEC, operator, 0, 0, 100e6);
        vm.warp(T0 + 10);
        uint256[] memory ids = new uint256[](3);
        (ids[0], ids[1], ids[2]) = (a, b, c);
        vm.prank(operator);
        uint256 total = vault.withdrawBatch(ids);
        assertEq(total, 40e6, "10 + 20 + 10");
        assertEq(usdc.balanceOf(payee), 30e6, "payee's two streams");
        assertEq(usdc.balanceOf(other), 10e6, "other payee");
        vm.warp(T0 + 11);
        (ids[0], ids[1], ids[2]) = (a, c, b);
        vm.prank(stranger);
        assertEq(vault.withdrawBatch(ids), 4e6, "interleaved payees: still each paid its own");
        assertEq(usdc.balanceOf(payee), 33e6, "payee");
        assertEq(usdc.balanceOf(other), 11e6, "other payee");
        assertEq(usdc.balanceOf(stranger), 0, "the caller got nothing");
    }

    /// One `BatchWithdrawn` lists exactly the streams paid, as `id << 128 | amount`, in call
    /// order; streams of two tokens in one batch are each paid in their own token and scale.
    function test_batchWithdrawLogsOnlyWhatItPaid() public {
        DecimalsToken dai = new DecimalsToken(18);
        dai.mint(payer, 1e24);
        vm.prank(payer);
        dai.approve(address(vault), type(uint256).max);
        uint256 a = openStream(ONE_USDC_PER_SEC, 100e6);
        uint256 dry = openStream(ONE_USDC_PER_SEC, 0);
        vm.prank(payer);
        uint256 d = vault.open(payee, IERC20(address(dai)), 3e18, operator, 0, 0, 1e24);
        assertEq(vault.tokenIds(IERC20(address(usdc))), 1, "the first token registered");
        assertEq(vault.tokenIds(IERC20(address(dai))), 2, "the second");
        assertEq(address(vault.tokenInfo(2).token), address(dai), "the second token's address");
        assertEq(vault.tokenInfo(1).scale, 1e12, "USDC's scale");
        assertEq(vault.tokenInfo(2).scale, 1, "no scaling at 18 decimals");
        vm.warp(T0 + 10);
        uint256[] memory ids = new uint256[](3);
        (ids[0], ids[1], ids[2]) = (a, dry, d);
        uint256[] memory paid = new uint256[](2);
        paid[0] = a << 128 | 10e6;
        paid[1] = d << 128 | 30e18;
        vm.expectEmit(address(vault));
        emit StreamVault.BatchWithdrawn(paid);
        vm.prank(stranger);
        assertEq(vault.withdrawBatch(ids), 10e6 + 30e18, "USDC and DAI, each in its units");
        assertEq(usdc.balanceOf(payee), 10e6, "USDC paid");
        assertEq(dai.balanceOf(payee), 30e18, "DAI paid");
        assertEq(vault.getStream(d).token, address(dai), "the view shows the token");
        assertEq(vault.getStream(d).decimals, 18, "and its decimals");

        vm.recordLogs();
        vault.withdrawBatch(ids);
        assertEq(vm.getRecordedLogs().length, 0, "nothing accrued since: nothing logged");
        ids[1] = 999;
        vm.expectRevert(abi.encodeWithSelector(StreamVault.UnknownStream.selector, 999));
        vault.withdrawBatch(ids);
    }

    /// The debt is exactly rate x elapsed, descaled and rounded down, for any rate and duration.
    function testFuzz_accrualIsExact(uint80 rate, uint32 elapsed) public {
        vm.assume(rate != 0);
        uint256 id = openStream(rate, 0);
        vm.warp(T0 + elapsed);
        assertEq(vault.totalDebtScaled(id), uint256(rate) * elapsed, "scaled debt");
        assertEq(vault.totalDebt(id), uint256(rate) * elapsed / 1e12, "debt in base units, rounded down");
    }

    /// Withdrawing at arbitrary moments never loses or creates a base unit: what the payee got
    /// plus what is still owed equals the rounded-down total accrued.
    function testFuzz_withdrawalsLoseNoDust(uint64 rate, uint16[6] calldata gaps) public {
        vm.assume(rate != 0);
        uint256 id = openStream(rate, 1_000_000e6);
        uint256 t = T0;
        for (uint256 i; i < gaps.length; ++i) {
            t += gaps[i];
            vm.warp(t);
            uint256 owed = vault.coveredDebt(id);
            if (owed != 0) {
                vm.prank(payee);
                vault.withdraw(id, uint128(owed));
            }
        }
        uint256 accrued = uint256(rate) * (t - T0) / 1e12;
        assertEq(usdc.balanceOf(payee) + vault.totalDebt(id), accrued, "paid + owed = accrued");
    }
}

/// @notice `openFor`: a payer with tokens and no ETH signs the terms and a permit; anyone sends.
contract StreamVaultOpenForTest is StreamVaultFixture {
    uint256 internal constant CUSTOMER_KEY = 0xC0FFEE;
    address internal customer;
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    function setUp() public {
        _deployFunded();
        customer = vm.addr(CUSTOMER_KEY);
        usdc.mint(customer, 1_000e6);
        // USDC is registered by an earlier stream, as on any vault in use (the first stream in
        // a token pays for its registry entry).
        openStream(ONE_USDC_PER_SEC, 0);
    }

    function _terms(uint128 amount, uint256 nonce) internal view returns (StreamVault.OpenTerms memory) {
        return StreamVault.OpenTerms({
            payee: payee,
            token: IERC20(address(usdc)),
            ratePerSecond: ONE_USDC_PER_SEC,
            operator: operator,
            maxRate: 0,
            maxTotal: 0,
            amount: amount,
            nonce: nonce,
            deadline: T0 + 1 hours
        });
    }

    function _sign(uint256 key, StreamVault.OpenTerms memory terms) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, vault.openTermsDigest(terms));
        return abi.encodePacked(r, s, v);
    }

    function _permit(uint256 key, uint256 value, uint256 deadline) internal view returns (StreamVault.Permit memory) {
        address owner = vm.addr(key);
        bytes32 structHash =
            keccak256(abi.encode(PERMIT_TYPEHASH, owner, address(vault), value, usdc.nonces(owner), deadline));
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return StreamVault.Permit(v, r, s);
    }

    function test_aRelayerOpensOnSignedTermsAndPermit() public {
        StreamVault.OpenTerms memory terms = _terms(100e6, 0);
        StreamVault.Permit memory permit = _permit(CUSTOMER_KEY, 100e6, terms.deadline);
        bytes memory signature = _sign(CUSTOMER_KEY, terms);
        vm.prank(stranger);
        uint256 g = gasleft();
        uint256 id = vault.openFor(customer, terms, signature, permit);
        emit log_named_uint("openFor with permit and deposit", g - gasleft());
        StreamVault.StreamView memory s = vault.getStream(id);
        assertEq(s.payer, customer, "the customer pays");
        assertEq(s.balance, 100e6, "deposit pulled by permit");
        assertEq(usdc.balanceOf(customer), 900e6, "from the customer");
        assertEq(vault.nonces(customer), 1, "nonce used");
        vm.warp(T0 + 10);
        assertEq(vault.totalDebt(id), 10e6, "accrues");
        vm.prank(customer);
        vault.pause(id); // the customer keeps every payer right
    }

    function test_termsCannotBeReplayedTamperedOrLate() public {
        StreamVault.OpenTerms memory terms = _terms(100e6, 0);
        bytes memory signature = _sign(CUSTOMER_KEY, terms);
        StreamVault.Permit memory permit = _permit(CUSTOMER_KEY, 100e6, terms.deadline);
        vault.openFor(customer, terms, signature, permit);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.WrongNonce.selector, 0, 1));
        vault.openFor(customer, terms, signature, permit);

        StreamVault.OpenTerms memory next = _terms(100e6, 1);
        bytes memory nextSignature = _sign(CUSTOMER_KEY, next);
        next.ratePerSecond = 2 * ONE_USDC_PER_SEC;
        vm.expectRevert(abi.encodeWithSelector(StreamVault.BadTermsSignature.selector, customer));
        vault.openFor(customer, next, nextSignature, StreamVault.Permit(0, 0, 0));

        next = _terms(100e6, 1);
        bytes memory strangers = _sign(0xBAD, next);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.BadTermsSignature.selector, customer));
        vault.openFor(customer, next, strangers, StreamVault.Permit(0, 0, 0));

        vm.warp(next.deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(StreamVault.TermsExpired.selector, next.deadline));
        vault.openFor(customer, next, nextSignature, StreamVault.Permit(0, 0, 0));
    }

    function test_aFrontRunPermitDoesNotBlockTheOpen() public {
        StreamVault.OpenTerms memory terms = _terms(100e6, 0);
        StreamVault.Permit memory permit = _permit(CUSTOMER_KEY, 100e6, terms.deadline);
        // Someone submits the permit first: the allowance is set, the permit's nonce spent.
        usdc.permit(customer, address(vault), 100e6, terms.deadline, permit.v, permit.r, permit.s);
        uint256 id = vault.openFor(customer, terms, _sign(CUSTOMER_KEY, terms), permit);
        assertEq(vault.getStream(id).balance, 100e6, "opened all the same");
    }

    function test_withoutPermitOrAllowanceNothingMoves() public {
        StreamVault.OpenTerms memory terms = _terms(100e6, 0);
        bytes memory signature = _sign(CUSTOMER_KEY, terms);
        vm.expectRevert();
        vault.openFor(customer, terms, signature, StreamVault.Permit(0, 0, 0));
        assertEq(vault.nonces(customer), 0, "the failed open consumed nothing");
        assertEq(usdc.balanceOf(customer), 1_000e6, "nothing moved");
    }
}
