#!/usr/bin/env python3
"""The example application behind `cloister enclave` (what `cloister dev` runs).

It does what a real enclave app does with nitriding's internal API:
  1. makes a key of its own and registers its SHA-256 with POST /enclave/hash,
     so that attestation documents vouch for it (cloister verify shows it);
  2. opens the enclave's public listener with GET /enclave/ready
     (the enclave runs with -wait-for-app);
  3. serves HTTP on 127.0.0.1 inside the enclave, and reaches the instance
     metadata service only through the host's IMDS gate (IMDSv2 token flow
     over the unix socket standing in for vsock:3:8002).

Standard library only.  Routes: / (a page), /api/hello (JSON), /region (the
region, read from IMDS through the host), /secret (the SHA-256 of the secret
the enclave opened with KMS at start; the secret itself never leaves).
"""
import argparse
import base64
import hashlib
import http.client
import http.server
import json
import os
import secrets
import socket
import sys
import time


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: the enclave's side of a vsock link."""

    def __init__(self, path, timeout=5):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def imds_call(path, method="GET", headers=None):
    """One request to the host's IMDS gate (one request per connection): on
    its link (CLOISTER_IMDS_SOCKET), or with a TAP network at IMDS's own
    address, which the host sends to the gate."""
    where = os.environ.get("CLOISTER_IMDS_SOCKET")
    if where:
        conn = UnixHTTPConnection(where)
    else:
        conn = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise RuntimeError(f"IMDS {method} {path}: {resp.status} {body.strip()}")
        return body
    finally:
        conn.close()


def imds_region():
    token = imds_call("/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    return imds_call("/latest/meta-data/placement/region", headers={"X-aws-ec2-metadata-token": token})


def internal(method, path, body=None, port=8080):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>cloister: hello from the enclave</title>
<style>body{{font-family:sans-serif;max-width:46em;margin:2em auto;line-height:1.5}}
code{{background:#eee;padding:0 .2em}}</style></head>
<body><h1>Hello from inside the enclave</h1>
<p>This page came from an application inside a (simulated) Nitro Enclave. The TLS
connection your browser used ends inside the enclave, with a key that never leaves it.</p>
<p>Don't take the browser's word for it (it will warn about the self-signed
certificate, as it should): prove it with</p>
<pre>cloister verify https://{host} --root {root}</pre>
<p>which checks an attestation document, signed by the Nitro root (here: the simulator's),
that names the SHA-256 of exactly the certificate of that connection.</p>
<p>This app's own key hash, as the attestation reports it: <code>{app_hash}</code></p>
<p>Also: <a href="/api/hello">/api/hello</a> (JSON), <a href="/region">/region</a>
(read from the instance metadata service through the host's IMDS gate),
<a href="/secret">/secret</a> (the SHA-256 of a KMS secret that only an enclave with this
PCR0 can open),
<a href="/enclave">/enclave</a> and <code>/enclave/attestation?nonce=&lt;40 hex digits&gt;</code>
(answered by cloister enclave itself).</p>
</body></html>
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8081, help="listen on 127.0.0.1:PORT (8081)")
    ap.add_argument("--internal", type=int, default=8080, help="the enclave's internal port (8080)")
    ap.add_argument("--root", default="ROOT.pem", help="shown in the page's verify command")
    ap.add_argument("--no-register", action="store_true", help="do not call /enclave/hash and /enclave/ready")
    args = ap.parse_args()

    app_key = secrets.token_bytes(32)  # stands in for the app's signing key
    app_hash = hashlib.sha256(app_key).digest()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, ctype, text):
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/":
                host = self.headers.get("X-Forwarded-Host") or self.headers.get("Host") or "127.0.0.1:8443"
                self.reply(200, "text/html; charset=utf-8",
                           PAGE.format(host=host, root=args.root, app_hash=app_hash.hex()))
            elif self.path == "/api/hello":
                self.reply(200, "application/json", json.dumps({
                    "message": "hello from inside the enclave",
                    "app_key_sha256": app_hash.hex(),
                    "client": self.headers.get("X-Forwarded-For"),
                    "time": int(time.time()),
                }) + "\n")
            elif self.path == "/secret":
                # the enclave opened it at start (KMS, with a Recipient); it is
                # served only on the internal listener, and never shown here
                status, text = internal("GET", "/enclave/secrets/demo", port=args.internal)
                if status != 200:
                    self.reply(502, "text/plain; charset=utf-8", f"no secret from the enclave: {status}\n")
                else:
                    digest = hashlib.sha256(text.encode()).hexdigest()
                    self.reply(200, "application/json", json.dumps({"secret": "demo", "sha256": digest}) + "\n")
            elif self.path == "/region":
                try:
                    self.reply(200, "text/plain; charset=utf-8", imds_region().strip() + "\n")
                except Exception as e:  # the gate or IMDS said no: say why
                    self.reply(502, "text/plain; charset=utf-8", f"IMDS through the host failed: {e}\n")
            else:
                self.reply(404, "text/plain; charset=utf-8", "not found\n")

        def log_message(self, fmt, *a):
            print("app: " + (fmt % a), flush=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"app: listening on 127.0.0.1:{args.port}", flush=True)
    if not args.no_register:
        status, text = internal("POST", "/enclave/hash", base64.b64encode(app_hash), args.internal)
        print(f"app: registered its key hash {app_hash.hex()}: {status} {text.strip()}", flush=True)
        status, text = internal("GET", "/enclave/ready", port=args.internal)
        print(f"app: /enclave/ready: {status} {text.strip()}", flush=True)
        if status not in (200, 410):
            sys.exit(f"app: the enclave refused /enclave/ready ({status})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
