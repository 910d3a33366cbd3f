//! ERC-7562 rules on a real chain: an account and a paymaster that break one rule at a time
//! (`contracts/sol/testing/RuleBreakers.sol`); revm's tracer must report exactly that rule id,
//! with the right entity, for both EntryPoint versions — and accept the allowed twins.

use alloy::{
    primitives::{Address, Bytes, U256},
    providers::Provider,
};
use settled_contracts::{EntryPointVersion, PackedUserOperation, pack_u128s, v07};
use settled_sim::{Entity, SimError};
use settled_tests::{
    TestChain, TestResult,
    testing_contracts::{RuleBreakingAccount, RuleBreakingPaymaster, RuleTarget, breaks},
};

const ETH: u128 = 1_000_000_000_000_000_000;

struct Setup {
    chain: TestChain,
    account: Address,
    paymaster: Address,
}

async fn setup(version: EntryPointVersion) -> TestResult<Setup> {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider().clone();
    let provider = &provider;
    let entry_point = version.canonical_address();
    let target = RuleTarget::deploy(provider).await?;
    let account = RuleBreakingAccount::deploy(provider, entry_point, *target.address()).await?;
    let paymaster = RuleBreakingPaymaster::deploy(provider, entry_point, *target.address()).await?;
    let ep = v07::IEntryPoint::new(entry_point, provider);
    ep.depositTo(*account.address()).value(U256::from(ETH)).send().await?.get_receipt().await?;
    paymaster.deposit().value(U256::from(ETH)).send().await?.get_receipt().await?;
    // Some ETH in the account, so CALL_WITH_VALUE has something to send.
    let fund = alloy::rpc::types::TransactionRequest::default()
        .to(*account.address())
        .value(U256::from(ETH));
    provider.send_transaction(fund).await?.get_receipt().await?;
    Ok(Setup { chain, account: *account.address(), paymaster: *paymaster.address() })
}

impl Setup {
    async fn op(
        &self,
        version: EntryPointVersion,
        with_paymaster: bool,
    ) -> TestResult<PackedUserOperation> {
        let nonce = v07::IEntryPoint::new(version.canonical_address(), self.chain.provider())
            .getNonce(self.account, alloy::primitives::aliases::U192::ZERO)
            .call()
            .await?;
        let paymaster_and_data = if with_paymaster {
            let mut data = self.paymaster.to_vec();
            data.extend_from_slice(&200_000u128.to_be_bytes()); // paymasterVerificationGasLimit
            data.extend_from_slice(&50_000u128.to_be_bytes()); // paymasterPostOpGasLimit
            Bytes::from(data)
        } else {
            Bytes::new()
        };
        Ok(PackedUserOperation {
            sender: self.account,
            nonce,
            initCode: Bytes::new(),
            callData: Bytes::new(),
            accountGasLimits: pack_u128s(500_000, 50_000),
            preVerificationGas: U256::from(50_000),
            gasFees: pack_u128s(1_000_000_000, 20_000_000_000),
            paymasterAndData: paymaster_and_data,
            signature: Bytes::new(),
        })
    }

    async fn simulate(
        &self,
        version: EntryPointVersion,
        op: PackedUserOperation,
    ) -> TestResult<Result<settled_sim::ValidationOutcome, SimError>> {
        self.chain.simulate_in_revm(version, &op).await
    }

