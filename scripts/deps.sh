#!/usr/bin/env bash
# Installs what building and testing standin needs and a fresh Debian machine
# lacks: protoc and its well-known types (etcd-client's build), etcd and etcdctl (tests and demo),
# promtool (Debian's prometheus package: tests check deploy/monitoring's alert rules with it).
set -euo pipefail

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/descriptor.proto, imported by
# etcd's protos) come with libprotobuf-dev, only a recommendation of
# protobuf-compiler, which --no-install-recommends leaves out.
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

install=(apt-get install -y --no-install-recommends "${missing[@]}")
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo)
else
  echo "standin needs: ${missing[*]}" >&2
  echo "install them as root with:" >&2
  echo "  apt-get update && ${install[*]}" >&2
  exit 1
fi

echo "installing ${missing[*]} ..."
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" "${install[@]}"
