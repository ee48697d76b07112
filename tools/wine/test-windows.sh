#!/usr/bin/env bash
# Builds the workspace for Windows (x86_64-pc-windows-gnu, linked by
# mingw-w64) and runs it under Wine, on this Linux machine.
#
#   tools/wine/test-windows.sh          smoke, then all of session-core's
#                                       unit tests and the session, hostile
#                                       and app tests (integration-tests:
#                                       sessions, hostile, apps, elsewhere),
#                                       then interop.sh: the Windows apps
#                                       with Linux peers and back
#                                       (nc, Python, client-app)
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

# Installs what is missing, sets target, target_dir, win_debug and Wine's
# environment (shared with interop.sh, which can also run alone).
. tools/wine/env.sh

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

help_starts() {
  local exe
  for app in server-app client-app; do
    exe="$win_debug/$app.exe"
    wine "$exe" --help >"$target_dir/wine-$app-help.txt"
    grep -q -- "--port" "$target_dir/wine-$app-help.txt" || {
      echo "$app.exe --help under Wine printed no --port:" >&2
      cat "$target_dir/wine-$app-help.txt" >&2
      return 1
    }
    echo "$app.exe --help: ok"
  done
}

step "prefix" wine_prefix_init
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
  step "session, hostile, app, TLS and WebSocket tests" cargo test --target "$target" -p integration-tests \
    --no-fail-fast --test sessions --test hostile --test apps --test elsewhere --test tls \
    --test websocket
  # The Windows apps with Linux peers, and the Linux apps with Windows
  # peers, over 127.0.0.1: nc, Python, client-app both ways (interop.sh).
  step "build Linux apps" cargo build -p server-app -p client-app
  step "interop (Windows apps with Linux peers)" tools/wine/interop.sh
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf '== wine: failed: %s\n' "${failed[@]}"
  exit 1
fi