    /// Rule ids reported (empty: validation passed), all attributed to `entity`.
    async fn rules(
        &self,
        version: EntryPointVersion,
        with_paymaster: bool,
        entity: Entity,
    ) -> TestResult<Vec<&'static str>> {
        let op = self.op(version, with_paymaster).await?;
        match self.simulate(version, op).await? {
            Ok(_) => Ok(Vec::new()),
            Err(SimError::RuleViolations(violations)) => {
                for v in &violations {
                    assert_eq!(v.entity, entity, "{v}");
                }
                Ok(violations.iter().map(|v| v.rule.id()).collect())
            }
            Err(other) => Err(format!("expected rule violations, got: {other}").into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_rules_report_exact_ids() -> TestResult {
    for version in EntryPointVersion::ALL {
        let setup = setup(version).await?;
        let account = RuleBreakingAccount::new(setup.account, setup.chain.provider());
        for (what, expected) in [
            (breaks::NONE, vec![]),
            (breaks::TIMESTAMP, vec!["OP-011"]),
            (breaks::TWO_BLOCKED, vec!["OP-011", "OP-011"]),
            (breaks::GAS, vec!["OP-012"]),
            (breaks::SELFBALANCE, vec!["OP-080"]),
            (breaks::CALL_WITH_VALUE, vec!["OP-061"]),
            (breaks::EXTCODESIZE_EMPTY, vec!["OP-041"]),
            (breaks::FOREIGN_STORAGE, vec!["STO-021"]),
            (breaks::ASSOCIATED_STORAGE, vec![]),
            (breaks::ENTRY_POINT_CALL, vec!["OP-054"]),
            // The created contract's own storage is exempt: only the CREATE is at fault.
            (breaks::CREATE, vec!["OP-011"]),
            (breaks::OUT_OF_GAS, vec!["OP-020"]),
        ] {
            account.setBreaks(U256::from(what)).send().await?.get_receipt().await?;
            let found = setup.rules(version, false, Entity::Account).await?;
            assert_eq!(found, expected, "{version:?}: account breaks #{what}");
        }
    }
    Ok(())
}

/// Validation code picks KECCAK256's memory offset; one past 2^64 used to panic the tracer (a
/// crash answered as an internal error). It is the account's revert now, like any out-of-gas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keccak_offset_past_usize_is_the_accounts_failure() -> TestResult {
    let setup = setup(EntryPointVersion::V07).await?;
    let account = RuleBreakingAccount::new(setup.account, setup.chain.provider());
    let what = U256::from(breaks::HUGE_KECCAK_OFFSET);
    account.setBreaks(what).send().await?.get_receipt().await?;
    let op = setup.op(EntryPointVersion::V07, false).await?;
    match setup.simulate(EntryPointVersion::V07, op).await? {
        Err(SimError::Rejected { reason, .. }) => {
            assert!(reason.starts_with("AA23"), "{reason}");
        }
        other => return Err(format!("expected the account's AA23, got {other:?}").into()),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paymaster_rules_depend_on_stake() -> TestResult {
    for version in EntryPointVersion::ALL {
        let setup = setup(version).await?;
        let paymaster = RuleBreakingPaymaster::new(setup.paymaster, setup.chain.provider());
        // The paymaster always reads its own `breaks` slot: STO-031 while unstaked.
        for (what, expected) in [
            (breaks::OWN_STORAGE, vec!["STO-031"]),
            // EREP-050 is the v0.8 mempool's; the v0.7 mempool lets the context through.
            (
                breaks::CONTEXT,
                match version {
                    EntryPointVersion::V07 => vec!["STO-031"],
                    EntryPointVersion::V08 => vec!["STO-031", "EREP-050"],
                },
            ),
            (breaks::TIMESTAMP, vec!["OP-011", "STO-031"]),
            (breaks::SELFBALANCE, vec!["OP-080", "STO-031"]),
        ] {
            paymaster.setBreaks(U256::from(what)).send().await?.get_receipt().await?;
            let found = setup.rules(version, true, Entity::Paymaster).await?;
            assert_eq!(found, expected, "{version:?}: unstaked paymaster breaks #{what}");
        }

        paymaster.stake(86_400).value(U256::from(ETH)).send().await?.get_receipt().await?;
        for (what, expected) in [
            (breaks::OWN_STORAGE, vec![]),
            (breaks::CONTEXT, vec![]),
            (breaks::SELFBALANCE, vec![]),
            (breaks::FOREIGN_STORAGE, vec![]), // STO-033: read-only is fine when staked
            (breaks::TIMESTAMP, vec!["OP-011"]), // staking never allows environment opcodes
        ] {
            paymaster.setBreaks(U256::from(what)).send().await?.get_receipt().await?;
            let found = setup.rules(version, true, Entity::Paymaster).await?;
            assert_eq!(found, expected, "{version:?}: staked paymaster breaks #{what}");
        }
    }
    Ok(())
}

/// COD-010: the code hashes seen by the first validation are re-checked against a later block;
/// replacing the account's code (here with `anvil_setCode`) is detected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_change_between_validations_is_detected() -> TestResult {
    use alloy::{eips::BlockId, providers::ext::AnvilApi};
    use settled_sim::{BlockState, changed_code};

    let version = EntryPointVersion::V07;
    let setup = setup(version).await?;
    let op = setup.op(version, false).await?;
    let outcome = setup.simulate(version, op).await?.map_err(|e| e.to_string())?;
    assert!(outcome.trace.code_hashes.contains_key(&setup.account), "account code not recorded");

    let provider = setup.chain.provider().clone();
    let recheck = |provider: alloy::providers::DynProvider, trace: settled_sim::ValidationTrace| async move {
        let block = BlockId::number(provider.get_block_number().await?);
        let state = BlockState::new(provider, block, tokio::runtime::Handle::current());
        let changed = tokio::task::spawn_blocking(move || changed_code(&state, &trace)).await??;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(changed)
    };
    assert!(
        recheck(provider.clone(), outcome.trace.clone()).await?.is_empty(),
        "nothing changed yet"
    );

    let target_code =
        provider.get_code_at(*RuleTarget::new(Address::ZERO, &provider).address()).await?;
    let other_code = if target_code.is_empty() {
        Bytes::from_static(&[0x60, 0x00, 0x60, 0x00, 0xf3])
    } else {
        target_code
    };
    provider.anvil_set_code(setup.account, other_code).await?;
    provider.anvil_mine(Some(1), None).await?;
    assert_eq!(recheck(provider, outcome.trace).await?, vec![setup.account]);
    Ok(())
}

/// A validation that reads fresh storage slot after slot (each a state fetch from the node) is
/// cut at the simulator's wall-clock bound with a typed error, long before its gas runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_validation_stops_at_the_time_limit() -> TestResult {
    use alloy::eips::BlockId;
    use settled_sim::{BlockContext, BlockState, SimOverrides, SimulationLimits, Simulator};

    let version = EntryPointVersion::V07;
    let setup = setup(version).await?;
    let provider = setup.chain.provider().clone();
    RuleBreakingAccount::new(setup.account, &provider)
        .setBreaks(U256::from(breaks::STORAGE_SWEEP))
        .send()
        .await?
        .get_receipt()
        .await?;
    let mut op = setup.op(version, false).await?;
    // Enough gas for ~12,000 cold SLOADs, i.e. as many round trips to the node.
    op.set_account_gas_limits(25_000_000, 0);
    op.set_fees(1, 1);

    let block = BlockId::number(provider.get_block_number().await?);
    let context = BlockContext::fetch(&provider, block).await?;
    let state = BlockState::new(provider, block, tokio::runtime::Handle::current());
    let limits =
        SimulationLimits { timeout: std::time::Duration::from_millis(100), ..Default::default() };
    let simulator = Simulator::new(limits, Default::default());
    let cut = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        let validation =
            simulator.simulate_validation(&cut, &context, version, &op, SimOverrides::none());
        let execution =
            simulator.simulate_handle_op(&cut, &context, version, &op, SimOverrides::none());
        (validation, execution)
    })
    .await?;
    assert!(matches!(result.0, Err(SimError::Timeout(_))), "validation: {:?}", result.0);
    assert!(matches!(result.1, Err(SimError::Timeout(_))), "handleOp: {:?}", result.1);
    let (_, slots) = state.cached();
    assert!(slots < 10_000, "fetched {slots} slots: the sweep was not cut short");
    Ok(())
}

