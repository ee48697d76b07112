"""A WebSocket server of another make (Python's `websockets`) for the tests.

    python ws_server.py [--suffix TEXT] [--cert PEM --key PEM] [--quiet] [--fragment]

Listens on 127.0.0.1, a free port (wss with --cert and --key), prints
`Listening on 127.0.0.1:PORT`, and answers every message in its kind (text
or binary) with the message followed by TEXT (default: none). Unless
--quiet, it prints for the test, payloads in hex:

    connected PATH            a client upgraded, asking for PATH
    got KIND HEX              a message, before it is answered
    closed CODE               the client's close code (none: 1006)

With --fragment every reply goes as a fragmented message (two frames, the
first without FIN). It runs until it is killed (the test kills it by its PID).
"""

import argparse
import asyncio
import ssl

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


def say(args, line):
    if not args.quiet:
        print(line, flush=True)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--suffix", default="")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--fragment", action="store_true")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)

    async def send(ws, reply):
        if args.fragment and len(reply) > 1:
            # An iterable makes websockets send one message in two frames.
            await ws.send([reply[:1], reply[1:]])
        else:
            await ws.send(reply)

    async def echo(ws):
        say(args, f"connected {ws.request.path}")
        try:
            async for message in ws:
                if isinstance(message, str):
                    say(args, "got text " + message.encode("utf-8").hex())
                    await send(ws, message + args.suffix)
                else:
                    say(args, "got binary " + message.hex())
                    await send(ws, message + args.suffix.encode("utf-8"))
        except ConnectionClosed:
            pass
        say(args, f"closed {ws.close_code}")

    async with serve(
        echo, "127.0.0.1", 0, ssl=context, compression=None, max_size=4 * 1024 * 1024
    ) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        print(f"Listening on {host}:{port}", flush=True)
        await server.serve_forever()


asyncio.run(main())
