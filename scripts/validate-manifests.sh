#!/usr/bin/env bash
# Validates every Kubernetes manifest under docker/kubernetes/ offline against the Kubernetes
# OpenAPI schemas of one fixed version, strictly (unknown fields are errors), with
# kubernetes-validate from PyPI. The tool is installed once per machine into its own virtual
# environment (no system Python packages touched).
#
#   scripts/validate-manifests.sh [FILE.yaml...]      # default: docker/kubernetes/*.yaml
#
# KUBERNETES_VERSION (default 1.31.0: the oldest version the manifests are meant for; they use
# Job podFailurePolicy, GA in 1.31) picks the schemas; KUBERNETES_VALIDATE_VENV the venv.
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION="${KUBERNETES_VERSION:-1.31.0}"
TOOL_VERSION=1.37.0
VENV="${KUBERNETES_VALIDATE_VENV:-${DFAGENT_CACHE:-/var/cache/dfagent}/venv/kubernetes-validate}"
KV="$VENV/bin/kubernetes-validate"

if ! { [ -x "$KV" ] && "$KV" --version 2>/dev/null | grep -q "$TOOL_VERSION"; }; then
    echo "validate-manifests: installing kubernetes-validate==$TOOL_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    timeout 600 "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$TOOL_VERSION"
fi

if [ $# -gt 0 ]; then
    files=("$@")
else
    shopt -s nullglob
    files=(docker/kubernetes/*.yaml)
fi
[ ${#files[@]} -gt 0 ] || { echo "validate-manifests: no manifests found" >&2; exit 1; }

# Each file must hold at least one document, and every document must validate.
for f in "${files[@]}"; do
    grep -qE '^kind:' "$f" || { echo "validate-manifests: $f holds no manifest" >&2; exit 1; }
done
timeout 300 "$KV" --strict --kubernetes-version "$VERSION" "${files[@]}"
echo "validate-manifests: ${#files[@]} files valid for Kubernetes $VERSION (strict)"
