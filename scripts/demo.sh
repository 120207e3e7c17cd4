#!/usr/bin/env bash
# The main job: real Nydus images (built by upstream nydus-image) in a local docker-registry,
# served lazily by one `dfagent daemon`: two images mounted through the CLI (which returns as
# soon as each mount is ready), listed with `dfagent ps`, read, and the daemon's Prometheus
# metrics shown. Everything it starts (registry, daemon, mounts, temporary store) is stopped and
# removed on exit.
#   scripts/demo.sh [FIXTURE]     FIXTURE: a folder of ../shared/fixtures/rafs (v6-zstd-blake3)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# Install and build whatever this machine still lacks (idempotent; quick when all is there).
# The demo does not run dfdaemon: its install (for the Dragonfly tests) goes on in the background.
DFAGENT_DFDAEMON_BACKGROUND=1 "$here/scripts/setup.sh"
fixtures=${DFAGENT_SHARED:-$here/../shared}/fixtures/rafs
img=$fixtures/${1:-v6-zstd-blake3}
img2=$fixtures/v6-chunkdict
target=${CARGO_TARGET_DIR:-${DFAGENT_CACHE:-/var/cache/dfagent}/target}
# The build setup.sh made (dev profile); DFAGENT=PATH picks another (e.g. target/release/dfagent).
bin=${DFAGENT:-$target/debug/dfagent}
[ -x "$bin" ] || { echo "demo.sh: no dfagent binary at $bin after scripts/setup.sh" >&2; exit 1; }

work=$(mktemp -d /tmp/dfagent-demo.XXXXXX)
mkdir -p "$work/mnt1" "$work/mnt2" "$work/registry"
export DFAGENT_SOCKET=$work/dfagent.sock
reg_pid='' daemon_pid=''
cleanup() {
  set +e
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"          # the daemon unmounts everything on SIGTERM
    for _ in $(seq 200); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null
  fi
  for mp in "$work/mnt1" "$work/mnt2"; do
    mountpoint -q "$mp" 2>/dev/null && umount -l "$mp"
  done
  if [ -n "$reg_pid" ]; then
    kill "$reg_pid" 2>/dev/null
    wait "$reg_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YML
echo "== docker-registry on 127.0.0.1:$port"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

ref=127.0.0.1:$port/demo/$(basename "$img"):v1
ref2=127.0.0.1:$port/demo/$(basename "$img2"):v1
echo "== dfagent check, then push both images (nydusify's layout)"
"$bin" check "$img/bootstrap" --blob-dir "$img/blobs"
"$bin" --no-daemon push --bootstrap "$img/bootstrap" --blob-dir "$img/blobs" "$ref"
"$bin" --no-daemon push --bootstrap "$img2/bootstrap" --blob-dir "$img2/blobs" "$ref2"

metrics_port=$(free_port)
echo "== dfagent daemon (control socket $DFAGENT_SOCKET, metrics 127.0.0.1:$metrics_port)"
"$bin" daemon --store "$work/store" --metrics-addr "127.0.0.1:$metrics_port" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 300); do grep -q "daemon ready" "$work/daemon.log" 2>/dev/null && break; sleep 0.1; done
grep -q "daemon ready" "$work/daemon.log" || { cat "$work/daemon.log" >&2; exit 1; }

echo "== dfagent mount (through the daemon; lazy: nothing but the bootstraps is fetched yet)"
"$bin" mount "$ref" "$work/mnt1" --prefetch none
"$bin" mount "$ref2" "$work/mnt2" --prefetch none
"$bin" ps
echo "== read through the mounts"
ls -la "$work/mnt1" | head -8
echo "hello.txt: $(head -c 60 "$work/mnt1/hello.txt")"
sha256sum "$work/mnt1/multi-chunk.bin" "$work/mnt2/hello.txt"
echo "== dfagent ps: bytes fetched per tier, chunks cached"
"$bin" ps
echo "== Prometheus metrics (excerpt)"
curl -fsS "http://127.0.0.1:$metrics_port/metrics" | grep -E '^dfagent_(tier_bytes_total|tier_chunks_total|cache_hits_total|store_chunks|mounts)' 
echo "== the daemon's store"
"$bin" cache stat
"$bin" umount "$work/mnt2"
kill -TERM "$daemon_pid"
wait "$daemon_pid"
daemon_pid=''
echo "== daemon stopped: every mount gone"
