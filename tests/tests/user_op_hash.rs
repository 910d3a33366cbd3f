//! The local `userOpHash` equals what each EntryPoint's `getUserOpHash` returns on chain, for
//! plain ops, ops with a paymaster, and v0.8 EIP-7702 ops (hashed with their delegate).

use alloy::{
    primitives::{Address, Bytes, U256},
    providers::Provider,
    signers::local::PrivateKeySigner,
};
use settled_contracts::{EIP7702_INIT_CODE_MARKER, EntryPointVersion};
use settled_tests::{TestChain, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_hash_equals_the_entry_points() -> TestResult {
    let chain = TestChain::spawn().await?;
    let chain_id = chain.provider().get_chain_id().await?;
    for version in EntryPointVersion::ALL {
        let owner = PrivateKeySigner::random();
        let mut op = chain.account_creation_op(version, &owner, 0).await?;
        assert_eq!(op.hash(version, chain_id, None), chain.op_hash(version, &op).await?);

        op.callData = Bytes::from_static(&[1, 2, 3]);
        op.paymasterAndData = Address::repeat_byte(0xaa).to_vec().into();
        op.set_paymaster_gas_limits(70_000, 80_000);
        op.nonce = U256::from(7) << 64;
        assert_eq!(op.hash(version, chain_id, None), chain.op_hash(version, &op).await?);
    }

    let delegate = chain.deployment().simple_7702_account_v08;
    let mut op =
        chain.account_creation_op(EntryPointVersion::V08, &PrivateKeySigner::random(), 0).await?;
    op.sender = Address::repeat_byte(0x42);
    for init_code in
        [EIP7702_INIT_CODE_MARKER.to_vec(), [EIP7702_INIT_CODE_MARKER.as_slice(), &[9, 9]].concat()]
    {
        op.initCode = init_code.into();
        assert_eq!(
            op.hash(EntryPointVersion::V08, chain_id, Some(delegate)),
            chain.op_hash_delegated(&op, delegate).await?
        );
    }
    Ok(())
}
