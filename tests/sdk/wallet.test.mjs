// settled as unmodified wallet SDKs meet it: viem and permissionless (pinned in package.json)
// with the node as bundler and paymaster, and a billing backend on viem. Driven by
// tests/tests/wallet_sdk.rs, which starts `settled dev` and passes where it listens:
//   SETTLED_RPC   the node's JSON-RPC (bundler, paymaster, billing, settlement)
//   SETTLED_CHAIN its Anvil
//   SETTLED_DATADIR  deployment.json and dev-api-key
//   SETTLED_BIN   the settled binary (verify-receipt)
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { createSmartAccountClient } from "permissionless";
import { to7702SimpleSmartAccount, toSimpleSmartAccount } from "permissionless/accounts";
import { createPimlicoClient } from "permissionless/clients/pimlico";
import { createPublicClient, encodeFunctionData, http, parseAbi } from "viem";
import { createPaymasterClient } from "viem/account-abstraction";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { foundry } from "viem/chains";

const SETTLED = need("SETTLED_RPC");
const DATADIR = need("SETTLED_DATADIR");
const chain = { ...foundry, rpcUrls: { default: { http: [need("SETTLED_CHAIN")] } } };
const deployment = JSON.parse(readFileSync(join(DATADIR, "deployment.json"), "utf8"));
const apiKey = readFileSync(join(DATADIR, "dev-api-key"), "utf8").trim();
const publicClient = createPublicClient({ chain, transport: http() });
const erc20 = parseAbi([
  "function approve(address spender, uint256 amount) returns (bool)",
  "function allowance(address owner, address spender) view returns (uint256)",
  "function balanceOf(address owner) view returns (uint256)",
]);

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run through tests/tests/wallet_sdk.rs`);
  return value;
}

/// A smart account client with settled as bundler and paymaster, as the SDKs' docs set it up.
function clientFor(account) {
  const pimlico = createPimlicoClient({ transport: http(SETTLED), entryPoint: account.entryPoint });
  return createSmartAccountClient({
    account,
    chain,
    bundlerTransport: http(SETTLED),
    paymaster: createPaymasterClient({ transport: http(SETTLED) }),
    userOperation: {
      estimateFeesPerGas: async () => (await pimlico.getUserOperationGasPrice()).fast,
    },
  });
}

/// Two `approve` calls of the USDC contract, each leaving a distinct allowance to check.
function twoApprovals() {
  const spenders = [privateKeyToAccount(generatePrivateKey()).address, privateKeyToAccount(generatePrivateKey()).address];
  const calls = spenders.map((spender, i) => ({
    to: deployment.usdc,
    data: encodeFunctionData({ abi: erc20, functionName: "approve", args: [spender, BigInt(i + 1) * 1000n] }),
  }));
  return { spenders, calls };
}

async function assertApproved(owner, spenders) {
  for (const [i, spender] of spenders.entries()) {
    const allowance = await publicClient.readContract({
      address: deployment.usdc,
      abi: erc20,
      functionName: "allowance",
      args: [owner, spender],
    });
    assert.equal(allowance, BigInt(i + 1) * 1000n, `allowance of spender ${i}`);
  }
}

/// Sends `calls` from `account` (no ETH anywhere: the paymaster sponsors) and checks the receipt.
async function sendSponsored(account, calls, extra = {}) {
  const client = clientFor(account);
  const hash = await client.sendUserOperation({ calls, ...extra });
  const receipt = await client.waitForUserOperationReceipt({ hash, timeout: 60_000 });
  assert.equal(receipt.success, true, `op ${hash} succeeded`);
  assert.equal(receipt.sender.toLowerCase(), account.address.toLowerCase());
  assert.equal(await publicClient.getBalance({ address: account.address }), 0n, "the wallet holds no ETH");
  return receipt;
}

for (const version of ["0.7", "0.8"]) {
  test(`undeployed SimpleAccount on EntryPoint v${version}: a sponsored batch of two calls`, async () => {
    const owner = privateKeyToAccount(generatePrivateKey());
    const account = await toSimpleSmartAccount({
      client: publicClient,
      owner,
      entryPoint: {
        address: version === "0.7" ? deployment.entryPointV07 : deployment.entryPointV08,
        version,
      },
    });
    assert.equal(await publicClient.getCode({ address: account.address }), undefined, "not deployed yet");
    const { spenders, calls } = twoApprovals();
    await sendSponsored(account, calls);
    assert.ok(await publicClient.getCode({ address: account.address }), "deployed by the op");
    await assertApproved(account.address, spenders);
  });
}

test("to7702SimpleSmartAccount's first op (sponsored; the owner signs the authorization)", async () => {
  const owner = privateKeyToAccount(generatePrivateKey());
  const account = await to7702SimpleSmartAccount({ client: publicClient, owner });
  assert.equal(account.address, owner.address);
  const { spenders, calls } = twoApprovals();
  // Before the owner signs anything, viem puts a placeholder authorization in the op: the
  // paymaster sponsors it as the owner will sign it (the bundler checks the real one).
  const prepared = await clientFor(account).prepareUserOperation({ calls });
  assert.match(prepared.paymasterData, /^0x[0-9a-f]{130,}$/i, "signed paymaster data");
  const authorization = await owner.signAuthorization({
    address: account.authorization.address,
    chainId: chain.id,
    nonce: await publicClient.getTransactionCount({ address: owner.address }),
  });
  await sendSponsored(account, calls, { authorization });
  const code = await publicClient.getCode({ address: owner.address });
  assert.equal(code.toLowerCase(), `0xef0100${deployment.simple7702AccountV08.slice(2).toLowerCase()}`);
  await assertApproved(owner.address, spenders);
});

/// A billing backend's JSON-RPC call: the text parsed with plain JSON.parse, as a browser would.
async function billing(method, params) {
  const response = await fetch(SETTLED, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}` },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
  });
  const answer = JSON.parse(await response.text());
  assert.equal(answer.error, undefined, `${method}: ${JSON.stringify(answer.error)}`);
  return answer.result;
}

