//! Gas estimation against real bundles: estimate in revm (stub signature), sign, bundle on Anvil,
//! and compare with what the EntryPoint charged. ERC-7769's bar, made strict: the op succeeds,
//! the bundle costs no more than the op paid for, and the estimate's total is within 5% above
//! the gas actually used.

use alloy::{
    primitives::{Address, Bytes, U256},
    providers::Provider,
    rpc::types::state::StateOverridesBuilder,
    signers::{Signer, local::PrivateKeySigner},
    sol_types::SolValue,
};
use settled_contracts::{
    EIP7702_INIT_CODE_MARKER, EntryPointVersion, MockUSDC, PackedUserOperation,
};
use settled_sim::{GasEstimate, SimError, SimOverrides};
use settled_tests::{TestChain, TestResult, unestimated_op, usdc_transfer, user_operation_events};

const ETH: u128 = 1_000_000_000_000_000_000;

struct Mined {
    estimate: GasEstimate,
    actual_gas_used: u64,
    bundle_gas_used: u64,
}

impl Mined {
    fn total_estimate(&self) -> u64 {
        let e = &self.estimate;
        e.pre_verification_gas
            + e.verification_gas_limit
            + e.call_gas_limit
            + e.paymaster_verification_gas_limit.unwrap_or(0)
            + e.paymaster_post_op_gas_limit.unwrap_or(0)
    }

    /// The estimate covered the op, within 5% above what it used; the bundle cost no more than
    /// the op paid for (preVerificationGas covered the unmetered gas).
    fn check(&self, label: &str) {
        let total = self.total_estimate();
        eprintln!(
            "{label}: estimate {:?}; total {total}, actualGasUsed {}, bundle gasUsed {} \
             (total/actual {:.4}, actual/bundle {:.4})",
            self.estimate,
            self.actual_gas_used,
            self.bundle_gas_used,
            total as f64 / self.actual_gas_used as f64,
            self.actual_gas_used as f64 / self.bundle_gas_used as f64,
        );
        assert!(total >= self.actual_gas_used, "{label}: estimate below the gas used");
        assert!(
            total * 100 <= self.actual_gas_used * 105,
            "{label}: estimate {total} more than 5% above {}",
            self.actual_gas_used
        );
        assert!(
            self.bundle_gas_used <= self.actual_gas_used,
            "{label}: the bundle used {} but the op paid for {}",
            self.bundle_gas_used,
            self.actual_gas_used
        );
    }
}

/// Estimates `op` in revm, applies the estimate, has `sign` sign it, bundles it, and reports.
async fn estimate_and_mine(
    chain: &TestChain,
    version: EntryPointVersion,
    op: PackedUserOperation,
    overrides: SimOverrides,
    sign: impl AsyncFnOnce(&PackedUserOperation) -> TestResult<Bytes>,
) -> TestResult<Mined> {
    let authorizations = overrides.eip7702_auth.clone().into_iter().collect();
    let estimated = op.clone();
    let estimate = chain
        .in_revm(move |simulator, state, context| {
            simulator.estimate_gas(state, context, version, &estimated, &overrides)
        })
        .await??;
    let mut op = estimate.apply(&op);
    op.signature = sign(&op).await?;
    let receipt = chain.handle_ops(version, vec![op], chain.account(1)?, authorizations).await?;
    assert!(receipt.status(), "handleOps reverted");
    let [event] = &user_operation_events(&receipt)[..] else {
        return Err("expected one UserOperationEvent".into());
    };
    assert!(event.success, "{version:?}: the op's call failed with the estimated gas");
    Ok(Mined {
        estimate,
        actual_gas_used: event.actualGasUsed.to(),
        bundle_gas_used: receipt.gas_used,
    })
}

