#!/usr/bin/env bash
# Build every fuzz target and run each for a short while (20 s, or $DFAGENT_FUZZ_SECONDS) on its
# corpus, seeded from the fixtures by fuzz/seed.sh. Fails on a crash, a hang (10 s per input) or
# an out-of-memory; the input that did it is left in fuzz/artifacts/<target>/. New inputs go to a
# temporary directory, so the seed corpus stays as seed.sh made it. What scripts/test.sh runs
# after the tests; the long runs and their numbers are in docs/reliability.md ("Fuzzing").
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${DFAGENT_CACHE:-/var/cache/dfagent}
secs=${DFAGENT_FUZZ_SECONDS:-20}
export CARGO_TARGET_DIR=$cache/fuzz-target
# cargo-fuzz needs nightly flags; the stable toolchain accepts them with this.
export RUSTC_BOOTSTRAP=1
export PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin

# Longest input per target: what each parser meets in practice, with room to grow.
declare -A max_len=(
  [bootstrap]=200000
  [blob_meta]=65536
  [tar_layer]=65536
  [control_request]=70000
  [mount_ops]=262144
  [peer_messages]=300000
  [dragonfly_messages]=262144
  [containerd_filter]=8192
)

cd "$here/fuzz"
./seed.sh >/dev/null
echo "== cargo fuzz build (every target; overflow checks and debug assertions on, no sanitizer)"
cargo fuzz build -s none -a
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in $(cargo fuzz list); do
  if [ -z "${max_len[$t]:-}" ]; then
    echo "fuzz-smoke.sh: no max_len for fuzz target $t: add it to the table above" >&2
    exit 1
  fi
  echo "== fuzz $t for ${secs}s"
  mkdir -p "corpus/$t" "$work/$t"
  if ! cargo fuzz run -s none -a "$t" "$work/$t" "corpus/$t" -- \
      -max_len="${max_len[$t]}" -timeout=10 -max_total_time="$secs" -print_final_stats=1 \
      >"$work/$t.log" 2>&1; then
    tail -40 "$work/$t.log" >&2
    failed+=("$t")
    continue
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$work/$t.log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke.sh: crashes in ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "== fuzz smoke: every target ran ${secs}s without a crash"
