#!/usr/bin/env bash
# The main job: a real Nydus image (built by upstream nydus-image) served by a local
# docker-registry, mounted lazily with `dfagent mount REF MP`, read through the mount, unmounted.
# Everything it starts (registry, mount, temporary store) is stopped and removed on exit.
#   scripts/demo.sh [FIXTURE]     FIXTURE: a folder of ../shared/fixtures/rafs (v6-zstd-blake3)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
fixtures=${DFAGENT_SHARED:-$here/../shared}/fixtures/rafs
img=$fixtures/${1:-v6-zstd-blake3}
target=${CARGO_TARGET_DIR:-/var/cache/dfagent/target}
# The build setup.sh made (dev profile); DFAGENT=PATH picks another (e.g. target/release/dfagent).
bin=${DFAGENT:-$target/debug/dfagent}
[ -x "$bin" ] || { echo "demo.sh: no dfagent binary; run scripts/setup.sh first" >&2; exit 1; }

work=$(mktemp -d /tmp/dfagent-demo.XXXXXX)
mp=$work/mnt
mkdir -p "$mp" "$work/registry"
export DFAGENT_STORE=$work/store
reg_pid='' mount_pid=''
cleanup() {
  if [ -n "$mount_pid" ] && kill -0 "$mount_pid" 2>/dev/null; then
    "$bin" umount --lazy "$mp" 2>/dev/null || true
    kill "$mount_pid" 2>/dev/null || true
    wait "$mount_pid" 2>/dev/null || true
  fi
  if [ -n "$reg_pid" ]; then
    kill "$reg_pid" 2>/dev/null || true
    wait "$reg_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
EOF
echo "== docker-registry on 127.0.0.1:$port"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

ref=127.0.0.1:$port/demo/$(basename "$img"):v1
echo "== dfagent check, then push $img as $ref (nydusify's layout)"
"$bin" check "$img/bootstrap" --blob-dir "$img/blobs"
"$bin" push --bootstrap "$img/bootstrap" --blob-dir "$img/blobs" "$ref"

echo "== dfagent mount $ref $mp (lazy: nothing but the bootstrap is fetched yet)"
"$bin" -v mount "$ref" "$mp" --prefetch none &
mount_pid=$!
for _ in $(seq 300); do [ -e "$mp/hello.txt" ] && break; sleep 0.1; done
ls -la "$mp" | head -8
echo "hello.txt: $(head -c 60 "$mp/hello.txt")"
sha256sum "$mp/multi-chunk.bin"
"$bin" umount "$mp"
wait "$mount_pid"
mount_pid=''
echo "== the chunks read are now in the node's store"
"$bin" cache stat
