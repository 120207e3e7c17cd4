#!/usr/bin/env bash
# One command that makes a fresh Debian 12 machine ready for dfagent: system packages, the cached
# Debian root filesystem used by end-to-end tests and benchmarks, cargo-fuzz, and a build.
# Idempotent: every step is skipped when its result is already there. Run as root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${DFAGENT_CACHE:-/var/cache/dfagent}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}

log() { printf '\n== %s\n' "$*" >&2; }

pkgs=(build-essential pkg-config clang libclang-dev protobuf-compiler fuse3 docker-registry
      umoci skopeo debootstrap jq curl ca-certificates python3 e2fsprogs zstd ccache prometheus
      acl iproute2 libprotobuf-dev containerd runc buildah podman python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

mkdir -p "$cache"
rootfs=$cache/rootfs/bookworm-minbase-python3
if [ ! -x "$rootfs/usr/bin/python3" ]; then
  log "debootstrap of the test root filesystem into $rootfs (about a minute)"
  tmp=$rootfs.tmp.$$
  rm -rf "$tmp"; mkdir -p "$(dirname "$rootfs")"
  debootstrap --variant=minbase --include=python3 bookworm "$tmp" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"; mv "$tmp" "$rootfs"
fi

# The runtime image's packages (docker/build-image.sh), and the Kubernetes schema validator
# (scripts/validate-manifests.sh) in a venv of its own.
mkdir -p "$cache/debs"
for p in fuse3 libfuse3-3 ca-certificates; do
  ls "$cache/debs/${p}"_*.deb >/dev/null 2>&1 || (cd "$cache/debs" && apt-get download -qq "$p")
done
kv=$cache/venv/kubernetes-validate
if [ ! -x "$kv/bin/kubernetes-validate" ]; then
  log "installing kubernetes-validate into $kv"
  python3 -m venv "$kv" && "$kv/bin/pip" install --quiet kubernetes-validate==1.37.0
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install --locked cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
fi

# dfdaemon (Dragonfly's client, for the Dragonfly tests) installs beside the project's build: both
# are CPU-bound, but each leaves a core idle for long stretches (RocksDB's link, LTO-free codegen
# waits), so together they finish sooner than one after the other.
# With DFAGENT_DFDAEMON_BACKGROUND=1 (test.sh) the install is left running on its own: test.sh
# runs every other test meanwhile and waits for it (install-dfdaemon.sh again, which waits on the
# install's lock) only before the tests that run dfdaemon.
dfdaemon_pid=
if [ "${DFAGENT_SKIP_DFDAEMON:-}" = 1 ]; then
  :
elif [ "${DFAGENT_DFDAEMON_BACKGROUND:-}" = 1 ]; then
  setsid "$here/scripts/install-dfdaemon.sh" </dev/null >/dev/null 2>&1 &
else
  "$here/scripts/install-dfdaemon.sh" &
  dfdaemon_pid=$!
fi
wait_dfdaemon() {
  if [ -n "$dfdaemon_pid" ]; then wait "$dfdaemon_pid"; dfdaemon_pid=; fi
}
trap 'if [ -n "$dfdaemon_pid" ]; then kill "$dfdaemon_pid" 2>/dev/null || true; fi' EXIT

if [ "${DFAGENT_SKIP_BUILD:-}" = 1 ]; then wait_dfdaemon; exit 0; fi
cd "$here"
# One build serves the demo, the tests and the benchmarks: the dev profile compiles every
# dependency (RocksDB, zstd, blake3, ...) at opt-level 2 (Cargo.toml). DFAGENT_RELEASE=1 adds a
# release build (another ~25 min cold, mostly RocksDB).
profile=debug
log "building dfagent, tests and benchmarks (target dir $CARGO_TARGET_DIR; cold: ~35 min on 2 cores)"
cargo build --locked --workspace --all-targets
if [ "${DFAGENT_RELEASE:-}" = 1 ]; then
  log "release build"
  cargo build --release --locked --workspace --bins
  profile=release
fi
wait_dfdaemon
ln -sf "$CARGO_TARGET_DIR/$profile/dfagent" /usr/local/bin/dfagent
log "ready: dfagent is $CARGO_TARGET_DIR/$profile/dfagent (linked as /usr/local/bin/dfagent)"
