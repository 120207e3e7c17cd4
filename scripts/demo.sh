#!/usr/bin/env bash
# The main job: real Nydus images (built by upstream nydus-image) in a local docker-registry,
# served lazily by one `dfagent daemon`: two images mounted through the CLI (which returns as
# soon as each mount is ready), listed with `dfagent ps`, read, and the daemon's Prometheus
# metrics shown; then a container: a Nydus image of a Debian + python3 root file system
# (`dfagent build --push`) run by a private containerd with the daemon as its snapshotter.
# Everything it starts (registry, daemon, containerd, mounts, temporary store) is stopped and
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
# Containers' root file systems live only below directories no other user can enter (/tmp is
# open to all): the snapshotter's root is in a 0700 directory under /run.
runroot=$(mktemp -d /run/dfagent-demo.XXXXXX)
export DFAGENT_SOCKET=$work/dfagent.sock
export DFAGENT_SNAPSHOTTER__ROOT=$runroot/snapshotter
reg_pid='' daemon_pid='' ctd_pid=''
cleanup() {
  set +e
  if [ -n "$ctd_pid" ]; then
    kill -TERM "$ctd_pid" 2>/dev/null
    wait "$ctd_pid" 2>/dev/null
    rmdir /sys/fs/cgroup/*/dfagent-demo /sys/fs/cgroup/dfagent-demo 2>/dev/null
  fi
  # containerd 1.6 puts shim sockets in /run/containerd/s whatever its config says: only empty
  # directories are removed.
  rmdir /run/containerd/s /run/containerd 2>/dev/null
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"          # the daemon unmounts everything on SIGTERM
    for _ in $(seq 200); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null
  fi
  for mp in "$work/mnt1" "$work/mnt2"; do
    mountpoint -q "$mp" 2>/dev/null && umount -l "$mp"
  done
  # Whatever is still mounted below the demo's directories (deepest first).
  findmnt -rn -o TARGET | grep -E "^($work|$runroot)/" | sort -r | xargs -r -n1 umount -l 2>/dev/null
  if [ -n "$reg_pid" ]; then
    kill "$reg_pid" 2>/dev/null
    wait "$reg_pid" 2>/dev/null
  fi
  rm -rf "$work" "$runroot"
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

echo "== a container on a lazy Nydus image: containerd asks the daemon's snapshotter for its root"
rootfs=${DFAGENT_CACHE:-/var/cache/dfagent}/rootfs/bookworm-minbase-python3
ref3=127.0.0.1:$port/demo/debian-python3:v1
umoci init --layout "$work/oci"
umoci new --image "$work/oci:v1"
umoci insert --image "$work/oci:v1" "$rootfs" / >/dev/null   # one gzip layer, 267 MB unpacked
"$bin" --no-daemon build "oci:$work/oci:v1" --push "$ref3" -q
ctd=$work/containerd
mkdir -p "$ctd"
cat >"$ctd/config.toml" <<TOML
version = 2
root = "$ctd/root"
state = "$ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$ctd/containerd.sock"
[ttrpc]
  address = "$ctd/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$ctd/opt"
[proxy_plugins.dfagent]
  type = "snapshot"
  address = "$work/snapshotter.sock"
TOML
echo "   containerd with [proxy_plugins.dfagent] at $work/snapshotter.sock"
containerd --config "$ctd/config.toml" >"$ctd/containerd.log" 2>&1 &
ctd_pid=$!
ctr_() { ctr --address "$ctd/containerd.sock" -n dfagent-demo "$@"; }
for _ in $(seq 100); do ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" containerd pull "$ref3" --address "$ctd/containerd.sock" -n dfagent-demo
ctr_ run --rm --runc-root "$ctd/runc" --fifo-dir "$ctd/fifo" --snapshotter dfagent "$ref3" demo \
  /usr/bin/python3 -c 'import platform; print("hello from Python", platform.python_version(), "in a container on a lazy Nydus image")'
ctr_ snapshots --snapshotter dfagent ls
echo "== dfagent ps: the image mount the container stood on, and what it fetched"
"$bin" ps
kill -TERM "$ctd_pid"
wait "$ctd_pid" 2>/dev/null
ctd_pid=''
rmdir /sys/fs/cgroup/*/dfagent-demo /sys/fs/cgroup/dfagent-demo 2>/dev/null || true

kill -TERM "$daemon_pid"
wait "$daemon_pid"
daemon_pid=''
echo "== daemon stopped: every mount gone"
