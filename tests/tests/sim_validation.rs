//! `simulateValidation` in revm against Anvil's own `eth_call` of the same call with the same
//! code override: for valid and rejected ops, both EntryPoint versions, the results are equal
//! byte for byte.

use alloy::{
    eips::BlockId,
    primitives::{Bytes, U256},
    providers::Provider,
    signers::local::PrivateKeySigner,
};
use settled_contracts::{EntryPointVersion, PackedUserOperation, v07};
use settled_sim::{BlockContext, BlockState, SimError, SimOverrides, Simulator};
use settled_tests::{TestChain, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_ops_match_anvil_byte_for_byte() -> TestResult {
    let chain = TestChain::spawn().await?;
    for version in EntryPointVersion::ALL {
        let owner = PrivateKeySigner::random();
        let op = chain.account_creation_op(version, &owner, 10u128.pow(18)).await?;

        let revm = chain.simulate_in_revm(version, &op).await??;
        let anvil = chain
            .simulate_in_anvil(version, &op)
            .await?
            .map_err(|e| format!("{version:?}: {e}"))?;
        assert_eq!(revm.raw, anvil, "{version:?}: revm and anvil disagree");

        assert!(!revm.account.signature_failed, "{version:?}: signature should verify");
        assert_eq!(revm.paymaster.aggregator, None);
        assert!(revm.prefund > U256::ZERO && revm.pre_op_gas > U256::from(60_000));
        assert_eq!(revm.factory_info.stake, U256::ZERO, "the factory is unstaked");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_is_reported_not_reverted() -> TestResult {
    let chain = TestChain::spawn().await?;
    for version in EntryPointVersion::ALL {
        let owner = PrivateKeySigner::random();
        let mut op = chain.account_creation_op(version, &owner, 10u128.pow(18)).await?;
        // Signed by somebody else: SimpleAccount returns SIG_VALIDATION_FAILED.
        op.signature = chain.sign_op(version, &PrivateKeySigner::random(), &op).await?;

        let revm = chain.simulate_in_revm(version, &op).await??;
        let anvil = chain
            .simulate_in_anvil(version, &op)
            .await?
            .map_err(|e| format!("{version:?}: {e}"))?;
        assert_eq!(revm.raw, anvil);
        assert!(revm.account.signature_failed, "{version:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfunded_op_is_rejected_with_the_entry_point_reason() -> TestResult {
    let chain = TestChain::spawn().await?;
    for version in EntryPointVersion::ALL {
        let owner = PrivateKeySigner::random();
        let op = chain.account_creation_op(version, &owner, 0).await?;

        let revm = chain.simulate_in_revm(version, &op).await?;
        let Err(SimError::Rejected { reason, .. }) = revm else {
            return Err(format!("{version:?}: expected a rejection, got {revm:?}").into());
        };
        assert_eq!(reason, "AA21 didn't pay prefund", "{version:?}");

        let anvil = chain.simulate_in_anvil(version, &op).await?;
        assert!(anvil.is_err(), "{version:?}: anvil accepted an unfunded op");
    }
    Ok(())
}

/// Bad input gets a typed error (or a normal result), never a panic or an unbounded run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ops_get_typed_errors() -> TestResult {
    let chain = TestChain::spawn().await?;
    for version in EntryPointVersion::ALL {
        let owner = PrivateKeySigner::random();
        let good = chain.account_creation_op(version, &owner, 10u128.pow(18)).await?;

        // Absurd gas limits: the EntryPoint's own overflow check.
        let mut absurd = good.clone();
        absurd.accountGasLimits = settled_contracts::pack_u128s(u128::MAX, u128::MAX);
        match chain.simulate_in_revm(version, &absurd).await? {
            Err(SimError::Rejected { reason, .. }) => {
                assert!(reason.starts_with("AA94"), "{reason}")
            }
            other => return Err(format!("{version:?}: absurd gas limits gave {other:?}").into()),
        }

        // initCode naming a factory without code.
        let mut no_factory = good.clone();
        let mut init_code = vec![0x11u8; 20];
        init_code.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        no_factory.initCode = init_code.into();
        match chain.simulate_in_revm(version, &no_factory).await? {
            Err(SimError::Rejected { reason, .. }) => {
                assert!(reason.starts_with("AA1"), "{reason}")
            }
            other => return Err(format!("{version:?}: codeless factory gave {other:?}").into()),
        }

        // 100 KB of callData: validated normally (SimpleAccount ignores it), gas-bounded.
        let mut huge = good.clone();
        huge.callData = vec![0xab; 100_000].into();
        huge.signature = chain.sign_op(version, &owner, &huge).await?;
        let outcome = chain.simulate_in_revm(version, &huge).await??;
        assert!(!outcome.account.signature_failed);
    }

    // A chain without the EntryPoints.
    let bare =
        tokio::task::spawn_blocking(|| settled_contracts::LocalAnvil::spawn(&Default::default()))
            .await??;
    let provider =
        alloy::providers::ProviderBuilder::new().connect_http(bare.endpoint().parse()?).erased();
    let block = BlockId::number(provider.get_block_number().await?);
    let context = BlockContext::fetch(&provider, block).await?;
    let state = BlockState::new(provider, block, tokio::runtime::Handle::current());
    let op = PackedUserOperation {
        sender: alloy::primitives::Address::repeat_byte(1),
        nonce: U256::ZERO,
        initCode: Bytes::new(),
        callData: Bytes::new(),
        accountGasLimits: Default::default(),
        preVerificationGas: U256::ZERO,
        gasFees: Default::default(),
        paymasterAndData: Bytes::new(),
        signature: Bytes::new(),
    };
    let result = tokio::task::spawn_blocking(move || {
        Simulator::default().simulate_validation(
            &state,
            &context,
            EntryPointVersion::V08,
            &op,
            SimOverrides::none(),
        )
    })
    .await?;
    assert!(matches!(result, Err(SimError::NoEntryPoint(_))), "{result:?}");
    Ok(())
}

/// A new block's view keeps what provably did not change: slots whose account has the same
/// storage root are reused, not fetched again; a changed account is read afresh, and the result
/// still equals Anvil's own `eth_call`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successor_views_reuse_unchanged_state() -> TestResult {
    use alloy::providers::ext::AnvilApi;

    let chain = TestChain::spawn().await?;
    let version = EntryPointVersion::V07;
    let owner = PrivateKeySigner::random();
    let op = chain.account_creation_op(version, &owner, 10u128.pow(18)).await?;
    let provider = chain.provider().clone();

    let validate = async |state: BlockState| -> TestResult<(Bytes, settled_sim::ForkStats)> {
        let block = state.block();
        let context = BlockContext::fetch(&provider, block).await?;
        let op = op.clone();
        let (outcome, state) = tokio::task::spawn_blocking(move || {
            let outcome = Simulator::default().simulate_validation(
                &state,
                &context,
                version,
                &op,
                SimOverrides::none(),
            );
            (outcome, state)
        })
        .await?;
        Ok((outcome?.raw, state.stats()))
    };

    let first_block = BlockId::number(provider.get_block_number().await?);
    let first = BlockState::new(provider.clone(), first_block, tokio::runtime::Handle::current());
    let (raw, cold) = validate(first.clone()).await?;
    assert!(cold.slots_fetched > 0 && cold.accounts_fetched > 0, "{cold:?}");

    // An empty block: every storage root is unchanged, no slot is fetched again.
    provider.anvil_mine(Some(1), None).await?;
    let next = first.successor(BlockId::number(provider.get_block_number().await?));
    let (same, warm) = validate(next.clone()).await?;
    assert_eq!(same, raw);
    assert_eq!(warm.slots_fetched, 0, "{warm:?}");
    assert!(warm.slots_reused >= cold.slots_fetched, "{warm:?} vs {cold:?}");

    // A deposit changes the EntryPoint's storage: its slots are read afresh, and the prefund
    // the op still owes changes with it — exactly as Anvil says.
    v07::IEntryPoint::new(version.canonical_address(), &provider)
        .depositTo(op.sender)
        .value(U256::from(10u128.pow(17)))
        .send()
        .await?
        .get_receipt()
        .await?;
    let changed_block = BlockId::number(provider.get_block_number().await?);
    let changed = next.successor(changed_block);
    let (after, stats) = validate(changed).await?;
    assert!(stats.slots_fetched > 0, "{stats:?}");
    let anvil = chain.simulate_in_anvil(version, &op).await?.map_err(|e| e.to_string())?;
    assert_eq!(after, anvil, "the reused view disagrees with Anvil after a change");
    Ok(())
}
