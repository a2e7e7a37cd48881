#!/usr/bin/env bash
# Makes the compose cluster's secrets in deploy/compose/secrets/ (or DIR),
# keeping any that exist: the witness secret every node shares, the API's
# tokens file (name:token lines) and the operators' token. The containers
# run as uid/gid 10001, which must be able to read them.
set -euo pipefail
dir=${1:-$(cd "$(dirname "$0")" && pwd)/secrets}
mkdir -p "$dir"
random() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n'; }
# Readable by the containers' group only where we may give them to it.
if [ "$(id -u)" -eq 0 ]; then
  owner=(-g 10001 -m 640)
else
  owner=(-m 644)
fi
write() {
  local name=$1 text=$2
  [ -s "$dir/$name" ] && return 0
  local file
  file=$(mktemp)
  printf '%s\n' "$text" >"$file"
  install "${owner[@]}" "$file" "$dir/$name"
  rm -f "$file"
}
write witness-secret "$(random)"
write api-token "$(random)"
write api-tokens "ops:$(cat "$dir/api-token")"
echo "secrets in $dir"
