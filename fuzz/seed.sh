#!/usr/bin/env bash
# Seed the fuzz corpora from the RAFS fixtures (corpus/ is not committed):
#   corpus/bootstrap/  every fixture bootstrap
#   corpus/blob_meta/  the tails of every fixture blob (chunk-info array and header, TOC)
# The fixtures are found at ../../shared/fixtures/rafs from this folder, or at $DFAGENT_FIXTURES.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fixtures=${DFAGENT_FIXTURES:-$here/../../shared/fixtures/rafs}
if [ ! -f "$fixtures/README.md" ]; then
  echo "seed.sh: no fixtures at $fixtures (set DFAGENT_FIXTURES)" >&2
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
echo "seeded $n bootstraps into corpus/bootstrap and $(ls "$here/corpus/blob_meta" | wc -l) blob tails into corpus/blob_meta"
