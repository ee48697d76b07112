#!/usr/bin/env bash
# The Windows apps under Wine with Linux peers, and back, over 127.0.0.1
# (issue 12): does a Windows server-app.exe serve real Linux clients, and do
# the Windows and Linux builds talk to each other?
#
#   1. server-app.exe (plain echo: --suffix '') under Wine, on a free port;
#   2. 20 nc clients at once, each a distinct message sent in two parts,
#      each echo compared byte for byte;
#   3. one Python client sending 1 MiB (a known pattern), reading the echo
#      in whatever pieces it comes, comparing every byte, and checking that
#      nothing more comes before the server closes;
#   4. client-app.exe to server-app.exe, and the Linux client-app to
#      server-app.exe;
#   5. client-app.exe to a Linux server-app (default suffix), which is then
#      stopped with SIGTERM and must exit 0.
#
# Run by `tools/wine/test-windows.sh` (its last step), or alone after the
# builds it uses:
#   cargo build --target x86_64-pc-windows-gnu -p server-app -p client-app
#   cargo build -p server-app -p client-app
#   tools/wine/interop.sh
# (with the linker set as tools/wine/env.sh sets it, or after one run of
# test-windows.sh, which builds both.)
#
# Every wait has a timeout and the whole script is bounded (well under two
# minutes). Each failed check prints one line `interop: FAIL: ...` (after a
# few lines of the program's output, indented); the script goes on with the
# next check and exits 1 at the end if any failed.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The whole run is bounded: on overrun, timeout sends SIGTERM (the trap
# below stops the servers) and SIGKILL 5 s later.
if [ -z "${INTEROP_BOUNDED:-}" ]; then
  INTEROP_BOUNDED=1 exec timeout -k 5 110 "$0" "$@"
fi

. tools/wine/env.sh
command -v nc >/dev/null 2>&1 || apt_install netcat-openbsd
command -v python3 >/dev/null 2>&1 || {
  echo "interop: FAIL: python3 is missing" >&2
  exit 1
}

linux_debug="$target_dir/debug"
for exe in "$win_debug/server-app.exe" "$win_debug/client-app.exe" \
  "$linux_debug/server-app" "$linux_debug/client-app"; do
  [ -x "$exe" ] || [ -f "$exe" ] || {
    echo "interop: FAIL: ${exe#"$target_dir"/} is not built (see the top of $0)" >&2
    exit 1
  }
done

work="$target_dir/wine-interop"
rm -rf "$work"
mkdir -p "$work"

checks=0
failures=0
# Records a passed check.
pass() {
  checks=$((checks + 1))
  echo "interop: ok: $*"
}
# Records a failed check: one line, after the last lines of a log if given.
failed() {
  local log="${2:-}"
  checks=$((checks + 1))
  failures=$((failures + 1))
  if [ -n "$log" ] && [ -f "$log" ]; then
    tail -n 8 "$log" | sed 's/^/    /' >&2
  fi
  echo "interop: FAIL: $1" >&2
}

