#!/usr/bin/env bash
# Builds dfagent's runtime image without Docker and without pulling anything from an image
# registry: buildah assembles it from a local Debian root filesystem (scripts/setup.sh caches
# one), fuse3 and ca-certificates unpacked from their Debian packages, and a dfagent binary.
# The result is the image docker/Dockerfile builds: /usr/local/bin/dfagent, the default
# configuration at /etc/dfagent/config.toml, root user, entrypoint
# `dfagent daemon --config /etc/dfagent/config.toml`.
#
#   docker/build-image.sh [--binary PATH] [--rootfs DIR] [--tag NAME] [--debs DIR] [--no-strip]
#                         [--root DIR --runroot DIR] [--storage-driver overlay|vfs] [--oci DIR]
#
#   --binary          the dfagent binary (default: $DFAGENT_BIN, else the release build, else
#                     the dev build under $DFAGENT_CACHE/target, else `dfagent` on PATH;
#                     $DFAGENT_CACHE defaults to /var/cache/dfagent)
#   --rootfs          root file system copied into the image, never modified
#                     (default: $DFAGENT_CACHE/rootfs/bookworm-minbase-python3)
#   --tag             image name (default: localhost/dfagent:dev)
#   --debs            where the .debs are cached (default: $DFAGENT_CACHE/debs); missing ones
#                     are fetched with `apt-get download`; without them the image has no
#                     fusermount3 (root mounts FUSE directly) and no CA bundle (HTTPS registries
#                     would then need registry.ca_file)
#   --no-strip        keep the binary's debug information (stripped by default)
#   --root/--runroot  containers-storage directories (default: the machine's); tests pass a
#                     temporary directory so they never touch the machine's images
#   --storage-driver  containers-storage driver (default: buildah's)
#   --oci DIR         also write the image as an OCI layout at DIR (for runc/umoci)
#
# Prints the image id on the last line of stdout. Every step is bounded by `timeout`.
set -euo pipefail

BIN="${DFAGENT_BIN:-}"
CACHE="${DFAGENT_CACHE:-/var/cache/dfagent}"
ROOTFS="$CACHE/rootfs/bookworm-minbase-python3"
TAG=localhost/dfagent:dev
DEBS="$CACHE/debs"
STRIP=1
OCI=""
STORAGE=()
DEB_PACKAGES=(fuse3 libfuse3-3 ca-certificates)

die() { echo "build-image: $*" >&2; exit 1; }
log() { echo "build-image: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) BIN="$2"; shift 2 ;;
        --rootfs) ROOTFS="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        --debs) DEBS="$2"; shift 2 ;;
        --no-strip) STRIP=0; shift ;;
        --root|--runroot|--storage-driver) STORAGE+=("$1" "$2"); shift 2 ;;
        --oci) OCI="$2"; shift 2 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

if [ -z "$BIN" ]; then
    for c in "$CACHE/target/release/dfagent" "$CACHE/target/debug/dfagent" \
        "$(command -v dfagent || true)"; do
        if [ -n "$c" ] && [ -x "$c" ]; then BIN="$c"; break; fi
    done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || die "no dfagent binary (build it, or pass --binary PATH)"
[ -d "$ROOTFS/usr" ] || die "no root file system at $ROOTFS (scripts/setup.sh makes it)"
command -v buildah >/dev/null || die "buildah is not installed (apt-get install buildah)"

bh() { timeout 600 buildah "${STORAGE[@]}" "$@"; }

# The packages the runtime needs beyond the base: fetched once, then taken from the cache.
mkdir -p "$DEBS"
debs=()
for p in "${DEB_PACKAGES[@]}"; do
    f=$(ls -1t "$DEBS/${p}"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$f" ]; then
        (cd "$DEBS" && timeout 120 apt-get download "$p" >&2) || true
        f=$(ls -1t "$DEBS/${p}"_*.deb 2>/dev/null | head -n1 || true)
    fi
    if [ -n "$f" ]; then debs+=("$f"); else log "warning: no .deb of $p; the image goes without it"; fi
done

ctr=""
cleanup() {
    if [ -n "$ctr" ]; then
        bh umount "$ctr" >/dev/null 2>&1 || true
        bh rm "$ctr" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

ctr=$(bh from --quiet scratch)
mnt=$(bh mount "$ctr")
log "copying $ROOTFS"
# tar keeps owners, modes, hard links, device nodes and extended attributes as they are.
timeout 600 tar -C "$ROOTFS" --xattrs --numeric-owner -cf - . |
    timeout 600 tar -C "$mnt" --xattrs --numeric-owner -xpf -

for f in "${debs[@]}"; do
    log "unpacking $(basename "$f")"
    # Not `dpkg-deb -x`: its tar would replace the merged-/usr symlinks (/lib -> usr/lib) with
    # directories, leaving the image without its dynamic loader.
    timeout 120 dpkg-deb --fsys-tarfile "$f" |
        timeout 120 tar -C "$mnt" --keep-directory-symlink --numeric-owner -xpf -
done
if [ -d "$mnt/usr/share/ca-certificates/mozilla" ]; then
    # What update-ca-certificates would do at install time: one bundle of the shipped roots.
    mkdir -p "$mnt/etc/ssl/certs"
    cat "$mnt"/usr/share/ca-certificates/mozilla/*.crt >"$mnt/etc/ssl/certs/ca-certificates.crt"
fi

log "installing $BIN"
install -d -m 0755 "$mnt/usr/local/bin" "$mnt/etc/dfagent" "$mnt/var/lib/dfagent" "$mnt/run/dfagent"
if [ "$STRIP" = 1 ] && command -v objcopy >/dev/null; then
    timeout 300 objcopy --strip-debug "$BIN" "$mnt/usr/local/bin/dfagent"
    chmod 0755 "$mnt/usr/local/bin/dfagent"
else
    install -m 0755 "$BIN" "$mnt/usr/local/bin/dfagent"
fi
# The default configuration, as the binary itself prints it (the Dockerfile does the same).
timeout 60 "$BIN" config --default >"$mnt/etc/dfagent/config.toml"
chmod 0644 "$mnt/etc/dfagent/config.toml"

bh config \
    --entrypoint '["/usr/local/bin/dfagent","daemon","--config","/etc/dfagent/config.toml"]' \
    --cmd '' \
    --user 0:0 \
    --workingdir / \
    --stop-signal SIGTERM \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --port 9464/tcp --port 7010/tcp \
    --label org.opencontainers.image.title=dfagent \
    --label org.opencontainers.image.description="dfagent node agent: lazy Nydus image mounts" \
    --os linux --arch "$(dpkg --print-architecture)" \
    "$ctr"
bh umount "$ctr" >/dev/null
log "committing $TAG"
id=$(bh commit --quiet --rm "$ctr" "$TAG")
ctr=""
if [ -n "$OCI" ]; then
    log "writing OCI layout $OCI"
    last=${TAG##*/}
    ref=latest
    case "$last" in *:*) ref=${last##*:} ;; esac
    bh push --quiet "$id" "oci:$OCI:$ref" >&2
fi
echo "$id"
