#!/usr/bin/env bash
# Installs Dragonfly's own client, `dfdaemon` (crate `dragonfly-client` on crates.io), once per
# machine into the cache directory, keyed by version: the Dragonfly tests run real dfdaemon seed
# peers. A registry install of a published crate's binary, nothing fetched from elsewhere.
# Idempotent: does nothing when the binary of this version is there. Called by setup.sh (in the
# background on a fresh machine, see test.sh) and by test.sh before the tests that run dfdaemon:
# one install at a time (a lock), so a second call waits for the first and then finds the binary.
#
# The crate's own release profile (fat LTO, one codegen unit, opt-level 3) costs about 30 minutes
# on two cores; the tests need a correct dfdaemon, not the fastest one, so the profile is
# overridden: no LTO, 16 codegen units, opt-level 1, no debug info (costs in docs/build.md).
# Its C and C++ (RocksDB, jemalloc) go through the project's ccache wrappers.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${DFAGENT_CACHE:-/var/cache/dfagent}
version=${DFAGENT_DFDAEMON_VERSION:-1.5.10}
root=$cache/dfdaemon/$version
bin=$root/bin/dfdaemon
installed() { [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; }
if installed; then
  exit 0
fi
mkdir -p "$cache/dfdaemon"
# Wait (at most 90 minutes) for an install already running, then look again.
exec 9>"$cache/dfdaemon/install.lock"
if ! flock -w 5400 9; then
  echo "install-dfdaemon.sh: another install of dfdaemon held the lock for 90 minutes" >&2
  exit 1
fi
if installed; then
  exit 0
fi
log=$cache/dfdaemon/install-$version.log
printf '\n== installing dfdaemon %s into %s (cold: about 20 minutes on 2 cores; log %s)\n' \
  "$version" "$root" "$log" >&2
start=$(date +%s)
if ! CC="$here/scripts/build/cc" CXX="$here/scripts/build/c++" \
    CARGO_TARGET_DIR="$cache/dfdaemon/target" \
    cargo install --locked "dragonfly-client@$version" --bin dfdaemon --root "$root" \
      --config 'profile.release.lto="off"' --config 'profile.release.codegen-units=16' \
      --config 'profile.release.opt-level=1' --config 'profile.release.debug=false' \
      >"$log" 2>&1; then
  tail -30 "$log" >&2
  echo "dfdaemon $version failed to install; see $log" >&2
  exit 1
fi
# The build directory is only needed again for another version: drop its bulk, keep the binary.
rm -rf "$cache/dfdaemon/target/release/deps" "$cache/dfdaemon/target/release/build"
printf '== dfdaemon %s installed in %s s: %s\n' "$version" "$(( $(date +%s) - start ))" "$bin" >&2
