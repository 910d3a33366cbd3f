#!/usr/bin/env bash
# Runs the README's Quick start as written: every ```sh block of the section, in order, from the
# checkout. The block that starts the node (scripts/dev.sh) runs in the background until the
# node answers; the one that runs the test suite is skipped (it is what runs this); the others
# run in one bash session with `set -euo pipefail`, so a failing command fails the test. The
# last command verifies a settlement receipt: exit 0 means the whole flow worked.
#
# It uses the Quick start's fixed ports (4337, 8545, 9337) and `.settled/`, so no other
# `settled dev` may be running.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
started=$(date +%s)

# The section's sh blocks, separated by NUL bytes.
blocks=$(mktemp)
work=$(mktemp -d)
awk '
  /^## / { inside = ($0 == "## Quick start") }
  inside && /^```sh$/ { block = 1; next }
  inside && block && /^```$/ { block = 0; printf "%c", 0; next }
  inside && block { print }
' README.md > "$blocks"

node_pid=
stop_node() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    # Ctrl-C as a person would: the whole process group (cargo, settled, its Anvil).
    kill -INT -- "-$node_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$node_pid" 2>/dev/null || true
  fi
  rm -rf "$blocks" "$work"
}
trap stop_node EXIT

script="$work/steps.sh"
echo 'set -euo pipefail' > "$script"
count=0
while IFS= read -r -d '' block; do
  count=$((count + 1))
  case "$block" in
    scripts/dev.sh*)
      echo "quickstart: block $count starts the node: $block" >&2
      setsid bash -c "$block" > "$work/node.log" 2>&1 &
      node_pid=$!
      ;;
    scripts/test.sh*) echo "quickstart: block $count is the test suite itself: skipped" >&2 ;;
    *) printf '%s\n' "$block" >> "$script" ;;
  esac
done < "$blocks"
[ -n "$node_pid" ] || { echo "quickstart: no scripts/dev.sh block in the Quick start" >&2; exit 1; }

# The first start builds settled: allow for it.
for _ in $(seq 1 600); do
  grep -q 'settled ready' "$work/node.log" && break
  kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log" >&2; echo "quickstart: the node exited" >&2; exit 1; }
  sleep 1
done
grep -q 'settled ready' "$work/node.log" || { tail -20 "$work/node.log" >&2; exit 1; }
ready=$(date +%s)
echo "quickstart: node ready after $((ready - started)) s; running the commands" >&2

status=0
bash -v "$script" || status=$?
echo "quickstart: commands took $(( $(date +%s) - ready )) s, exit $status" >&2
if [ "$status" -ne 0 ]; then
  tail -30 "$work/node.log" >&2
fi
exit "$status"
