#!/usr/bin/env python3
"""Servers and clients for tests/integration/host_proxy.sh: the byte
sources, sinks and checkers on either end of `cloister host` forwards.
Independent of cloister's code (the PROXY v2 parser here is its own).

servers (print "peer: listening ..." when ready):
  echo  --listen ADDR          echo every byte; EOF -> shut down writing
  sink  --listen ADDR          read to EOF, then answer "<bytes> <sha256>\\n"
  pp2   --listen ADDR          read a PROXY v2 header, answer "src=A:P dst=A:P\\n", then echo
clients (exit 0 when the check holds):
  echo-check --connect ADDR --bytes N    N random bytes out and back, both hashed
  half-close --connect ADDR --bytes N    send, shut down writing, still get the sink's answer
  many       --connect ADDR --count N    N connections, 1 KiB each way, checked
  pp2-check  --connect ADDR --expect-dst HOST:PORT
  idle-check --connect ADDR --seconds S  the forwarder closes an idle connection within S
  hold       --connect ADDR --count N --hold S   N concurrent live connections, held S seconds
ADDR is HOST:PORT or unix:PATH.
"""
import argparse
import asyncio
import hashlib
import ipaddress
import os
import selectors
import socket
import struct
import sys
import threading
import time

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def say(*a):
    print("peer:", *a, flush=True)


def fail(msg):
    print("peer: FAIL:", msg, file=sys.stderr, flush=True)
    sys.exit(1)


def parse_addr(text):
    if text.startswith("unix:"):
        return socket.AF_UNIX, text[5:]
    host, port = text.rsplit(":", 1)
    return socket.AF_INET, (host, int(port))


def connect(text, timeout=30):
    family, addr = parse_addr(text)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    return s


# ---- servers -------------------------------------------------------------------------

async def echo(reader, writer):
    try:
        while True:
            data = await reader.read(1 << 20)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
        await reader.read()  # until the other side closes too
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def sink(reader, writer):
    h, n = hashlib.sha256(), 0
    try:
        while True:
            data = await reader.read(1 << 20)
            if not data:
                break
            h.update(data)
            n += len(data)
        writer.write(f"{n} {h.hexdigest()}\n".encode())
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def fmt(family, addr, port):
    return f"[{addr}]:{port}" if family == 2 else f"{addr}:{port}"


async def pp2(reader, writer):
    try:
        head = await reader.readexactly(16)
        if head[:12] != SIG or head[12] != 0x21:
            writer.write(b"bad signature or command\n")
            return
        fam, length = head[13], struct.unpack(">H", head[14:16])[0]
        body = await reader.readexactly(length)
        if fam == 0x11:
            src = ipaddress.IPv4Address(body[0:4])
            dst = ipaddress.IPv4Address(body[4:8])
            sp, dp = struct.unpack(">HH", body[8:12])
            line = f"src={fmt(1, src, sp)} dst={fmt(1, dst, dp)}\n"
        elif fam == 0x21:
            src = ipaddress.IPv6Address(body[0:16])
            dst = ipaddress.IPv6Address(body[16:32])
            sp, dp = struct.unpack(">HH", body[32:36])
            line = f"src={fmt(2, src, sp)} dst={fmt(2, dst, dp)}\n"
        elif fam == 0x31:
            src = body[0:108].rstrip(b"\0").decode()
            dst = body[108:216].rstrip(b"\0").decode()
            line = f"src=unix:{src} dst=unix:{dst}\n"
        else:
            line = f"family=0x{fam:02x}\n"
        writer.write(line.encode())
        await writer.drain()
        await echo(reader, writer)
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(args, handler):
    family, addr = parse_addr(args.listen)
    if family == socket.AF_UNIX:
        server = await asyncio.start_unix_server(handler, path=addr, backlog=4096)
    else:
        server = await asyncio.start_server(handler, addr[0], addr[1], backlog=4096, reuse_address=True)
    say("listening", args.listen)
    async with server:
        await server.serve_forever()


# ---- clients -------------------------------------------------------------------------

def echo_check(args):
    s = connect(args.connect, timeout=120)
    data = os.urandom(1 << 20)
    sent_hash = hashlib.sha256()
    total = args.bytes

    def sender():
        left = total
        while left:
            chunk = data[: min(left, len(data))]
            s.sendall(chunk)
            sent_hash.update(chunk)
            left -= len(chunk)
        s.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=sender)
    start = time.monotonic()
    t.start()
    got, h = 0, hashlib.sha256()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    t.join()
    secs = time.monotonic() - start
    if got != total or h.hexdigest() != sent_hash.hexdigest():
        fail(f"echo: sent {total} bytes {sent_hash.hexdigest()}, got {got} bytes {h.hexdigest()}")
    say(f"echo-check ok: {total} bytes each way, sha256 {h.hexdigest()[:16]}..., {total / secs / 1e6:.0f} MB/s")