/// A new SimpleAccount, paying for itself, is created and transfers USDC; then a second op from
/// the deployed account: both estimated in revm and mined within bounds, for both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_cover_mined_ops_within_five_percent() -> TestResult {
    let chain = TestChain::spawn().await?;
    let usdc = chain.deployment().usdc;
    let recipient = Address::repeat_byte(0x77);
    for version in EntryPointVersion::ALL {
        let owner = PrivateKeySigner::random();
        let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
        // The account pays its own prefund (ETH at its counterfactual address) and holds USDC.
        let provider = chain.provider();
        provider
            .send_transaction(
                alloy::rpc::types::TransactionRequest::default().to(sender).value(U256::from(ETH)),
            )
            .await?
            .get_receipt()
            .await?;
        MockUSDC::new(usdc, provider)
            .mint(sender, U256::from(1_000_000_000u64))
            .send()
            .await?
            .get_receipt()
            .await?;

        for (nonce, init_code) in [(0, init_code), (1, Bytes::new())] {
            let call = usdc_transfer(version, usdc, recipient, 1_000_000);
            let op = unestimated_op(sender, nonce, init_code.clone(), call);
            let mined =
                estimate_and_mine(&chain, version, op, SimOverrides::default(), async |op| {
                    chain.sign_op(version, &owner, op).await
                })
                .await?;
            let label =
                format!("{version:?} {}", if nonce == 0 { "create+transfer" } else { "transfer" });
            mined.check(&label);
        }
        let balance = MockUSDC::new(usdc, provider).balanceOf(recipient).call().await?;
        assert!(balance > U256::ZERO);
    }
    Ok(())
}

/// A v0.8 op from an EOA delegating to Simple7702Account through `eip7702Auth`: estimated with
/// the delegation applied in revm (as if signed), validated with the real signed authorization,
/// and mined in a type-4 bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eip7702_op_is_estimated_validated_and_mined() -> TestResult {
    let chain = TestChain::spawn().await?;
    let usdc = chain.deployment().usdc;
    let delegate = chain.deployment().simple_7702_account_v08;
    let eoa = PrivateKeySigner::random();
    let provider = chain.provider();
    provider
        .send_transaction(
            alloy::rpc::types::TransactionRequest::default()
                .to(eoa.address())
                .value(U256::from(ETH)),
        )
        .await?
        .get_receipt()
        .await?;
    MockUSDC::new(usdc, provider)
        .mint(eoa.address(), U256::from(1_000_000_000u64))
        .send()
        .await?
        .get_receipt()
        .await?;

    let authorization = chain.authorize(&eoa, delegate).await?;
    let call = usdc_transfer(EntryPointVersion::V08, usdc, Address::repeat_byte(0x78), 5);
    let op = unestimated_op(eoa.address(), 0, EIP7702_INIT_CODE_MARKER.to_vec().into(), call);

    // Without the authorization the sender has no code: the EntryPoint cannot hash the op.
    let bare = op.clone();
    let without = chain
        .in_revm(move |simulator, state, context| {
            simulator.estimate_gas(
                state,
                context,
                EntryPointVersion::V08,
                &bare,
                SimOverrides::none(),
            )
        })
        .await?;
    assert!(without.is_err(), "estimated an EIP-7702 op with no delegation: {without:?}");

    // Validation checks the authorization's signature: someone else's is refused.
    let forged = chain.authorize(&PrivateKeySigner::random(), delegate).await?;
    let forged_op = op.clone();
    let refused = chain
        .in_revm(move |simulator, state, context| {
            simulator.simulate_validation(
                state,
                context,
                EntryPointVersion::V08,
                &forged_op,
                &SimOverrides::with_authorization(forged),
            )
        })
        .await?;
    assert!(matches!(refused, Err(SimError::InvalidAuthorization(_))), "{refused:?}");

    let overrides = SimOverrides::with_authorization(authorization.clone());
    let mined =
        estimate_and_mine(&chain, EntryPointVersion::V08, op.clone(), overrides, async |op| {
            let hash = chain.op_hash_delegated(op, delegate).await?;
            // Simple7702Account checks the EOA's own signature of the (EIP-712) op hash.
            let signature = eoa.sign_hash(&hash).await?;
            // The same signed op passes full validation in revm with the real authorization.
            let mut signed = op.clone();
            signed.signature = signature.as_bytes().to_vec().into();
            let validated = signed.clone();
            let authorization = authorization.clone();
            let outcome = chain
                .in_revm(move |simulator, state, context| {
                    simulator.simulate_validation(
                        state,
                        context,
                        EntryPointVersion::V08,
                        &validated,
                        &SimOverrides::with_authorization(authorization),
                    )
                })
                .await??;
            assert!(!outcome.account.signature_failed);
            Ok(signed.signature)
        })
        .await?;
    mined.check("V08 eip7702 transfer");
    let code = provider.get_code_at(eoa.address()).await?;
    assert_eq!(&code[..3], &[0xef, 0x01, 0x00], "the EOA is delegated on chain");
    Ok(())
}