# The servers' PIDs (of the `timeout` around each, which passes a signal on
# to the server), stopped on any exit.
servers=()
started_wine=0
cleanup() {
  local pid
  for pid in "${servers[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Only this script's throwaway prefix (WINEPREFIX from env.sh).
  if [ "$started_wine" = 1 ]; then
    timeout 10 wineserver -k 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# start_server NAME COMMAND...: starts a server-app, bounded to 100 s, and
# waits (at most 30 s: Wine's start is slow) for its `Listening on
# ADDR:PORT` line. Sets server_pid and server_port; exits on failure, since
# nothing can be checked without the server.
start_server() {
  local name="$1" log="$work/$1.log" i
  shift
  : >"$log" # exists before the first read below
  timeout 100 "$@" >"$log" 2>&1 &
  server_pid=$!
  servers+=("$server_pid")
  server_port=
  for ((i = 0; i < 150; i++)); do
    server_port="$(tr -d '\r' <"$log" |
      sed -n 's/^Listening on .*:\([0-9][0-9]*\)$/\1/p;T;q')"
    [ -n "$server_port" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.2
  done
  if [ -z "$server_port" ]; then
    failed "$name did not print 'Listening on ADDR:PORT' within 30 s" "$log"
    echo "interop: $failures of $checks checks failed" >&2
    exit 1
  fi
  pass "$name listening on 127.0.0.1:$server_port"
}

# wait_exit PID SECONDS: waits for a child to end, at most SECONDS; then
# kills it. Sets exit_status.
wait_exit() {
  local pid="$1" i
  for ((i = 0; i < $2 * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  exit_status=0
  wait "$pid" || exit_status=$?
}

# greet NAME PORT EXPECTED_SUFFIX COMMAND...: runs a client-app greeting
# mode (2 greetings, 0.2 s apart), asserts status 0 and that the replies it
# printed are exactly each greeting followed by the suffix.
greet() {
  local name="$1" port="$2" suffix="$3" log="$work/$1.log" status=0 replies expected
  shift 3
  timeout 30 "$@" --host 127.0.0.1 --port "$port" --count 2 --interval 0.2 --wait 5 \
    --message "$name {i}" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    failed "$name: client-app exited with status $status" "$log"
    return
  fi
  # The replies' text, joined: a reply may arrive in two reads, or two in
  # one, so the lines are compared together, exactly.
  replies="$(tr -d '\r' <"$log" |
    sed -n 's/^\[[0-9:]*\] From server - Len : [0-9]*, String : //p' | tr -d '\n')"
  expected="$name 0$suffix$name 1$suffix"
  if [ "$replies" != "$expected" ]; then
    failed "$name: client-app printed the replies '$replies', not '$expected'" "$log"
    return
  fi
  pass "$name: 2 greetings answered with '$name 0$suffix' and '$name 1$suffix', status 0"
}

# 1. The Windows server. Its Linux PID is the `wine` process we spawn (Wine
# execs its loader in place), the child of its `timeout`. At the end it is
# killed (SIGTERM, passed on by `timeout`) rather than asked to shut down:
# Windows console events are hard to deliver under Wine (README, Platforms),
# killing the wine process is enough to end a test server, and server-app's
# graceful shutdown is tested on Linux (step 5, and the app tests).
wine_prefix_init
started_wine=1
start_server "server-app.exe" wine "$win_debug/server-app.exe" \
  --host 127.0.0.1 --port 0 --suffix '' --quiet
win_pid=$server_pid
win_port=$server_port

# 2. 20 nc clients at once. Each sends its message in two parts 0.5 s apart,
# so all 20 are connected at the same time, then shuts down its sending side
# (-N): the server closes after the echo and nc ends.
nc_count=20
nc_pids=()
letters=ABCDEFGHIJKLMNOPQRST
for ((i = 1; i <= nc_count; i++)); do
  printf 'nc client %02d of %d, ' "$i" "$nc_count" >"$work/nc-$i.a"
  letter="${letters:$((i - 1)):1}"
  printf 'then %d times %s: %s\n' "$((i * 53))" "$letter" \
    "$(head -c $((i * 53)) /dev/zero | tr '\0' "$letter")" >"$work/nc-$i.b"
  cat "$work/nc-$i.a" "$work/nc-$i.b" >"$work/nc-$i.sent"
  { cat "$work/nc-$i.a"; sleep 0.5; cat "$work/nc-$i.b"; } |
    timeout 15 nc -N 127.0.0.1 "$win_port" >"$work/nc-$i.got" 2>"$work/nc-$i.err" &
  nc_pids+=($!)
done
nc_bad=()
for ((i = 1; i <= nc_count; i++)); do
  status=0
  wait "${nc_pids[$((i - 1))]}" || status=$?
  if [ "$status" -ne 0 ] || ! cmp -s "$work/nc-$i.sent" "$work/nc-$i.got"; then
    nc_bad+=("client $i (nc status $status, sent $(wc -c <"$work/nc-$i.sent") bytes, got $(wc -c <"$work/nc-$i.got"))")
  fi
done
if [ ${#nc_bad[@]} -eq 0 ]; then
  pass "$nc_count nc clients at once: every echo exact"
else
  failed "nc: ${#nc_bad[@]} of $nc_count echoes wrong or missing: ${nc_bad[*]}"
fi

# 3. 1 MiB from Python, echoed in pieces.
py_status=0
timeout 40 python3 - 127.0.0.1 "$win_port" >"$work/python.log" 2>&1 <<'EOF' || py_status=$?
import socket, struct, sys, threading, time

host, port = sys.argv[1], int(sys.argv[2])
size = 1 << 20
# The known pattern: every 8-byte word is its own offset, big-endian, so a
# lost, repeated or reordered piece shows.
data = b"".join(struct.pack(">Q", offset) for offset in range(0, size, 8))
assert len(data) == size

sock = socket.create_connection((host, port), timeout=10)
send_error = []

def send():
    try:
        sock.sendall(data)
    except OSError as e:
        send_error.append(e)

# Sending and reading at once: the echo flows back while the rest is sent.
sender = threading.Thread(target=send)
started = time.monotonic()
sender.start()
got = bytearray()
pieces = 0
deadline = started + 30
try:
    while len(got) < size and time.monotonic() < deadline:
        piece = sock.recv(size - len(got))
        if not piece:
            break
        got += piece
        pieces += 1
except OSError as e:
    print(f"python: reading failed after {len(got)} bytes: {e}")
sender.join(10)
if send_error:
    print(f"python: sending failed: {send_error[0]}")
    sys.exit(1)
if bytes(got) != data[: len(got)] or len(got) != size:
    first = next((i for i in range(min(len(got), size)) if got[i] != data[i]), min(len(got), size))
    print(f"python: got {len(got)} of {size} bytes; the first wrong or missing byte is at offset {first}")
    sys.exit(1)
# Nothing more may come: end our side, the server closes after its echo.
sock.shutdown(socket.SHUT_WR)
extra = b""
try:
    while True:
        piece = sock.recv(65536)
        if not piece:
            break
        extra += piece
except OSError as e:
    print(f"python: waiting for the server to close: {e}")
    sys.exit(1)
if extra:
    print(f"python: {len(extra)} bytes more than the {size} sent")
    sys.exit(1)
print(f"python: {size} bytes echoed exactly, in {pieces} pieces, in {time.monotonic() - started:.2f} s")
EOF
if [ "$py_status" -eq 0 ]; then
  pass "$(tail -n 1 "$work/python.log")"
else
  failed "python 1 MiB echo (status $py_status): $(tail -n 1 "$work/python.log")" "$work/python.log"
fi

# 4. client-app both ways with the Windows server (plain echo).
greet "client-app.exe to server-app.exe" "$win_port" "" wine "$win_debug/client-app.exe"
greet "Linux client-app to server-app.exe" "$win_port" "" "$linux_debug/client-app"

# 5. client-app.exe with a Linux server (default suffix), then a graceful
# stop of that server: SIGTERM (passed on by its `timeout`), exit 0.
start_server "Linux server-app" "$linux_debug/server-app" --host 127.0.0.1 --port 0 --quiet
linux_pid=$server_pid
greet "client-app.exe to Linux server-app" "$server_port" " - Receive Completed" \
  wine "$win_debug/client-app.exe"
kill -TERM "$linux_pid"
wait_exit "$linux_pid" 10
if [ "$exit_status" -eq 0 ]; then
  pass "Linux server-app stopped by SIGTERM, status 0"
else
  failed "Linux server-app: status $exit_status after SIGTERM (0 expected)" "$work/Linux server-app.log"
fi
servers=("$win_pid")

# The Windows server served everything above and is still running: stop it.
if kill -0 "$win_pid" 2>/dev/null; then
  pass "server-app.exe still running after every client"
else
  failed "server-app.exe ended before it was stopped" "$work/server-app.exe.log"
fi
kill -TERM "$win_pid" 2>/dev/null || true
wait_exit "$win_pid" 10
servers=()
timeout 10 wineserver -k 2>/dev/null || true
started_wine=0

if [ "$failures" -gt 0 ]; then
  echo "interop: $failures of $checks checks failed ($SECONDS s, from the start of the script)" >&2
  exit 1
fi
echo "interop: all $checks checks passed ($SECONDS s, from the start of the script)"
