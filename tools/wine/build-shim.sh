#!/usr/bin/env bash
# Builds bcryptprimitives.dll (see bcryptprimitives.c for why Wine needs it)
# with mingw-w64 into the folder given as the first argument, unless it is
# there already and newer than its source. Prints the DLL's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out_dir="${1:?usage: build-shim.sh OUT_DIR}"
mkdir -p "$out_dir"
dll="$out_dir/bcryptprimitives.dll"
if [ ! -f "$dll" ] || [ "$here/bcryptprimitives.c" -nt "$dll" ]; then
  x86_64-w64-mingw32-gcc -shared -O2 -Wall -Werror \
    -o "$dll" "$here/bcryptprimitives.c" -ladvapi32
fi
echo "$dll"
