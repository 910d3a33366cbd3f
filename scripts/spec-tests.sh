#!/usr/bin/env bash
# The ERC-4337 compatibility suite (eth-infinitism bundler-spec-tests) against this working tree.
#
#   scripts/spec-tests.sh SUITE_DIR [PYTEST_ARGS...]
#
# SUITE_DIR is a suite prepared by ../shared/bundler-spec-tests/setup.sh (branch `master` for
# EntryPoint v0.8, `releases/v0.7` for v0.7). Builds settled (release), then runs the suite with
# the suite's profile (scripts/spec-tests.toml) and only the suite's EntryPoint served. Prints the
# per-file table and the closing `spec-tests: N passed, ...` line. Not part of CI: the suite is
# not reachable from CI machines.
#   RUNNER   the runner script (default ../shared/bundler-spec-tests/run.sh)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ $# -ge 1 ] || { echo "usage: $0 SUITE_DIR [PYTEST_ARGS...]" >&2; exit 2; }
suite=$(cd "$1" && pwd)
shift
runner=${RUNNER:-$root/../shared/bundler-spec-tests/run.sh}
[ -x "$runner" ] || [ -f "$runner" ] || { echo "no runner at $runner (set RUNNER)" >&2; exit 2; }
[ -f "$suite/.bst/env" ] || { echo "$suite is not a prepared suite (run setup.sh)" >&2; exit 2; }
# shellcheck disable=SC1091
. "$suite/.bst/env"
case "$ENTRY_POINT" in
  0x4337084D9E255Ff0702461CF8895CE9E3b5Ff108) version=0.8 ;;
  0x0000000071727De22E5E9d8BAf0edAc6f37da032) version=0.7 ;;
  *) echo "unknown EntryPoint $ENTRY_POINT in $suite/.bst/env" >&2; exit 2 ;;
esac

scripts/install-toolchain.sh >/dev/null
cargo build --release --bin settled
export SETTLED=${SETTLED:-${CARGO_TARGET_DIR:-$root/target}/release/settled}
# The suite's Anvil pages its state history to ~/.foundry/anvil/tmp (9.5 GiB per master run,
# measured) and leaves it behind when stopped: remove what this run's Anvil wrote.
marker=$(mktemp)
cleanup() { find "$HOME/.foundry/anvil/tmp" -maxdepth 1 -name 'anvil-state-*' -newer "$marker" \
  -exec rm -rf {} + 2>/dev/null; rm -f "$marker"; }
trap cleanup EXIT
status=0
QUIET=${QUIET:-1} bash "$runner" "$suite" -- \
  --config "$root/scripts/spec-tests.toml" --bundler.entry-points "$version" --anvil.block-time 0 \
  -- "$@" || status=$?
exit "$status"