/// EIP-712 typed data from the node (quantities as decimal strings) as viem signs it.
function typedData({ domain, types, primaryType, message }) {
  const fields = Object.fromEntries(types[primaryType].map((f) => [f.name, f.type]));
  const values = Object.entries(message).map(([k, v]) => [k, /^u?int/.test(fields[k]) ? BigInt(v) : v]);
  const { EIP712Domain: _, ...rest } = types;
  return { domain, types: rest, primaryType, message: Object.fromEntries(values) };
}

test("billing: open by signed terms, accrue, settle, verify the receipt", async () => {
  // Anvil dev account 5: holds USDC, never used by the node itself.
  const payer = privateKeyToAccount("0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba");
  const payee = privateKeyToAccount(generatePrivateKey()).address;
  const request = {
    payer: payer.address,
    payee,
    token: deployment.usdc,
    ratePerSecond: "1000000000000000", // 0.001 USDC a second, scaled to 18 decimals
    deposit: "10000000", // 10 USDC
  };
  const deadline = Math.floor(Date.now() / 1000) + 3600;
  const offer = await billing("stream_openTerms", [{ ...request, deadline }]);
  const signedTerms = {
    nonce: offer.terms.nonce,
    deadline,
    signature: await payer.signTypedData(typedData(offer.termsTypedData)),
    permitSignature: await payer.signTypedData(typedData(offer.permitTypedData)),
  };
  const opened = await billing("stream_open", [{ ...request, signedTerms, idempotencyKey: `sdk-${deadline}` }]);
  assert.equal(typeof opened.streamId, "string");

  await new Promise((resolve) => setTimeout(resolve, 3000));
  const now = Number((await publicClient.getBlock()).timestamp);
  const balance = await billing("stream_balanceAt", [opened.streamId, now]);
  assert.equal(typeof balance.coveredDebt, "string", "amounts are decimal strings");
  assert.ok(BigInt(balance.coveredDebt) > 0n, "the stream has accrued");

  const round = await billing("settlement_runNow", []);
  assert.equal(round.committed.length, 1, `one batch committed: ${JSON.stringify(round)}`);
  const receipt = await billing("settlement_getReceipt", [opened.streamId, round.committed[0]]);
  const paid = await publicClient.readContract({ address: deployment.usdc, abi: erc20, functionName: "balanceOf", args: [payee] });
  assert.equal(BigInt(receipt.record.amount), paid, "the receipt's amount is what the payee received");

  // What the customer's browser would hold, written back out: the binary must accept it.
  const file = join(DATADIR, "sdk-receipt.json");
  writeFileSync(file, JSON.stringify(receipt));
  const verdict = JSON.parse(
    execFileSync(need("SETTLED_BIN"), ["verify-receipt", "--rpc-url", chain.rpcUrls.default.http[0], file], {
      encoding: "utf8",
    }),
  );
  assert.equal(verdict.valid, true, JSON.stringify(verdict));
});
