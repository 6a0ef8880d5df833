#!/usr/bin/env python3
"""systemd's side of sd_notify for tests: prints each datagram received on
the unix socket PATH as one line (newlines inside shown as '|')."""
import socket
import sys

s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("notify: listening", flush=True)
while True:
    print("notify: " + s.recv(4096).decode(errors="replace").replace("\n", "|"), flush=True)
