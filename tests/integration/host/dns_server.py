#!/usr/bin/env python3
"""A tiny authoritative DNS server over UDP for tests: answers A queries for
the names in a JSON file, {"name": {"ip": "127.0.0.1", "ttl": 1}, ...},
read again on every query so a test can change an answer; NODATA for other
types of a known name, NXDOMAIN for unknown names.  One line per query.

    dns_server.py PORT ZONE.json
"""
import json
import socket
import struct
import sys


def qname(msg, off):
    labels = []
    while True:
        n = msg[off]
        off += 1
        if n == 0:
            return ".".join(labels).lower(), off
        labels.append(msg[off:off + n].decode())
        off += n


def main():
    port, zone_path = int(sys.argv[1]), sys.argv[2]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    print("dns: listening", flush=True)
    while True:
        msg, peer = s.recvfrom(4096)
        if len(msg) < 12:
            continue
        qid, _flags, qd = struct.unpack("!HHH", msg[:6])
        if qd != 1:
            continue
        name, off = qname(msg, 12)
        qtype, qclass = struct.unpack("!HH", msg[off:off + 4])
        question = msg[12:off + 4]
        with open(zone_path) as f:
            zone = json.load(f)
        entry = zone.get(name)
        answers = b""
        rcode = 0 if entry else 3
        if entry and qtype == 1:
            ip = socket.inet_aton(entry["ip"])
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, entry["ttl"], 4) + ip
        header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
        s.sendto(header + question + answers, peer)
        print(f"dns: query type {qtype} {name} -> {entry['ip'] if answers else 'rcode %d' % rcode}", flush=True)


if __name__ == "__main__":
    main()
