#!/usr/bin/env bash
# Runs a local settled node: installs the pinned toolchain, builds, then `settled dev` starts its
# own Anvil, deploys everything and serves JSON-RPC on 127.0.0.1:4337, metrics on :9337.
# Extra arguments go to `settled dev` (see `settled dev --help`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/install-toolchain.sh
exec cargo run --quiet --bin settled -- dev "$@"