/// The factory's frame and the account's frame during deployment: a `RuleBreakingFactory`
/// deploys the sender, does one thing in its own frame, and tells the new account what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_rules_and_deployment_exemptions() -> TestResult {
    use settled_tests::testing_contracts::RuleBreakingFactory;

    let chain = TestChain::spawn().await?;
    let provider = chain.provider().clone();
    for version in EntryPointVersion::ALL {
        let entry_point = version.canonical_address();
        let target = RuleTarget::deploy(&provider).await?;
        let factory =
            RuleBreakingFactory::deploy(&provider, entry_point, *target.address()).await?;
        let ep = v07::IEntryPoint::new(entry_point, &provider);
        let mut salt = 0u64;
        // (factory does, account does, factory staked) → (entity, rule ids).
        let mut rules = async |factory_breaks: u64,
                               account_breaks: u64|
               -> TestResult<Vec<(Entity, &'static str)>> {
            salt += 1;
            let sender = factory.getAddress(U256::from(salt)).call().await?;
            ep.depositTo(sender).value(U256::from(ETH)).send().await?.get_receipt().await?;
            let create = RuleBreakingFactory::createAccountCall {
                salt: U256::from(salt),
                factoryBreaks: U256::from(factory_breaks),
                accountBreaks: U256::from(account_breaks),
            };
            let mut init_code = factory.address().to_vec();
            init_code.extend_from_slice(&alloy::sol_types::SolCall::abi_encode(&create));
            let op = PackedUserOperation {
                sender,
                nonce: U256::ZERO,
                initCode: init_code.into(),
                callData: Bytes::new(),
                accountGasLimits: pack_u128s(2_000_000, 50_000),
                preVerificationGas: U256::from(50_000),
                gasFees: pack_u128s(1_000_000_000, 20_000_000_000),
                paymasterAndData: Bytes::new(),
                signature: Bytes::new(),
            };
            match chain.simulate_in_revm(version, &op).await? {
                Ok(_) => Ok(Vec::new()),
                Err(SimError::RuleViolations(found)) => {
                    Ok(found.iter().map(|v| (v.entity, v.rule.id())).collect())
                }
                Err(other) => {
                    Err(format!("{version:?}: expected rule violations, got {other}").into())
                }
            }
        };
        use Entity::{Account, Factory};
        let unstaked = [
            ((breaks::NONE, breaks::NONE), vec![]),
            ((breaks::TIMESTAMP, breaks::NONE), vec![(Factory, "OP-011")]),
            ((breaks::SECOND_CREATE2, breaks::NONE), vec![(Factory, "OP-031")]),
            ((breaks::FOREIGN_STORAGE, breaks::NONE), vec![(Factory, "STO-021")]),
            // OP-032: with a factory, the new account may CREATE.
            ((breaks::NONE, breaks::CREATE), vec![]),
            // STO-022: the sender's associated storage elsewhere, while an unstaked factory deploys.
            ((breaks::NONE, breaks::ASSOCIATED_STORAGE), vec![(Account, "STO-022")]),
        ];
        for ((factory_breaks, account_breaks), expected) in unstaked {
            let found = rules(factory_breaks, account_breaks).await?;
            assert_eq!(
                found, expected,
                "{version:?} unstaked factory: factory #{factory_breaks}, account #{account_breaks}"
            );
        }
        factory.stake(86_400).value(U256::from(ETH)).send().await?.get_receipt().await?;
        let staked = [
            ((breaks::TIMESTAMP, breaks::NONE), vec![(Factory, "OP-011")]),
            // A staked factory may read others' storage (STO-033) and create more (EREP-060) …
            ((breaks::FOREIGN_STORAGE, breaks::NONE), vec![]),
            ((breaks::SECOND_CREATE2, breaks::NONE), vec![]),
            // … and the account it deploys may use its associated storage elsewhere (STO-022).
            ((breaks::NONE, breaks::ASSOCIATED_STORAGE), vec![]),
        ];
        for ((factory_breaks, account_breaks), expected) in staked {
            let found = rules(factory_breaks, account_breaks).await?;
            assert_eq!(
                found, expected,
                "{version:?} staked factory: factory #{factory_breaks}, account #{account_breaks}"
            );
        }
    }
    Ok(())
}

