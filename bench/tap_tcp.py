#!/usr/bin/env python3
"""TCP throughput for bench/tap.sh.

  tap_tcp.py serve HOST PORT        sends zeros to every client until it closes
  tap_tcp.py get HOST PORT SECONDS  reads for SECONDS, prints MB/s (10^6 bytes)
  tap_tcp.py sink HOST PORT         reads and discards what every client sends
  tap_tcp.py put HOST PORT SECONDS  sends for SECONDS, prints MB/s (what the
                                    kernel took; the last socket buffer's worth
                                    may still be in flight, a few MB of many)
"""
import socket
import sys
import threading
import time


def serve(host, port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(16)
    print("tap_tcp: listening", flush=True)
    chunk = bytes(1 << 20)

    def pump(c):
        try:
            while True:
                c.sendall(chunk)
        except OSError:
            pass
        c.close()

    while True:
        c, _ = ls.accept()
        threading.Thread(target=pump, args=(c,), daemon=True).start()


def get(host, port, seconds):
    s = socket.create_connection((host, port), timeout=10)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    # the first second is warm-up (TCP's window opening), not counted
    start = time.monotonic()
    counted_from, counted = None, 0
    while True:
        n = s.recv_into(view)
        if n == 0:
            break
        now = time.monotonic()
        total += n
        if counted_from is None and now - start >= 1.0:
            counted_from = now
        elif counted_from is not None:
            counted += n
            if now - counted_from >= seconds:
                break
    s.close()
    elapsed = time.monotonic() - counted_from if counted_from else 0
    print("%.1f" % (counted / elapsed / 1e6 if elapsed > 0 else 0))


def sink(host, port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(16)
    print("tap_tcp: sink listening", flush=True)

    def drain(c):
        buf = bytearray(1 << 20)
        try:
            while c.recv_into(buf):
                pass
        except OSError:
            pass
        c.close()

    while True:
        c, _ = ls.accept()
        threading.Thread(target=drain, args=(c,), daemon=True).start()


def put(host, port, seconds):
    s = socket.create_connection((host, port), timeout=10)
    chunk = memoryview(bytes(1 << 18))
    start = time.monotonic()
    counted_from, counted = None, 0
    while True:
        n = s.send(chunk)
        now = time.monotonic()
        if counted_from is None and now - start >= 1.0:
            counted_from = now
        elif counted_from is not None:
            counted += n
            if now - counted_from >= seconds:
                break
    s.close()
    elapsed = time.monotonic() - counted_from
    print("%.1f" % (counted / elapsed / 1e6 if elapsed > 0 else 0))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "sink":
        sink(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "put":
        put(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        get(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
