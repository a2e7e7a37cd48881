#!/usr/bin/env bash
# Builds a container image FROM scratch around one binary: the binary, the
# shared libraries it links (as ldd lists them), an unprivileged user, and
# for standin its documented config. No base image is pulled.
#
#   deploy/image.sh standin target/release/standin localhost/standin:latest
#   deploy/image.sh etcd /usr/bin/etcd localhost/standin-etcd:latest
#
# BUILDER picks the tool (podman by default; docker works the same way).
set -euo pipefail

usage() {
  echo "usage: $0 standin|etcd BINARY TAG" >&2
  exit 2
}
[ $# -eq 3 ] || usage
kind=$1 binary=$2 tag=$3
builder=${BUILDER:-podman}
here=$(cd "$(dirname "$0")" && pwd)
case $kind in
  standin) containerfile=$here/Containerfile ;;
  etcd) containerfile=$here/Containerfile.etcd ;;
  *) usage ;;
esac
[ -x "$binary" ] || { echo "$0: $binary is not an executable" >&2; exit 2; }

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs=$context/rootfs
mkdir -p "$rootfs/usr/bin" "$rootfs/etc" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"

# Copies a binary and every shared library it links, at the same paths.
add_binary() {
  install -m 755 "$1" "$rootfs/usr/bin/$2"
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r library; do
      mkdir -p "$rootfs$(dirname "$library")"
      cp -L "$library" "$rootfs$library"
    done
}

# The unprivileged user every process of the image runs as.
printf 'root:x:0:0:root:/:/nonexistent\n%s:x:10001:10001:%s:/:/nonexistent\n' "$kind" "$kind" >"$rootfs/etc/passwd"
printf 'root:x:0:\n%s:x:10001:\n' "$kind" >"$rootfs/etc/group"

case $kind in
  standin)
    add_binary "$binary" standin
    mkdir -p "$rootfs/etc/standin"
    cp "$here/../config/standin.yaml" "$rootfs/etc/standin/standin.yaml"
    ;;
  etcd)
    add_binary "$binary" etcd
    # etcdctl beside it, for health checks and by hand.
    etcdctl=${ETCDCTL:-$(command -v etcdctl)}
    add_binary "$etcdctl" etcdctl
    # Copied apart, to be owned by the etcd user (COPY --chown).
    mkdir -p "$context/data/etcd"
    chmod 700 "$context/data/etcd"
    ;;
esac

# podman and buildah write OCI images by default, which drop HEALTHCHECK;
# docker writes its own format anyway.
format=()
case $(basename "$builder") in
  podman | buildah) format=(--format docker) ;;
esac
"$builder" build --quiet "${format[@]}" -f "$containerfile" -t "$tag" "$context"
