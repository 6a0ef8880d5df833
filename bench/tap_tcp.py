#!/usr/bin/env python3
"""TCP throughput for bench/tap.sh.

  tap_tcp.py serve HOST PORT        sends zeros to every client until it closes
  tap_tcp.py get HOST PORT SECONDS  reads for SECONDS, prints MB/s (10^6 bytes)
                                    and the machine's CPU (below)
  tap_tcp.py sink HOST PORT         reads and discards what every client sends
  tap_tcp.py put HOST PORT SECONDS  sends for SECONDS, prints MB/s (what the
                                    kernel took; the last socket buffer's worth
                                    may still be in flight, a few MB of many)
                                    and the machine's CPU (below)

get and put print "MBPS CPU_MS_PER_MB STEAL_PCT": besides the rate, the CPU
time the whole machine spent (user, system, irq, softirq from /proc/stat,
every process and the kernel's network stack on all cores) per MB moved over
the counted seconds, and the share of the cores' time the hypervisor took
(steal).  On a shared 2-core machine the rate swings with whatever else runs
and with steal; CPU per MB is what a path costs, and swings much less.
"""
import os
import socket
import sys
import threading
import time


def cpu_jiffies():
    """(busy, steal, total) jiffies of all cores, from /proc/stat's cpu line."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


def report(counted, elapsed, cpu_from, cpu_to):
    mb = counted / 1e6
    hz = os.sysconf("SC_CLK_TCK")
    busy_ms = (cpu_to[0] - cpu_from[0]) * 1000.0 / hz
    total = cpu_to[2] - cpu_from[2]
    steal_pct = 100.0 * (cpu_to[1] - cpu_from[1]) / total if total > 0 else 0.0
    print("%.1f %.3f %.1f" % (mb / elapsed if elapsed > 0 else 0, busy_ms / mb if mb > 0 else 0, steal_pct))


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
            counted_from, cpu_from = now, cpu_jiffies()
        elif counted_from is not None:
            counted += n
            if now - counted_from >= seconds:
                break
    cpu_to = cpu_jiffies()
    s.close()
    if counted_from is None:
        print("0 0 0")
        return
    report(counted, time.monotonic() - counted_from, cpu_from, cpu_to)


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
            counted_from, cpu_from = now, cpu_jiffies()
        elif counted_from is not None:
            counted += n
            if now - counted_from >= seconds:
                break
    cpu_to = cpu_jiffies()
    s.close()
    report(counted, time.monotonic() - counted_from, cpu_from, cpu_to)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "sink":
        sink(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "put":
        put(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        get(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
