#!/usr/bin/env python3
"""A stand-in enclave for the watchdog tests: an HTTP server on a unix socket.

usage: enclave.py SOCKET
GET anything answers 200, or 503 while the file SOCKET.sick-PID exists, or
never answers while SOCKET.hang-PID exists (PID: this process), so that a
test can make one instance unhealthy and see a fresh one come up healthy."""
import http.server
import os
import socketserver
import sys
import time

sock = sys.argv[1]
pid = os.getpid()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if os.path.exists(f"{sock}.hang-{pid}"):
            time.sleep(3600)
        sick = os.path.exists(f"{sock}.sick-{pid}")
        body = b"sick\n" if sick else b"ok\n"
        self.send_response(503 if sick else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass


try:
    os.unlink(sock)
except FileNotFoundError:
    pass
server = socketserver.UnixStreamServer(sock, Handler)
print(f"enclave: listening pid={pid} notify_socket={os.environ.get('NOTIFY_SOCKET', '-')}", flush=True)
server.serve_forever()
