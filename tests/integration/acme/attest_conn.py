#!/usr/bin/python3
"""One kept-alive HTTPS connection to a cloister enclave that asks for
/enclave/attestation twice: now, and again once GO_FILE exists (after the
test has made the enclave change its certificate).  For each answer it
writes "peer=SHA256(the certificate this connection was served)
bound=SHA256 named in user_data" to OUT_FILE.  The document's signature is
cloister verify's business; this checks which certificate it binds.

usage: attest_conn.py HOST PORT SNI GO_FILE OUT_FILE
"""
import base64, hashlib, http.client, os, ssl, sys, time

import cbor2

host, port, sni, go_file, out_file = sys.argv[1:]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # trust comes from the document, which this test compares
ctx.set_alpn_protocols(["http/1.1"])
conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
conn._tunnel_host = None
conn.host = host


def ask():
    nonce = os.urandom(20).hex()
    conn.request("GET", "/enclave/attestation?nonce=" + nonce, headers={"Host": sni})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit("attestation: HTTP %d %r" % (r.status, body[:200]))
    doc = cbor2.loads(base64.b64decode(body))
    if isinstance(doc, cbor2.CBORTag):
        doc = doc.value
    payload = cbor2.loads(doc[2])
    ud = payload["user_data"]
    if ud[:2] != b"\x12\x20":
        raise SystemExit("user_data is not a multihash")
    peer = hashlib.sha256(conn.sock.getpeercert(binary_form=True)).hexdigest()
    with open(out_file, "a") as f:
        f.write("peer=%s bound=%s\n" % (peer, ud[2:34].hex()))


# SNI: http.client sends the host given; wrap ourselves to name the FQDN
raw = ctx.wrap_socket(__import__("socket").create_connection((host, int(port)), timeout=30), server_hostname=sni)
conn.sock = raw
ask()
deadline = time.time() + 60
while not os.path.exists(go_file):
    if time.time() > deadline:
        raise SystemExit("GO_FILE never appeared")
    time.sleep(0.05)
ask()
