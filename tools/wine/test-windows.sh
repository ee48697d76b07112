#!/usr/bin/env bash
# Builds the workspace for Windows (x86_64-pc-windows-gnu, linked by
# mingw-w64) and runs it under Wine, on this Linux machine.
#
#   tools/wine/test-windows.sh          smoke, then all of session-core's
#                                       unit tests and the session, hostile
#                                       and app tests (integration-tests:
#                                       sessions, hostile, apps, elsewhere)
#   tools/wine/test-windows.sh smoke    only: `--help` of both apps, and the
#                                       unit tests of server-app, client-app
#                                       and session-core's framing
#
# Installs what it needs when missing (apt: wine, wine64,
# gcc-mingw-w64-x86-64; rustup: the target). Wine runs in a throwaway prefix
# under the target folder (delete it, or `cargo clean`, to start afresh),
# with Wine's own messages off. Debian's Wine lacks the DLL that Rust's std
# takes random bytes from; tools/wine/bcryptprimitives.c is a stand-in (see
# there), built here and put on WINEPATH.
#
# Each step prints its duration. Exits non-zero if any step failed, after
# running them all (but nothing runs after a failed build).
set -euo pipefail
cd "$(dirname "$0")/../.."

mode="${1:-all}"
case "$mode" in
  all | smoke) ;;
  *)
    echo "usage: $0 [smoke]" >&2
    exit 2
    ;;
esac

target=x86_64-pc-windows-gnu

need=()
command -v wine >/dev/null 2>&1 || need+=(wine)
[ -e /usr/lib/wine/wine64 ] || command -v wine64 >/dev/null 2>&1 || need+=(wine64)
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || need+=(gcc-mingw-w64-x86-64)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

target_dir="$(cargo metadata --no-deps --format-version 1 |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
shim_dir="$(dirname "$(tools/wine/build-shim.sh "$target_dir/wine-shim")")"

export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
export WINEPREFIX="$target_dir/wine-prefix"
export WINEDEBUG=-all
# No Mono or Gecko install prompts for a prefix that only runs console
# programs.
export WINEDLLOVERRIDES="mscoree,mshtml="
export WINEPATH="$shim_dir"
# The tests cannot run cargo from inside Wine: the apps are built below and
# the tests only look for them (integration_tests::process::PREBUILT_APPS).
export INTEGRATION_TESTS_PREBUILT_APPS=1

# Runs one step and prints its duration. A failed step is reported at once
# and remembered; the script goes on to the next, so one run reports on
# every step, and exits non-zero at the end.
failed=()
step() {
  local name="$1"
  shift
  local started=$SECONDS status=0
  echo "== wine: $name"
  "$@" || status=$?
  if [ "$status" -eq 0 ]; then
    echo "== wine: $name: $((SECONDS - started)) s"
  else
    echo "== wine: $name: FAILED (status $status) after $((SECONDS - started)) s"
    failed+=("$name")
  fi
}

prefix() {
  # Creates the prefix once (its first start takes a while), so that the
  # time of the first test is its own.
  [ -f "$WINEPREFIX/system.reg" ] || wineboot --init >/dev/null 2>&1
  wineserver --wait || true
}

help_starts() {
  local exe
  for app in server-app client-app; do
    exe="$target_dir/$target/debug/$app.exe"
    wine "$exe" --help >"$target_dir/wine-$app-help.txt"
    grep -q -- "--port" "$target_dir/wine-$app-help.txt" || {
      echo "$app.exe --help under Wine printed no --port:" >&2
      cat "$target_dir/wine-$app-help.txt" >&2
      return 1
    }
    echo "$app.exe --help: ok"
  done
}

step "prefix" prefix
step "build apps and tests" cargo build --target "$target" --workspace --all-targets
# Nothing below can run without the build.
[ ${#failed[@]} -eq 0 ] || exit 1
step "apps start (--help)" help_starts
step "unit tests (server-app, client-app, session-core framing)" bash -c "
  cargo test --target $target -p server-app -p client-app &&
  cargo test --target $target -p session-core --lib framing"

if [ "$mode" = all ]; then
  # The rest of the core's unit tests: its poller test needs the worker
  # poller's non-edge mode on IOCP, as the session tests do.
  step "session-core unit tests" cargo test --target "$target" -p session-core --lib
  # --no-fail-fast: every file runs and reports, even after a failure.
  step "session, hostile and app tests" cargo test --target "$target" -p integration-tests \
    --no-fail-fast --test sessions --test hostile --test apps --test elsewhere
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf '== wine: failed: %s\n' "${failed[@]}"
  exit 1
fi
