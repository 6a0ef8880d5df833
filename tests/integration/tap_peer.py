#!/usr/bin/env python3
"""The parent's end of gvproxy's stream protocol, written for the tests from
the README's description ("gvproxy wire protocol") and nothing else of
cloister's: it accepts the stream on a unix socket, requires the
`POST /connect` request, then bridges frames (16-bit little-endian length,
then the Ethernet frame) to a TAP device in the namespace it runs in, where
the kernel routes and nftables masquerades.  It also answers DNS on the
gateway address for a few test names.

  tap_peer.py --listen PATH --tap NAME --gateway 192.168.127.1/24
              [--a NAME=IP ...] [--cname NAME=TARGET ...]
              [--evil short|oversized|garbage|http]

With --evil it sends, right after the handshake, a malformed stream instead
of frames (a length below an Ethernet header, one above any MTU, random
bytes, an HTTP reply), then keeps the connection open until the other side
closes it, and logs "evil: peer closed".
"""
import argparse
import fcntl
import os
import socket
import struct
import subprocess
import sys
import threading

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def log(*a):
    print("tap_peer:", *a, flush=True)


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError("stream closed")
        buf += chunk
    return buf


def read_connect(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(1)  # byte by byte: frames may follow the head directly
        if not chunk:
            raise EOFError("closed before the request ended")
        head += chunk
        if len(head) > 4096:
            raise ValueError("request head too long")
    line = head.split(b"\r\n", 1)[0]
    if line != b"POST /connect HTTP/1.1":
        raise ValueError("unexpected request line %r" % line)
    fields = {}
    for f in head.split(b"\r\n")[1:]:
        if f:
            k, _, v = f.partition(b":")
            fields[k.strip().lower()] = v.strip()
    if b"host" not in fields:
        raise ValueError("no Host field")
    if fields.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in fields:
        raise ValueError("the request has a body")
    return head


def bridge(conn, tap):
    stop = threading.Event()

    def tap_to_stream():
        try:
            while not stop.is_set():
                frame = os.read(tap, 65535)
                conn.sendall(struct.pack("<H", len(frame)) + frame)
        except OSError:
            pass
        stop.set()

    t = threading.Thread(target=tap_to_stream, daemon=True)
    t.start()
    try:
        while True:
            (n,) = struct.unpack("<H", read_exact(conn, 2))
            frame = read_exact(conn, n)
            os.write(tap, frame)
    except (EOFError, OSError) as e:
        log("stream ended:", e)
    stop.set()


def evil(conn, kind):
    if kind == "short":
        data = struct.pack("<H", 5) + b"hello"
    elif kind == "oversized":
        data = struct.pack("<H", 9000) + b"\x00" * 64
    elif kind == "garbage":
        data = b"\xff\xfe" + os.urandom(64)
    else:
        data = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    conn.sendall(data)
    log("evil: sent", kind)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
    log("evil: peer closed")


def dns_server(addr, a_records, cnames):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    log("dns listening on", addr)
    while True:
        msg, src = s.recvfrom(4096)
        try:
            reply = answer(msg, a_records, cnames)
        except Exception as e:  # a malformed query gets no answer
            log("dns: bad query", e)
            continue
        s.sendto(reply, src)


def encode_name(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l) + b"\x00"


def answer(msg, a_records, cnames):
    qid, flags, qd = struct.unpack(">HHH", msg[:6])
    pos = 12
    labels = []
    while msg[pos]:
        n = msg[pos]
        labels.append(msg[pos + 1:pos + 1 + n].decode())
        pos += 1 + n
    qname = ".".join(labels).lower()
    qtype, _ = struct.unpack(">HH", msg[pos + 1:pos + 5])
    question = msg[12:pos + 5]
    rrs = []
    name = qname
    for _ in range(8):
        if name in cnames:
            target = cnames[name]
            rdata = encode_name(target)
            rrs.append(encode_name(name) + struct.pack(">HHIH", 5, 1, 30, len(rdata)) + rdata)
            name = target
        else:
            break
    if name in a_records and qtype == 1:
        rrs.append(encode_name(name) + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton(a_records[name]))
    known = qname in a_records or qname in cnames
    rcode = 0 if known else 3
    head = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, len(rrs), 0, 0)
    return head + question + b"".join(rrs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--tap", required=True)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--a", action="append", default=[])
    ap.add_argument("--cname", action="append", default=[])
    ap.add_argument("--evil", choices=["short", "oversized", "garbage", "http"])
    args = ap.parse_args()
    a_records = dict(x.split("=", 1) for x in args.a)
    cnames = dict(x.split("=", 1) for x in args.cname)

    tap = open_tap(args.tap)
    # gvproxy's gateway MAC: a restarted parent keeps its MAC, so the
    # enclave's ARP entry stays right
    subprocess.run(["ip", "link", "set", args.tap, "address", "5a:94:ef:e4:0c:dd"], check=True)
    subprocess.run(["ip", "addr", "add", args.gateway, "dev", args.tap], check=True)
    subprocess.run(["ip", "link", "set", args.tap, "up"], check=True)
    threading.Thread(target=dns_server, args=(args.gateway.split("/")[0], a_records, cnames),
                     daemon=True).start()

    if os.path.exists(args.listen):
        os.unlink(args.listen)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(args.listen)
    srv.listen(4)
    log("listening on", args.listen)
    while True:
        conn, _ = srv.accept()
        try:
            head = read_connect(conn)
            log("connected:", head.split(b"\r\n")[0].decode())
        except (ValueError, EOFError) as e:
            log("refused:", e)
            conn.close()
            continue
        if args.evil:
            evil(conn, args.evil)
        else:
            bridge(conn, tap)
        conn.close()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
