#!/usr/bin/env bash
# scripts/opencl_device_check.sh with stand-ins for clinfo on PATH: many platforms (the
# listing outlives an early-exiting grep), one device, none, and clinfo failing.
set -euo pipefail
check=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fake() { # fake NAME BODY: a clinfo stand-in in $tmp/NAME/clinfo
  mkdir -p "$tmp/$1"
  printf '#!/usr/bin/env bash\n%s\n' "$2" >"$tmp/$1/clinfo"
  chmod +x "$tmp/$1/clinfo"
}
fake many 'echo "Platform #0: PoCL"; echo " \`-- Device #0: cpu"
for i in $(seq 1 20000); do echo "Platform #$i: Other platform $i"; done'
fake one 'echo "Platform #0: PoCL"; echo " \`-- Device #0: cpu"'
fake none 'echo "Platform #0: Clover"'
fake broken 'exit 3'
expect() { # expect WANT_STATUS NAME
  set +e
  PATH="$tmp/$2:$PATH" bash "$check" 2>/dev/null
  got=$?
  set -e
  if [ "$got" -ne "$1" ]; then
    echo "clinfo stand-in '$2': exit $got, expected $1" >&2
    exit 1
  fi
  echo "clinfo stand-in '$2': exit $got as expected"
}
expect 0 many
expect 0 one
expect 1 none
expect 1 broken
