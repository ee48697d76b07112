# Sourced (not run) by test-windows.sh and interop.sh: what both need to
# build for Windows and run under Wine, set up once in one place.
#
# Installs what is missing (apt: wine, wine64, gcc-mingw-w64-x86-64;
# rustup: the target), builds the bcryptprimitives.dll stand-in, and sets:
#   target       x86_64-pc-windows-gnu
#   target_dir   cargo's target folder
#   win_debug    where the Windows debug binaries are
# and exports the linker, the runner and Wine's environment (a throwaway
# WINEPREFIX under the target folder, Wine's messages off, the shim on
# WINEPATH). Expects to be sourced from the workspace root.

target=x86_64-pc-windows-gnu

# Installs the given Debian packages with apt-get (through sudo unless root).
apt_install() {
  [ $# -gt 0 ] || return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

wine_need=()
command -v wine >/dev/null 2>&1 || wine_need+=(wine)
[ -e /usr/lib/wine/wine64 ] || command -v wine64 >/dev/null 2>&1 || wine_need+=(wine64)
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || wine_need+=(gcc-mingw-w64-x86-64)
apt_install "${wine_need[@]}"
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

target_dir="$(cargo metadata --no-deps --format-version 1 |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
win_debug="$target_dir/$target/debug"
shim_dir="$(dirname "$(tools/wine/build-shim.sh "$target_dir/wine-shim")")"

export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
export WINEPREFIX="$target_dir/wine-prefix"
export WINEDEBUG=-all
# No Mono or Gecko install prompts for a prefix that only runs console
# programs.
export WINEDLLOVERRIDES="mscoree,mshtml="
export WINEPATH="$shim_dir"
# The tests cannot run cargo from inside Wine: the apps are built first and
# the tests only look for them (integration_tests::process::PREBUILT_APPS).
export INTEGRATION_TESTS_PREBUILT_APPS=1

# Creates the prefix once (its first start takes a while), so that the time
# of the first program run in it is its own.
wine_prefix_init() {
  [ -f "$WINEPREFIX/system.reg" ] || wineboot --init >/dev/null 2>&1
  wineserver --wait || true
}
