#!/usr/bin/env bash
# End to end on a real root filesystem: pack the cached Debian rootfs (made by setup.sh, read
# only here) as an OCI image with umoci (one gzip layer), convert and push it with
# `dfagent build --push` to a docker-registry on 127.0.0.1, mount it lazily from the registry
# with `dfagent mount`, and run a shell and python3 in it with chroot. Needs root and /dev/fuse.
# Everything it starts is stopped and removed on exit (trap). Bounded: each wait has a deadline.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rootfs=${DFAGENT_ROOTFS:-/var/cache/dfagent/rootfs/bookworm-minbase-python3}
target=${CARGO_TARGET_DIR:-/var/cache/dfagent/target}
dfagent=${DFAGENT_BIN:-$target/debug/dfagent}

if [ "$(id -u)" != 0 ]; then echo "e2e-debian.sh: needs root" >&2; exit 1; fi
if [ ! -d "$rootfs/usr/bin" ]; then
  echo "e2e-debian.sh: no root filesystem at $rootfs (scripts/setup.sh makes it)" >&2
  exit 1
fi
if [ ! -x "$dfagent" ]; then
  (cd "$here" && cargo build --locked --workspace --bin dfagent)
fi

work=$(mktemp -d /tmp/dfagent-e2e-debian.XXXXXX)
mp=$work/mnt
registry_pid=
mount_pid=
cleanup() {
  set +e
  if [ -n "$mount_pid" ]; then
    "$dfagent" umount --lazy "$mp" >/dev/null 2>&1
    kill "$mount_pid" 2>/dev/null
    wait "$mount_pid" 2>/dev/null
  fi
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null
    wait "$registry_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$port/v2/" >/dev/null

echo "== pack $rootfs as an OCI image (umoci)"
start=$(date +%s)
umoci init --layout "$work/oci" >/dev/null
umoci new --image "$work/oci:v1" >/dev/null
umoci insert --image "$work/oci:v1" "$rootfs" / >/dev/null 2>&1
echo "   $(du -sh "$work/oci" | cut -f1) in $(( $(date +%s) - start )) s"

ref=127.0.0.1:$port/e2e/debian:nydus
echo "== dfagent build --push $ref"
"$dfagent" build "oci:$work/oci:v1" --push "$ref" --json -q | tee "$work/build.json"

echo "== dfagent mount $ref"
mkdir -p "$mp"
"$dfagent" mount "$ref" "$mp" --store "$work/store" --prefetch none >"$work/mount.log" 2>&1 &
mount_pid=$!
for _ in $(seq 300); do
  [ -e "$mp/usr/bin" ] && break
  kill -0 "$mount_pid" 2>/dev/null || { cat "$work/mount.log" >&2; exit 1; }
  sleep 0.1
done
[ -e "$mp/usr/bin" ] || { echo "e2e-debian.sh: mount did not appear" >&2; cat "$work/mount.log" >&2; exit 1; }

echo "== chroot"
out=$(timeout 60 chroot "$mp" /bin/sh -c 'echo ok; ls /usr/bin | wc -l')
echo "$out"
want=$(ls "$rootfs/usr/bin" | wc -l)
[ "$(echo "$out" | head -1)" = ok ] || { echo "e2e-debian.sh: the shell did not run" >&2; exit 1; }
[ "$(echo "$out" | tail -1)" = "$want" ] || { echo "e2e-debian.sh: /usr/bin has $(echo "$out" | tail -1) entries, the rootfs $want" >&2; exit 1; }
py=$(timeout 60 chroot "$mp" /usr/bin/python3 -c 'import hashlib, json; print(json.dumps({"ok": hashlib.sha256(b"x").hexdigest()[:8]}))')
[ "$py" = '{"ok": "2d711642"}' ] || { echo "e2e-debian.sh: python3 in the image printed $py" >&2; exit 1; }
echo "   python3: $py"

"$dfagent" umount "$mp"
wait "$mount_pid"
mount_pid=
echo "e2e-debian.sh: ok"
