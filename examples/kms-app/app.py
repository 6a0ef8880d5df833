#!/usr/bin/env python3
"""An unmodified boto3 app inside the enclave: KMS through `cloister enclave -kms-for-app`.

The only enclave-specific line is endpoint_url: the app talks plain KMS to
http://127.0.0.1:INTPORT (the enclave's internal listener), with any credentials.
cloister signs the call with the enclave's own credentials, adds a Recipient with
a fresh attestation document, opens KMS's envelope inside the enclave and answers
with an ordinary Decrypt response.  The key's policy requires that Recipient, so
this ciphertext opens only here.

It opens one ciphertext at start and serves the SHA-256 of the plaintext (never
the plaintext) on 127.0.0.1:PORT: GET / or /secret -> {"sha256": ...}.

  --ciphertext FILE   a KMS ciphertext, raw or base64 ($CLOISTER_DEV_CIPHERTEXT under cloister dev)
  --context JSON      its encryption context ($CLOISTER_DEV_CIPHERTEXT_CONTEXT under cloister dev)

Run by cloister dev:  cloister dev --app "python3 examples/kms-app/app.py"
"""
import argparse
import base64
import hashlib
import http.server
import json
import os
import sys

import boto3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8081, help="serve on 127.0.0.1:PORT (8081)")
    ap.add_argument("--internal", type=int, default=8080, help="the enclave's internal port (8080)")
    ap.add_argument("--ciphertext", default=os.environ.get("CLOISTER_DEV_CIPHERTEXT"))
    ap.add_argument("--context", default=os.environ.get("CLOISTER_DEV_CIPHERTEXT_CONTEXT", "{}"))
    args = ap.parse_args()
    if not args.ciphertext:
        sys.exit("kms-app: give --ciphertext FILE (a KMS ciphertext)")

    kms = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{args.internal}",
                       region_name=os.environ.get("AWS_REGION", "us-east-1"),
                       aws_access_key_id="not-used-by-cloister", aws_secret_access_key="not-used-by-cloister")
    blob = open(args.ciphertext, "rb").read()
    try:  # base64 text, else the raw blob
        blob = base64.b64decode(blob, validate=True)
    except ValueError:
        pass
    answer = kms.decrypt(CiphertextBlob=blob, EncryptionContext=json.loads(args.context))
    digest = hashlib.sha256(answer["Plaintext"]).hexdigest()
    del answer
    print(f"kms-app: opened the secret through the enclave's KMS endpoint: sha256={digest}", flush=True)
    body = json.dumps({"sha256": digest, "how": "boto3 Decrypt via cloister enclave -kms-for-app"}).encode() + b"\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status = 200 if self.path in ("/", "/secret") else 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) if status == 200 else 0))
            self.end_headers()
            if status == 200:
                self.wfile.write(body)

        def log_message(self, fmt, *a):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
