#!/usr/bin/env bash
# The main job on something real: verify a Nydus image built by upstream nydus-image, list it,
# mount it lazily with FUSE, read a file through the mount, and unmount.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
fixtures=${DFAGENT_SHARED:-$here/../shared}/fixtures/rafs
img=$fixtures/${1:-v6-zstd-blake3}
target=${CARGO_TARGET_DIR:-/var/cache/dfagent/target}
bin=${DFAGENT:-$target/release/dfagent}
[ -x "$bin" ] || bin=$target/debug/dfagent
[ -x "$bin" ] || { echo "demo.sh: no dfagent binary; run scripts/setup.sh first" >&2; exit 1; }
mp=$(mktemp -d /tmp/dfagent-demo.XXXXXX)
echo "== dfagent check $img"
"$bin" check "$img/bootstrap" --blob-dir "$img/blobs"
echo "== dfagent inspect (first entries)"
"$bin" inspect "$img/bootstrap" --blob-dir "$img/blobs" | head -8
echo "== dfagent mount at $mp"
"$bin" mount --bootstrap "$img/bootstrap" --blob-dir "$img/blobs" "$mp" -v &
pid=$!
for _ in $(seq 100); do [ -e "$mp/hello.txt" ] && break; sleep 0.1; done
ls -la "$mp" | head -8
echo "hello.txt: $(head -c 60 "$mp/hello.txt")"
sha256sum "$mp/multi-chunk.bin"
"$bin" umount "$mp"
wait "$pid"
rmdir "$mp"
