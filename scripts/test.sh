#!/usr/bin/env bash
# Run every test: formatting, clippy, unit and integration tests (real FUSE mounts need root and
# /dev/fuse). Installs missing prerequisites first (idempotent), so it works on a fresh clone.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${DFAGENT_CACHE:-/var/cache/dfagent}/target}
# dfdaemon (Dragonfly's client, for the Dragonfly tests) installs in the background on a fresh
# machine (about half an hour of CPU): every other test runs meanwhile.
DFAGENT_SKIP_BUILD=1 DFAGENT_DFDAEMON_BACKGROUND=1 scripts/setup.sh
if [ ! -d "${DFAGENT_SHARED:-$here/../shared}/fixtures/rafs" ]; then
  echo "test.sh: fixtures not found at ${DFAGENT_SHARED:-$here/../shared}/fixtures/rafs" >&2
  exit 1
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== Kubernetes manifests (offline, strict)"
scripts/validate-manifests.sh
echo "== cargo test (all but the tests that run dfdaemon)"
cargo test --locked --workspace -- --test-threads=2 --skip with_dfdaemon::
echo "== fuzz smoke: every fuzz target built and run 20 s on its corpus"
scripts/fuzz-smoke.sh
echo "== e2e: Debian rootfs through dfagent build, a registry and a FUSE mount"
scripts/e2e-debian.sh
echo "== waiting for the dfdaemon install (if it is still running)"
scripts/install-dfdaemon.sh
echo "== cargo test: the tests that run real dfdaemon seed peers"
cargo test --locked -p dfagent-test-support -p dfagent -p dfagent-bench -- --test-threads=1 with_dfdaemon::