def half_close(args):
    s = connect(args.connect)
    h = hashlib.sha256()
    left = args.bytes
    while left:
        chunk = os.urandom(min(left, 1 << 16))
        s.sendall(chunk)
        h.update(chunk)
        left -= len(chunk)
    s.shutdown(socket.SHUT_WR)
    answer = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        answer += chunk
    want = f"{args.bytes} {h.hexdigest()}\n".encode()
    if answer != want:
        fail(f"half-close: answer {answer!r}, want {want!r}")
    say("half-close ok: the answer arrived after our EOF, then EOF")


def many(args):
    errors = []
    lock = threading.Lock()
    per = (args.count + args.parallel - 1) // args.parallel

    def worker(k):
        for _ in range(per):
            with lock:
                if args.done[0] >= args.count:
                    return
                args.done[0] += 1
            try:
                s = connect(args.connect, timeout=20)
                payload = os.urandom(1024)
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while True:
                    c = s.recv(4096)
                    if not c:
                        break
                    got += c
                s.close()
                if got != payload:
                    raise RuntimeError(f"got {len(got)} bytes back, not the 1024 sent")
            except Exception as e:  # noqa: BLE001 - the test reports any failure
                with lock:
                    errors.append(str(e))

    args.done = [0]
    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - start
    if errors:
        fail(f"many: {len(errors)} of {args.count} connections failed, first: {errors[0]}")
    say(f"many ok: {args.count} connections, 1 KiB each way, {args.count / secs:.0f}/s")


def pp2_check(args):
    s = connect(args.connect)
    line = b""
    while not line.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            break
        line += c
    me = s.getsockname()
    want = f"src={me[0]}:{me[1]} dst={args.expect_dst}\n".encode()
    if line != want:
        fail(f"pp2: backend saw {line!r}, want {want!r}")
    s.sendall(b"after the header")
    s.shutdown(socket.SHUT_WR)
    rest = b""
    while True:
        c = s.recv(4096)
        if not c:
            break
        rest += c
    if rest != b"after the header":
        fail(f"pp2: the payload after the header came back as {rest!r}")
    say(f"pp2 ok: the backend saw {line.decode().strip()}")


def idle_check(args):
    s = connect(args.connect, timeout=args.seconds + 5)
    s.sendall(b"ping")
    if s.recv(4) != b"ping":
        fail("idle: no echo")
    start = time.monotonic()
    c = s.recv(1)  # nothing more is sent: the forwarder must close
    secs = time.monotonic() - start
    if c != b"" or secs > args.seconds:
        fail(f"idle: got {c!r} after {secs:.1f} s, want EOF within {args.seconds} s")
    say(f"idle ok: closed after {secs:.1f} s idle")


def hold(args):
    socks = []
    start = time.monotonic()
    family, addr = parse_addr(args.connect)
    for i in range(args.count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            s.connect(addr)
        except OSError as e:
            fail(f"hold: connection {i + 1} of {args.count}: {e}")
        s.setblocking(False)
        socks.append(s)
    opened = time.monotonic() - start
    # every connection at once: one byte out, the same byte back
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.send(bytes([i % 251]))
        sel.register(s, selectors.EVENT_READ, i)
    pending = len(socks)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            s, i = key.fileobj, key.data
            b = s.recv(1)
            if b != bytes([i % 251]):
                fail(f"hold: connection {i} answered {b!r}")
            sel.unregister(s)
            pending -= 1
    if pending:
        fail(f"hold: {pending} of {args.count} connections did not answer")
    say(f"holding {args.count} live connections (opened in {opened:.1f} s, all echoed)")
    time.sleep(args.hold)
    for s in socks:
        s.close()
    say("released")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("echo", "sink", "pp2"):
        sub.add_parser(name).add_argument("--listen", required=True)
    c = sub.add_parser("echo-check")
    c.add_argument("--connect", required=True)
    c.add_argument("--bytes", type=int, required=True)
    c = sub.add_parser("half-close")
    c.add_argument("--connect", required=True)
    c.add_argument("--bytes", type=int, default=1 << 20)
    c = sub.add_parser("many")
    c.add_argument("--connect", required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--parallel", type=int, default=8)
    c = sub.add_parser("pp2-check")
    c.add_argument("--connect", required=True)
    c.add_argument("--expect-dst", required=True)
    c = sub.add_parser("idle-check")
    c.add_argument("--connect", required=True)
    c.add_argument("--seconds", type=float, required=True)
    c = sub.add_parser("hold")
    c.add_argument("--connect", required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--hold", type=float, default=3)
    args = p.parse_args()
    servers = {"echo": echo, "sink": sink, "pp2": pp2}
    if args.cmd in servers:
        try:
            asyncio.run(serve(args, servers[args.cmd]))
        except KeyboardInterrupt:
            pass
        return
    {"echo-check": echo_check, "half-close": half_close, "many": many, "pp2-check": pp2_check,
     "idle-check": idle_check, "hold": hold}[args.cmd](args)


if __name__ == "__main__":
    main()
