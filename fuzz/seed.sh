#!/usr/bin/env bash
# Seed the fuzz corpora from the RAFS fixtures (corpus/ is not committed):
#   corpus/bootstrap/  every fixture bootstrap
#   corpus/blob_meta/  the tails of every fixture blob (chunk-info array and header, TOC)
#   corpus/tar_layer/  the fixture layer tar (whiteouts, opaque dir), gzip'd and zstd'd too, and a
#                      GNU PAX tar with xattrs (binary and empty), long names, links, a fifo
#   corpus/mount_ops/  every fixture bootstrap with the bytes its chunks are read from: a u32 (LE)
#                      bootstrap length, the bootstrap, then a blob's first 64 KiB (all of the
#                      2-layer image's small second blob), so some chunks verify and reads
#                      succeed; each bootstrap with no blob bytes too
# The fixtures are found in the shared folder: $DFAGENT_SHARED, else ../shared beside the clone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fixtures=${DFAGENT_SHARED:-$here/../../shared}/fixtures/rafs
if [ ! -f "$fixtures/README.md" ]; then
  echo "seed.sh: no fixtures at $fixtures (set DFAGENT_SHARED to the shared folder)" >&2
  exit 1
fi
mkdir -p "$here/corpus/bootstrap" "$here/corpus/blob_meta"
n=0
for dir in "$fixtures"/v6-*/; do
  name=$(basename "$dir")
  cp "$dir/bootstrap" "$here/corpus/bootstrap/$name"
  chmod u+w "$here/corpus/bootstrap/$name"
  for blob in "$dir"/blobs/*; do
    id=$(basename "$blob")
    blob_size=$(stat -c %s "$blob")
    for size in 8192 32768 65536; do
      if [ "$size" -ge "$blob_size" ]; then
        cp "$blob" "$here/corpus/blob_meta/$name-${id:0:12}-whole"
        chmod u+w "$here/corpus/blob_meta/$name-${id:0:12}-whole"
        break
      fi
      tail -c "$size" "$blob" > "$here/corpus/blob_meta/$name-${id:0:12}-tail$size"
    done
  done
  n=$((n + 1))
done
mkdir -p "$here/corpus/mount_ops"
# u32 LE length of $1, $1, then the first $3 bytes of $2 (or nothing).
mount_seed() {
  python3 - "$@" <<'PY'
import struct, sys
boot = open(sys.argv[1], "rb").read()
blob = open(sys.argv[2], "rb").read(int(sys.argv[3])) if len(sys.argv) > 2 else b""
sys.stdout.buffer.write(struct.pack("<I", len(boot)) + boot + blob)
PY
}
for dir in "$fixtures"/v6-*/; do
  name=$(basename "$dir")
  smallest=$(ls -S "$dir"/blobs/* | tail -1)
  mount_seed "$dir/bootstrap" "$smallest" 65536 > "$here/corpus/mount_ops/$name"
  mount_seed "$dir/bootstrap" > "$here/corpus/mount_ops/$name-no-blob"
done
mkdir -p "$here/corpus/tar_layer"
layer2=$fixtures/v6-nydusify-2layer/layer2.tar
cp "$layer2" "$here/corpus/tar_layer/layer2.tar"
chmod u+w "$here/corpus/tar_layer/layer2.tar"
gzip -n -c "$layer2" > "$here/corpus/tar_layer/layer2.tar.gz"
if command -v zstd >/dev/null; then zstd -q -c "$layer2" > "$here/corpus/tar_layer/layer2.tar.zst"; fi
tmp=$(mktemp -d)
mkdir -p "$tmp/t/d"
printf 'x' > "$tmp/t/d/$(printf 'n%.0s' $(seq 120))"
printf 'hello\n' > "$tmp/t/f"
ln "$tmp/t/f" "$tmp/t/hard"
ln -s f "$tmp/t/sym"
mkfifo "$tmp/t/fifo"
python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.bin", bytes(range(256))); os.setxattr(sys.argv[1], "user.empty", b"")' "$tmp/t/f" 2>/dev/null || true
tar --format=pax --xattrs --xattrs-include='*' -C "$tmp/t" -cf "$here/corpus/tar_layer/gnu-pax.tar" .
tar --format=gnu -C "$tmp/t" -cf "$here/corpus/tar_layer/gnu.tar" .
rm -rf "$tmp"
echo "seeded $n bootstraps into corpus/bootstrap and $(ls "$here/corpus/blob_meta" | wc -l) blob tails into corpus/blob_meta, $(ls "$here/corpus/tar_layer" | wc -l) layers into corpus/tar_layer, $(ls "$here/corpus/mount_ops" | wc -l) images into corpus/mount_ops"
# corpus/peer_messages/: a chunk request frame followed by an answer to it (FOUND in two pieces,
# MISSING, BUSY), a refusal, and an answer to the fuzz target's fixed request.
mkdir -p "$here/corpus/peer_messages"
python3 - "$here/corpus/peer_messages" <<'PY'
import hashlib, struct, sys
out = sys.argv[1]
def varint(n):
    b = b""
    while True:
        x = n & 0x7f; n >>= 7
        if n: b += bytes([x | 0x80])
        else: return b + bytes([x])
def field(no, wt, payload):
    key = varint(no << 3 | wt)
    return key + (varint(payload) if wt == 0 else varint(len(payload)) + payload)
def frame(m): return struct.pack(">I", len(m)) + m
def wanted(d, size, usize, comp):
    return field(1, 0, 1) + field(2, 2, d) + field(3, 0, 4096) + field(4, 0, size) + field(5, 0, usize) + field(6, 0, comp)
def answer(d, status, size=0, comp=0):
    m = field(1, 0, 1) + field(2, 2, d) + field(3, 0, status)
    if size: m += field(4, 0, size) + field(5, 0, comp)
    return m
blob = bytes([7]) * 32
ds = [hashlib.blake2b(bytes([i]), digest_size=32).digest() for i in range(3)]
req = field(1, 2, blob) + b"".join(field(2, 2, wanted(d, 100, 200, 3)) for d in ds)
hdr = field(1, 2, b"".join(field(1, 2, a) for a in [answer(ds[0], 1, 100, 3), answer(ds[1], 2), answer(ds[2], 3)]))
pieces = frame(field(1, 2, b"a" * 60)) + frame(field(1, 2, b"b" * 40))
open(f"{out}/request-answer", "wb").write(frame(req) + frame(hdr) + pieces)
refusal = field(2, 2, field(1, 0, 3) + field(2, 2, b"busy"))
open(f"{out}/request-refusal", "wb").write(frame(req) + frame(refusal))
open(f"{out}/request", "wb").write(frame(req))
# The fixed request's digests are blake3 of 0, 1, 2: python has no blake3, so this answer names
# wrong digests; the fuzzer still learns the header's shape from it.
open(f"{out}/answer", "wb").write(frame(hdr) + pieces)
PY
# corpus/dragonfly_messages/: scheduler answers as protobuf: ListHostsResponse with seed peers (one
# per host type, a bad ip, a bad port, a duplicate id) and StatImageResponse with two layers on two
# seed peers (one finished everywhere, one in progress).
mkdir -p "$here/corpus/dragonfly_messages"
python3 - "$here/corpus/dragonfly_messages" <<'PY'
import sys
out = sys.argv[1]
def varint(n):
    n &= (1 << 64) - 1
    b = b""
    while True:
        x = n & 0x7f; n >>= 7
        if n: b += bytes([x | 0x80])
        else: return b + bytes([x])
def field(no, wt, payload):
    key = varint(no << 3 | wt)
    if wt == 0: return key + varint(payload)
    if isinstance(payload, str): payload = payload.encode()
    return key + varint(len(payload)) + payload
def host(id, ty, ip, port, proxy, name):
    return (field(1, 2, id) + field(2, 0, ty) + field(3, 2, "host-" + id) + field(4, 2, ip)
            + field(5, 0, port) + field(6, 0, port) + field(19, 0, proxy) + field(20, 2, name))
hosts = [host("10.0.0.1-a-seed", 1, "10.0.0.1", 4000, 4001, "ns-a"),
         host("10.0.0.2-b-seed", 2, "10.0.0.2", 4000, 4001, "ns-b"),
         host("10.0.0.3-c", 0, "10.0.0.3", 4000, 4001, "ns-c"),
         host("fe80::1-d-seed", 3, "fe80::1", 4000, 4001, ""),
         host("bad-ip", 1, "10.0.0.300", 4000, 4001, "x"),
         host("bad-port", 1, "10.0.0.5", -1, 70000, "x"),
         host("10.0.0.1-a-seed", 1, "10.0.0.9", 4000, 4001, "ns-a")]
open(f"{out}/list-hosts", "wb").write(b"".join(field(1, 2, h) for h in hosts))
blob = lambda c: "http://reg:5000/v2/app/blobs/sha256:" + c * 64
layer = lambda url, fin=None: field(1, 2, url) + (field(2, 0, fin) if fin is not None else b"")
image = field(1, 2, b"".join(field(1, 2, layer(blob(c))) for c in "ab"))
peer = lambda ip, layers: field(1, 2, ip) + field(2, 2, "seed-" + ip) + b"".join(field(3, 2, l) for l in layers)
peers = [peer("10.0.0.1", [layer(blob("a"), 1), layer(blob("b"), 0)]), peer("10.0.0.2", [layer(blob("a"), 1)])]
open(f"{out}/stat-image", "wb").write(field(1, 2, image) + b"".join(field(2, 2, p) for p in peers))
PY
# corpus/containerd_filter/: filters as containerd and its clients send them (newline-separated
# filters of one request): the metadata store's walk after a remote snapshot, kinds, presence,
# regular expressions in each quoting, Go escapes.
mkdir -p "$here/corpus/containerd_filter"
f=$here/corpus/containerd_filter
printf '%s' 'labels."containerd.io/snapshot.ref"==sha256:abc,parent==""' > "$f/remote-walk"
printf '%s\n%s' 'kind==committed' 'labels.x' > "$f/or"
printf '%s' 'name~=/^default\/3\//,kind!=view' > "$f/regex-slash"
printf '%s' 'name~=|sha256:[a-f]+$|' > "$f/regex-bar"
printf '%s' 'name=="default\x2f3\u002fsha256:abc\101"' > "$f/escapes"
