#!/usr/bin/env bash
# Installs everything settled needs besides Rust: Anvil, forge and cast, solcjs and the Solidity
# dependencies, the OP-stack fee predeploys the L2 tests put on Anvil
# (@eth-optimism/contracts-bedrock), all pinned in package.json / package-lock.json, and the wallet SDKs the tests
# drive the node with (tests/sdk/package-lock.json: viem, permissionless). Idempotent: a no-op
# when the installed trees already match the lockfiles.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

stamp=node_modules/.settled-lock.sha256
want=$(cat package-lock.json tests/sdk/package-lock.json | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
  && [ -x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] \
  && [ -d tests/sdk/node_modules/permissionless ]; then
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "install-toolchain: npm not found; installing Node.js from Debian packages" >&2
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi

echo "install-toolchain: npm ci (anvil, forge, cast, solc, ERC-4337, OpenZeppelin and OP-stack contracts)" >&2
npm ci --no-audit --no-fund --loglevel=error >&2
echo "install-toolchain: npm ci in tests/sdk (viem, permissionless)" >&2
(cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error >&2)
chmod +x scripts/solc
echo "$want" > "$stamp"
echo "install-toolchain: $(node_modules/.bin/anvil --version | head -1), $(scripts/solc --version | tail -1)" >&2
