#!/usr/bin/env bash
# Run every test: formatting, clippy, unit and integration tests (real FUSE mounts need root and
# /dev/fuse). Installs missing prerequisites first (idempotent), so it works on a fresh clone.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${DFAGENT_CACHE:-/var/cache/dfagent}/target}
DFAGENT_SKIP_BUILD=1 scripts/setup.sh
if [ ! -d "${DFAGENT_SHARED:-$here/../shared}/fixtures/rafs" ]; then
  echo "test.sh: fixtures not found at ${DFAGENT_SHARED:-$here/../shared}/fixtures/rafs" >&2
  exit 1
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace -- --test-threads=2
echo "== fuzz smoke: every fuzz target built and run 20 s on its corpus"
scripts/fuzz-smoke.sh
echo "== e2e: Debian rootfs through dfagent build, a registry and a FUSE mount"
scripts/e2e-debian.sh
