"""A WebSocket client of another make (Python's `websockets`) for the tests.

    python ws_client.py URL [--ca CA_PEM]

Connects to URL (ws:// or wss://, then trusting only CA_PEM), then, each step
bounded by a timeout, prints one line per step for the Rust test to check
byte for byte (payloads in hex):

    local HOST:PORT           its own address, as the server sees it
    reply KIND HEX            the reply to each message, in the order sent:
                              a text message, a binary message, a 60 KB
                              binary message, a text and a binary message
                              sent in fragments
    pong                      the server answered a ping
    closed CODE               the close code the server answered with

It exits 0 when every step got an answer; anything else is an error on
stderr and exit 1.
"""

import argparse
import asyncio
import ssl
import sys

from websockets.asyncio.client import connect

STEP = 10  # seconds any one step may take

# What the test sends, in order; it knows the same list (ws_peers.rs).
MESSAGES = [
    "Hello, WebSocket \u2713",
    bytes(range(256)),
    bytes((i * 7 + 3) % 251 for i in range(60_000)),
]
FRAGMENTED = [
    ["frag", "mented ", "text"],
    [b"\x00\x01", b"\xfe", b"\xff binary"],
]


def say(line):
    print(line, flush=True)


def show(reply):
    if isinstance(reply, str):
        return "reply text " + reply.encode("utf-8").hex()
    return "reply binary " + reply.hex()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--ca")
    args = parser.parse_args()
    context = None
    if args.ca:
        context = ssl.create_default_context(cafile=args.ca)
    async with asyncio.timeout(STEP):
        ws = await connect(
            args.url, ssl=context, compression=None, max_size=4 * 1024 * 1024
        )
    host, port = ws.local_address[:2]
    say(f"local {host}:{port}")
    for message in MESSAGES:
        await ws.send(message)
        async with asyncio.timeout(STEP):
            say(show(await ws.recv()))
    for pieces in FRAGMENTED:
        # An iterable makes websockets send one message in several frames.
        await ws.send(pieces)
        async with asyncio.timeout(STEP):
            say(show(await ws.recv()))
    pong = await ws.ping(b"are you there")
    async with asyncio.timeout(STEP):
        await pong
    say("pong")
    async with asyncio.timeout(STEP):
        await ws.close(code=1000, reason="done")
    say(f"closed {ws.close_code}")


try:
    asyncio.run(main())
except Exception as e:  # every failure is one line and status 1
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
