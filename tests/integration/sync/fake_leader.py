#!/usr/bin/python3
"""A plain HTTPS server posing as the key-sync leader (the attacker of
sync_attack.sh): it answers /enclave/leader with 410, so an enclave that
asks it becomes a worker, takes every registration, and answers each one
with one attack: it runs the leader's half of a sync with keys it made
itself, sealed to the worker's X25519 key, under a document of its choice:

  foreign-root   a document from the attacker's own nsm-sim (another root)
  genuine-doc    a genuine enclave's /enclave/attestation document for the
                 worker's nonce (trusted root, right PCRs, right nonce; its
                 user_data binds a certificate, not the ciphertext)
  garbage        bytes that are no document at all
  unasked        a foreign-root document for a nonce the worker never made

  fake_leader.py --listen PORT --cert PEM --key PEM --evil-cert PEM --evil-key PEM
                 --evil-nsm unix:SOCK --genuine https://HOST:PORT --attacks A,B,...
                 [--acme-challenge "TYPE NAME TOKEN KEYAUTH EXPIRES"]
Prints `fake-leader: attack=NAME status=CODE body=...` per attack, then
`fake-leader: done`.
"""

import argparse
import base64
import hashlib
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import threading
import urllib.request

import nacl.public

args = None
queue = []
left = [0]
lock = threading.Lock()


def say(line):
    print("fake-leader: " + line, flush=True)


def https(method, url, body=None):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def doc_fields(raw):
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(raw)
    out = subprocess.run([os.environ["CLOISTER"], "attest", "show", f.name], capture_output=True, check=True)
    os.unlink(f.name)
    return json.loads(out.stdout)


def evil_document(nonce_hex, user_data_hex):
    out = subprocess.run([os.environ["CLOISTER"], "attest", "request", "--nsm", args.evil_nsm,
                          "--nonce", nonce_hex, "--user-data", user_data_hex], capture_output=True, check=True)
    return out.stdout


def attack(kind, worker):
    status, body = https("GET", f"https://{worker}/enclave/sync?nonce={os.urandom(20).hex()}")
    if status != 200:
        say(f"attack={kind} status=get-{status}")
        return
    doc = base64.b64decode(json.loads(body)["document"])
    fields = doc_fields(doc)
    pk = bytes.fromhex(fields["public_key"])
    worker_nonce = fields["user_data"]
    keys = {
        "nitriding_key": base64.b64encode(open(args.evil_key, "rb").read()).decode(),
        "nitriding_cert": base64.b64encode(open(args.evil_cert, "rb").read()).decode(),
        "app_keys": base64.b64encode(b"evil state").decode(),
    }
    if args.acme_challenge:  # cloister's member: answers it wants the worker to give the CA
        keys["acme_challenges"] = base64.b64encode(args.acme_challenge.encode() + b"\n").decode()
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(pk)).encrypt(json.dumps(keys).encode())
    digest = hashlib.sha256(sealed).hexdigest()
    if kind == "foreign-root":
        ldoc = evil_document(worker_nonce, digest)
    elif kind == "genuine-doc":
        # the genuine enclave may be the worker itself, whose public listener opens only once its
        # app is ready: wait for it (the worker's nonce stays pending for 30 s)
        for _ in range(100):
            try:
                _, b64 = https("GET", f"{args.genuine}/enclave/attestation?nonce={worker_nonce}")
                break
            except OSError:  # refused, reset, TLS cut short (URLError is one too)
                time.sleep(0.1)
        else:
            raise SystemExit(f"no answer from the genuine enclave at {args.genuine}")
        ldoc = base64.b64decode(b64.strip())
    elif kind == "garbage":
        ldoc = os.urandom(300)
    elif kind == "unasked":
        ldoc = evil_document(os.urandom(20).hex(), digest)
    else:
        raise SystemExit("unknown attack " + kind)
    post = json.dumps({"document": base64.b64encode(ldoc).decode(),
                       "encrypted_keys": base64.b64encode(sealed).decode()}).encode()
    status, body = https("POST", f"https://{worker}/enclave/sync", post)
    say(f"attack={kind} status={status} body={body.decode(errors='replace').strip()!r}")


def next_attack(worker):
    with lock:
        kind = queue.pop(0) if queue else None
    if kind:
        try:
            attack(kind, worker)
        except Exception as e:  # noqa: BLE001 - report and go on with the next one
            say(f"attack={kind} error={e!r}")
        with lock:
            left[0] -= 1
            if left[0] == 0:
                say("done")


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer(410 if self.path.startswith("/enclave/leader") else 404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not self.path.startswith("/enclave/heartbeat"):
            self.answer(404)
            return
        worker = json.loads(body)["worker_hostname"]
        self.answer(200)
        threading.Thread(target=next_attack, args=(worker,), daemon=True).start()

    def log_message(self, *a):
        pass


def main():
    global args
    p = argparse.ArgumentParser()
    for a in ("--listen", "--cert", "--key", "--evil-cert", "--evil-key", "--evil-nsm", "--genuine", "--attacks"):
        p.add_argument(a, required=True)
    p.add_argument("--acme-challenge", default="", help="a pending-challenge line to push in the sealed keys")
    args = p.parse_args()
    queue.extend(args.attacks.split(","))
    left[0] = len(queue)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(args.listen)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    say("listening")
    srv.serve_forever()


if __name__ == "__main__":
    main()