/// Failures are typed: a reverting call is `ExecutionReverted` with the revert data, a state
/// override is applied, and a bad override is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimation_errors_and_state_overrides() -> TestResult {
    let chain = TestChain::spawn().await?;
    let usdc = chain.deployment().usdc;
    let version = EntryPointVersion::V07;
    let owner = PrivateKeySigner::random();
    let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
    // No USDC: the transfer reverts (ERC20InsufficientBalance), the estimate says so.
    let call = usdc_transfer(version, usdc, Address::repeat_byte(0x79), 1_000);
    let op = unestimated_op(sender, 0, init_code, call);
    let reverting = op.clone();
    let result = chain
        .in_revm(move |simulator, state, context| {
            simulator.estimate_gas(state, context, version, &reverting, SimOverrides::none())
        })
        .await?;
    let Err(SimError::ExecutionReverted { reason }) = result else {
        return Err(format!("expected ExecutionReverted, got {result:?}").into());
    };
    // OpenZeppelin 5: ERC20InsufficientBalance(address,uint256,uint256) = 0xe450d38c.
    assert_eq!(&reason[..4], &[0xe4, 0x50, 0xd3, 0x8c], "{reason}");

    // The same op with the sender's USDC balance overridden (OpenZeppelin 5 ERC20: balances
    // mapping at slot 0) estimates fine.
    let slot = alloy::primitives::keccak256((sender, U256::ZERO).abi_encode_sequence());
    let overrides = StateOverridesBuilder::default()
        .with_state_diff(usdc, [(slot, alloy::primitives::B256::from(U256::from(1_000_000u64)))])
        .build();
    let funded = op.clone();
    let estimate = chain
        .in_revm(move |simulator, state, context| {
            simulator.estimate_gas(
                state,
                context,
                version,
                &funded,
                &SimOverrides::with_state(overrides),
            )
        })
        .await??;
    assert!(estimate.call_gas_limit > settled_sim::MIN_CALL_GAS_LIMIT);

    // Overriding the EntryPoint itself is refused.
    let bad = StateOverridesBuilder::default()
        .with_code(version.canonical_address(), Bytes::from_static(&[0x00]))
        .build();
    let refused_op = op.clone();
    let refused = chain
        .in_revm(move |simulator, state, context| {
            simulator.estimate_gas(
                state,
                context,
                version,
                &refused_op,
                &SimOverrides::with_state(bad),
            )
        })
        .await?;
    assert!(matches!(refused, Err(SimError::InvalidOverride(_))), "{refused:?}");
    Ok(())
}

/// A sponsored op (a paymaster that returns a context, so postOp runs): a brand-new account with
/// no ETH is created and transfers USDC; all four limits are estimated, and the bundle is within
/// bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sponsored_op_estimates_paymaster_limits() -> TestResult {
    use settled_tests::testing_contracts::{RuleBreakingPaymaster, RuleTarget, breaks};

    let chain = TestChain::spawn().await?;
    let provider = chain.provider().clone();
    let usdc = chain.deployment().usdc;
    for version in EntryPointVersion::ALL {
        let target = RuleTarget::deploy(&provider).await?;
        let paymaster = RuleBreakingPaymaster::deploy(
            &provider,
            version.canonical_address(),
            *target.address(),
        )
        .await?;
        paymaster.deposit().value(U256::from(ETH)).send().await?.get_receipt().await?;
        paymaster.setBreaks(U256::from(breaks::CONTEXT)).send().await?.get_receipt().await?;

        let owner = PrivateKeySigner::random();
        let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
        MockUSDC::new(usdc, &provider)
            .mint(sender, U256::from(1_000_000u64))
            .send()
            .await?
            .get_receipt()
            .await?;
        let call = usdc_transfer(version, usdc, Address::repeat_byte(0x7a), 10);
        let mut op = unestimated_op(sender, 0, init_code, call);
        op.paymasterAndData = paymaster.address().to_vec().into();
        op.set_paymaster_gas_limits(0, 0);

        let mined = estimate_and_mine(&chain, version, op, SimOverrides::default(), async |op| {
            chain.sign_op(version, &owner, op).await
        })
        .await?;
        assert!(mined.estimate.paymaster_verification_gas_limit.is_some_and(|gas| gas > 0));
        assert!(mined.estimate.paymaster_post_op_gas_limit.is_some_and(|gas| gas > 0));
        mined.check(&format!("{version:?} sponsored create+transfer"));
        assert_eq!(provider.get_balance(sender).await?, U256::ZERO, "the account paid nothing");
    }
    Ok(())
}
