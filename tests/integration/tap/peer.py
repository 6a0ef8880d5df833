#!/usr/bin/env python3
"""The enclave's side of the TAP stream, for the tests: an independent peer
written from the protocol's description (docs/tap.md), sharing no code with
cloister.  It creates a TAP device in the namespace it runs in, connects to
the parent's unix socket, sends gvproxy's handshake (an HTTP/1.1
`POST /connect` request head, no answer expected) and relays Ethernet frames
each way, each preceded by its length as 16 bits little-endian.  When the
stream ends it connects again (as an enclave's relay does when the parent
restarts), logging `peer: connected N` each time.

  peer.py --connect PATH [--dev tap0]
  peer.py --raw PATH HEX       sends the handshake, then the bytes HEX, then
                               reads until the parent closes (exit 0) or 3 s
                               pass (exit 1): for the malformed-frame checks
"""
import argparse
import fcntl
import os
import select
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
HANDSHAKE = b"POST /connect HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n\r\n"


def log(msg):
    print("peer: " + msg, flush=True)


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def connect(path):
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.sendall(HANDSHAKE)
            return s
        except OSError:
            s.close()
            time.sleep(0.1)


def relay(tap, path):
    count = 0
    while True:
        s = connect(path)
        count += 1
        log("connected %d" % count)
        buf = b""
        alive = True
        while alive:
            r, _, _ = select.select([tap, s], [], [], 1.0)
            if s in r:
                try:
                    data = s.recv(262144)
                except OSError:
                    data = b""
                if not data:
                    alive = False
                    break
                buf += data
                while len(buf) >= 2:
                    n = buf[0] | buf[1] << 8
                    if len(buf) < 2 + n:
                        break
                    try:
                        os.write(tap, buf[2:2 + n])
                    except OSError:
                        pass
                    buf = buf[2 + n:]
            if tap in r:
                out = b""
                for _ in range(64):
                    try:
                        frame = os.read(tap, 65536)
                    except BlockingIOError:
                        break
                    out += struct.pack("<H", len(frame)) + frame
                try:
                    s.sendall(out)
                except OSError:
                    alive = False
        s.close()
        log("disconnected %d" % count)


def raw(path, hexbytes):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    data = bytes.fromhex(hexbytes)
    if not data.startswith(b"POST") and not data.startswith(b"GET"):
        data = HANDSHAKE + data
    s.sendall(data)
    s.settimeout(3)
    try:
        while s.recv(65536):
            pass
    except socket.timeout:
        log("the parent kept the stream open")
        return 1
    except ConnectionResetError:
        pass
    log("the parent closed the stream")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect")
    ap.add_argument("--dev", default="tap0")
    ap.add_argument("--raw", nargs=2)
    a = ap.parse_args()
    if a.raw:
        sys.exit(raw(*a.raw))
    tap = open_tap(a.dev)
    log("%s ready" % a.dev)
    relay(tap, a.connect)


if __name__ == "__main__":
    main()
