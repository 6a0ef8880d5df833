#!/usr/bin/env python3
"""A misbehaving ACME server for acme_bad_ca.sh (HTTPS with the test's
certificate).  It does not check JWS: it plays the CA only far enough to
misbehave in one way, and prints one line per request ("REQ METHOD PATH")
so the test can count how hard the client retries.

modes:
  notjson    the directory is an HTML page
  500        every request answers 500 with a plain-text body
  ratelimit  a proper directory, nonce and account; newOrder answers 429
             with a rateLimited problem and Retry-After: 4
  pending    a proper flow up to the challenge; the authorization then
             stays pending for ever

usage: fake_ca.py MODE PORT CERT KEY
"""
import http.server, json, os, ssl, sys

mode, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
base = "https://localhost:%d" % port
TOKEN = "DGyRejmCefe7v4NfDGDKfA" + "x" * 21


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, status, body=b"", ctype="application/json", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Replay-Nonce", os.urandom(16).hex())
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        print("REQ", self.command, self.path, flush=True)
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if mode == "500":
            return self.send(500, b"oops, the CA is down", "text/plain")
        if mode == "notjson":
            return self.send(200, b"<html>this is not a directory</html>", "text/html")
        p = self.path
        if p == "/dir":
            return self.send(200, {"newNonce": base + "/nonce", "newAccount": base + "/acct",
                                   "newOrder": base + "/order"})
        if p == "/nonce":
            return self.send(204)
        if p == "/acct":
            return self.send(201, {"status": "valid"}, headers=[("Location", base + "/acct/1")])
        if p == "/order" and mode == "ratelimit":
            return self.send(429, {"type": "urn:ietf:params:acme:error:rateLimited",
                                   "detail": "too many certificates already issued for this name"},
                             "application/problem+json", [("Retry-After", "4")])
        if p == "/order":
            return self.send(201, {"status": "pending", "finalize": base + "/fin",
                                   "authorizations": [base + "/authz/1"]},
                             headers=[("Location", base + "/order/1")])
        if p == "/authz/1":
            return self.send(200, {"status": "pending",
                                   "identifier": {"type": "dns", "value": "enclave.cloister.test"},
                                   "challenges": [{"type": "tls-alpn-01", "url": base + "/chal/1",
                                                   "status": "pending", "token": TOKEN}]})
        if p == "/chal/1":
            return self.send(200, {"type": "tls-alpn-01", "url": base + "/chal/1", "status": "processing",
                                   "token": TOKEN})
        return self.send(404, {"type": "urn:ietf:params:acme:error:malformed", "detail": "no " + p},
                         "application/problem+json")

    do_GET = do_POST = do_HEAD = handle_any


srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("fake_ca: listening", mode, flush=True)
srv.serve_forever()