/// AUTH-020: an EIP-7702 delegated account may only be a sender. An EOA delegating to a working
/// paymaster, with its own deposit, is refused as a paymaster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_account_as_paymaster_breaks_auth_020() -> TestResult {
    use alloy::providers::ext::AnvilApi;

    let version = EntryPointVersion::V08;
    let setup = setup(version).await?;
    let provider = setup.chain.provider().clone();
    let eoa = Address::repeat_byte(0x77);
    let designator = [&[0xef, 0x01, 0x00][..], setup.paymaster.as_slice()].concat();
    provider.anvil_set_code(eoa, designator.into()).await?;
    v07::IEntryPoint::new(version.canonical_address(), &provider)
        .depositTo(eoa)
        .value(U256::from(ETH))
        .send()
        .await?
        .get_receipt()
        .await?;
    let mut op = setup.op(version, true).await?;
    let mut paymaster_and_data = op.paymasterAndData.to_vec();
    paymaster_and_data[..20].copy_from_slice(eoa.as_slice());
    op.paymasterAndData = paymaster_and_data.into();
    match setup.simulate(version, op).await? {
        Err(SimError::RuleViolations(violations)) => {
            let auth_020: Vec<_> =
                violations.iter().filter(|v| v.rule.id() == "AUTH-020").collect();
            assert_eq!(auth_020.len(), 1, "{violations:?}");
            assert_eq!((auth_020[0].entity, auth_020[0].address), (Entity::Paymaster, eoa));
        }
        other => return Err(format!("expected AUTH-020, got {other:?}").into()),
    }
    Ok(())
}
