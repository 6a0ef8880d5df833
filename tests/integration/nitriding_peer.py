#!/usr/bin/python3
"""nitriding's side of the key-sync protocol, written from docs/key-sync.md.

An independent second implementation (Debian's python3-nacl, python3-cbor2 and
python3-cryptography; no code shared with cloister) used to check that
`cloister enclave` speaks the protocol as nitriding-daemon does.  Section
numbers in comments refer to docs/key-sync.md.

  nitriding_peer.py worker --nsm unix:SOCK --root ROOT.pem --fqdn-leader HOST
                           --ext-priv-port PORT [--listen ADDR] [--hostname HOST]
  nitriding_peer.py leader --nsm unix:SOCK --root ROOT.pem --ext-priv-port PORT
                           [--listen ADDR] [--fqdn-leader HOST] [--cert PEM --key PEM]
  nitriding_peer.py push --to HOST --nsm unix:SOCK --root ROOT.pem --ext-priv-port PORT
                           [--cert PEM --key PEM] [--tamper KIND]

`push` is the leader's half of key delivery (section 5) once, unasked, to the
worker at HOST: what any enclave with the same image -- or, with --tamper, an
attacker -- can send to a worker's sync port.  Exit 0 if the worker took the
keys (answered 200 to the POST), 1 if not.

Both modes run nitriding's election first (section 2) and stop if it does not
give the role asked for.  Attestation documents come from an NSM (the
simulator, `cloister nsm-sim`) spoken to directly: 4-byte big-endian length,
then the NSM's CBOR request.  Documents are verified here: COSE_Sign1 ES384,
the certificate chain to --root, nitrite's field checks, PCRs equal to our own
except PCR4, the nonce.

Every event is one line on standard output:
  nitriding-peer: event=NAME key=value ...
The worker's line after a successful sync is
  nitriding-peer: event=synced cert_sha256=HEX hashed_keys=B64 app_keys=B64|null
"""

import argparse
import atexit
import base64
import datetime
import hashlib
import http.client
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import urllib.parse

import cbor2
import nacl.public
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

NONCE_LEN = 20  # nonce.go: nonceLen
BOX_KEY_LEN = 32  # sync_shared.go: boxKeyLen
MAX_ATTSTN_BODY = len(base64.b64encode(bytes(1 << 14)))  # 21848, sync_*.go
MAX_HEARTBEAT_BODY = 44 + 255 + 128  # handlers.go: maxHeartbeatBody
MAX_STATE = 1024 * 1024  # handlers.go: maxKeyMaterialLen
LEADER_MARKER = b"dummy"  # attester.go: padding
HTTP_TIMEOUT = 3  # util.go: _newUnauthenticatedHTTPClient
CERT_ORG = "AWS Nitro enclave application"
PENDING_SECONDS = 5


def log(event, **fields):
    parts = [f"event={event}"]
    for k, v in fields.items():
        v = str(v)
        parts.append(f'{k}="{v}"' if (" " in v or not v) else f"{k}={v}")
    print("nitriding-peer: " + " ".join(parts), flush=True)


class Refused(Exception):
    """A peer's message that the protocol says to refuse."""


# ---- NSM ---------------------------------------------------------------------


class Nsm:
    def __init__(self, address):
        if not address.startswith("unix:"):
            raise SystemExit("--nsm must be unix:PATH (the simulator)")
        self.path = address[len("unix:"):]
        self.lock = threading.Lock()

    def attest(self, nonce=None, user_data=None, public_key=None):
        # The NSM API's Attestation request: all three keys, null when unused.
        req = cbor2.dumps({"Attestation": {"user_data": user_data, "nonce": nonce,
                                           "public_key": public_key}})
        with self.lock, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.path)
            s.sendall(struct.pack(">I", len(req)) + req)
            head = recv_exact(s, 4)
            resp = cbor2.loads(recv_exact(s, struct.unpack(">I", head)[0]))
        if not isinstance(resp, dict) or "Attestation" not in resp:
            raise RuntimeError(f"NSM refused the attestation request: {resp!r}")
        return resp["Attestation"]["document"]


def recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise RuntimeError("NSM closed the connection")
        out += chunk
    return out


# ---- attestation documents ---------------------------------------------------


def cert_time(cert, which):
    value = getattr(cert, which + "_utc", None)
    if value is None:
        value = getattr(cert, which).replace(tzinfo=datetime.timezone.utc)
    return value


def check_issued(child, issuer, now, what):
    if child.issuer != issuer.subject:
        raise Refused(f"{what}: issuer name does not match the next certificate up")
    try:
        issuer.public_key().verify(child.signature, child.tbs_certificate_bytes,
                                   ec.ECDSA(child.signature_hash_algorithm))
    except Exception as e:
        raise Refused(f"{what}: signature does not verify under its issuer ({e.__class__.__name__})")
    try:
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            raise Refused(f"{what}: issuer is not a CA")
    except x509.ExtensionNotFound:
        raise Refused(f"{what}: issuer has no basic constraints")
    for cert, name in ((child, what), (issuer, what + "'s issuer")):
        if not cert_time(cert, "not_valid_before") <= now <= cert_time(cert, "not_valid_after"):
            raise Refused(f"{name}: not valid now")


def unverified_payload(raw):
    cose = cbor2.loads(raw)
    if isinstance(cose, cbor2.CBORTag):
        cose = cose.value
    return cbor2.loads(cose[2])


def verify_document(raw, root, our_pcrs, expected_nonce):
    """nitrite.Verify + attester.go: verifyAttstn + attestation.go: arePCRsIdentical.
    Returns the payload map."""
    try:
        cose = cbor2.loads(raw)
    except Exception:
        raise Refused("document is not CBOR")
    if isinstance(cose, cbor2.CBORTag):
        cose = cose.value
    if not (isinstance(cose, list) and len(cose) == 4):
        raise Refused("document is not a COSE_Sign1 array")
    protected, _unprotected, payload, signature = cose
    if not all(isinstance(x, bytes) and x for x in (protected, payload, signature)):
        raise Refused("COSE_Sign1 has an empty or non-byte section")
    header = cbor2.loads(protected)
    if not isinstance(header, dict) or header.get(1) != -35:
        raise Refused("COSE_Sign1 algorithm is not ES384")
    doc = cbor2.loads(payload)
    if not isinstance(doc, dict):
        raise Refused("payload is not a map")
    for field in ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"):
        if not doc.get(field):
            raise Refused(f"mandatory field {field} missing")
    if doc["digest"] != "SHA384":
        raise Refused("digest is not SHA384")
    pcrs = doc["pcrs"]
    if not isinstance(pcrs, dict) or not 1 <= len(pcrs) <= 32:
        raise Refused("pcrs: not 1..32 entries")
    for k, v in pcrs.items():
        if not isinstance(k, int) or not 0 <= k < 32 or not isinstance(v, bytes) or len(v) not in (32, 48, 64):
            raise Refused(f"pcrs: bad entry {k!r}")
    for field in ("public_key", "user_data", "nonce"):
        v = doc.get(field)
        if v is not None and (not isinstance(v, bytes) or len(v) > 1024):
            raise Refused(f"{field}: not a byte string of at most 1024 bytes")
    bundle = doc["cabundle"]
    if not isinstance(bundle, list) or not bundle:
        raise Refused("cabundle is empty")
    try:
        leaf = x509.load_der_x509_certificate(doc["certificate"])
        chain = [x509.load_der_x509_certificate(c) for c in bundle]
    except Exception:
        raise Refused("a certificate in the document does not parse")
    if not isinstance(leaf.public_key(), ec.EllipticCurvePublicKey):
        raise Refused("signing certificate's key is not ECDSA")
    if not isinstance(leaf.signature_hash_algorithm, hashes.SHA384):
        raise Refused("signing certificate is not ecdsa-with-SHA384")
    # The chain must start at the root we trust (AWS's in production, the
    # simulator's here) and lead link by link to the signing certificate.
    if chain[0].public_bytes(serialization.Encoding.DER) != root.public_bytes(serialization.Encoding.DER):
        raise Refused("certificate chain does not start at the trusted root")
    now = datetime.datetime.now(datetime.timezone.utc)
    links = [root] + chain[1:] + [leaf]
    for i in range(1, len(links)):
        check_issued(links[i], links[i - 1], now, f"chain link {i}")
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    if len(signature) != 96:
        raise Refused("signature is not 96 bytes")
    der_sig = encode_dss_signature(int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big"))
    try:
        leaf.public_key().verify(der_sig, sig_structure, ec.ECDSA(hashes.SHA384()))
    except Exception:
        raise Refused("document signature does not verify")
    if our_pcrs is not None:
        if len(pcrs) != len(our_pcrs):
            raise Refused(f"PCR values differ: {len(pcrs)} PCRs, we have {len(our_pcrs)}")
        for i, ours in our_pcrs.items():
            if i == 4:  # the parent instance's id: differs on every parent
                continue
            if pcrs.get(i) != ours:
                raise Refused(f"PCR values differ: PCR{i}")
    if expected_nonce is not None:
        theirs = doc.get("nonce")
        if theirs is None or len(theirs) != NONCE_LEN:
            raise Refused("nonce is not 20 bytes")
        if theirs != expected_nonce:
            raise Refused("nonce is unexpected")
    return doc


# ---- keys ------------------------------------------------------------------


def self_signed(fqdn):
    """util.go: createCertificate: ECDSA P-256, PKCS#8 PEM key, PEM certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, CERT_ORG)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(secrets.randbits(128))
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=356))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(fqdn)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def leaf_of(cert_pem):
    """The first certificate of the PEM: the one TLS serves (Go's tls.X509KeyPair)."""
    certs = split_pem(cert_pem)
    if not certs:
        raise Refused("no certificate in nitriding_cert")
    return certs[0]


def split_pem(pem):
    marker = b"-----END CERTIFICATE-----"
    try:
        return [x509.load_pem_x509_certificate(part[part.index(b"-----BEGIN CERTIFICATE-----"):] + marker)
                for part in pem.split(marker) if b"-----BEGIN CERTIFICATE-----" in part]
    except ValueError:
        raise Refused("nitriding_cert is not PEM certificates")


def check_pair(cert_pem, key_pem):
    """enclave.go: setupWorkerPostSync's tls.X509KeyPair: the key must match the certificate."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except Exception:
        raise Refused("nitriding_key is not a PEM private key")
    cert = leaf_of(cert_pem)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise Refused("nitriding_key does not match nitriding_cert")
    return cert


class Keys:
    """enclave_keys.go: enclaveKeys."""

    def __init__(self, cert, key, app=None):
        self.lock = threading.Lock()
        self.cert, self.key, self.app = cert, key, app

    def snapshot(self):
        with self.lock:
            return self.cert, self.key, self.app

    def hashed(self):
        # hashAndB64: certificate, then key, then app keys.
        cert, key, app = self.snapshot()
        return base64.b64encode(hashlib.sha256(cert + key + (app or b"")).digest()).decode()

    def to_json(self):
        # Go's json.Marshal of the struct: []byte as padded standard base64, nil as null.
        cert, key, app = self.snapshot()
        b64 = lambda b: None if b is None else base64.b64encode(b).decode()
        return json.dumps({"nitriding_key": b64(key), "nitriding_cert": b64(cert), "app_keys": b64(app)},
                          separators=(",", ":")).encode()


def b64field(obj, name, allow_null=False):
    value = obj.get(name)
    if value is None and allow_null:
        return None
    if not isinstance(value, str):
        raise Refused(f"{name}: not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except Exception:
        raise Refused(f"{name}: not standard base64")


# ---- HTTP ------------------------------------------------------------------


def https_request(host, port, method, path, body=None):
    """util.go: _newUnauthenticatedHTTPClient: TLS without verification, 3 s."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, port, timeout=HTTP_TIMEOUT, context=ctx)
    try:
        headers = {"Content-Type": "text/plain"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read(MAX_ATTSTN_BODY + 1)
        return resp.status, data
    finally:
        conn.close()


class TooLarge(Exception):
    pass


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nitriding-peer"

    def log_message(self, fmt, *args):
        pass

    def read_body(self, limit):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                if len(out) + size > limit:
                    raise TooLarge()
                out += self.rfile.read(size)
                self.rfile.readline()
            return out
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            raise TooLarge()
        return self.rfile.read(length)

    def reply(self, code, body=b"", ctype="text/plain; charset=utf-8", headers=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def route(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        fn = self.server.routes.get((method, url.path))
        if fn is None:
            any_method = any(p == url.path for (_, p) in self.server.routes)
            self.reply(405 if any_method else 404, "not found\n")
            return
        try:
            fn(self, query)
        except Exception as e:  # a bug here must not kill the listener
            log("handler-error", path=url.path, detail=repr(e))
            self.reply(500, "internal error\n")

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, routes, tls=None):
        self.routes = routes
        self.tls = tls
        super().__init__(addr, Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake on the connection's own thread, not the accept loop's.
        request.settimeout(10)
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


def nonce_from_query(query):
    """util.go: getNonceFromReq."""
    values = query.get("nonce")
    if not values or not values[0]:
        raise Refused("could not find nonce in URL query parameters")
    try:
        raw = bytes.fromhex(values[0].lower())
    except ValueError:
        raise Refused("unexpected nonce format; must be 40-digit hex string")
    if len(raw) != NONCE_LEN or len(values[0]) != 2 * NONCE_LEN:
        raise Refused("slice is not of same length as nonce")
    return raw


def split_host_port(text):
    """Go's net.SplitHostPort, enough for names, IPv4 and [IPv6]."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise Refused("missing port in address")
        return text[1:end], text[end + 2:]
    if text.count(":") != 1:
        raise Refused("missing port in address" if ":" not in text else "too many colons in address")
    host, port = text.split(":")
    return host, port


# ---- the peer ----------------------------------------------------------------


class Peer:
    def __init__(self, args):
        self.args = args
        self.nsm = Nsm(args.nsm)
        with open(args.root, "rb") as f:
            self.root = x509.load_pem_x509_certificate(f.read())
        # attestation.go: _getPCRValues: our own document, verified, gives our PCRs.
        own = verify_document(self.nsm.attest(), self.root, None, None)
        self.pcrs = dict(own["pcrs"])
        if args.cert:
            with open(args.cert, "rb") as f:
                cert = f.read()
            with open(args.key, "rb") as f:
                key = f.read()
            check_pair(cert, key)
        else:
            cert, key = self_signed(args.fqdn)
        app = None
        if args.state_file:
            with open(args.state_file, "rb") as f:
                app = f.read()
        self.keys = Keys(cert, key, app)
        self.state = "in-progress"  # enclave.go: inProgress until the election ends
        self.state_version = 0
        self.workdir = tempfile.mkdtemp(prefix="nitriding-peer.")
        atexit.register(shutil.rmtree, self.workdir, True)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.install_certificate(cert, key)
        # election (section 2)
        self.our_nonce = secrets.token_bytes(NONCE_LEN)
        self.elected = threading.Event()
        self.election_over = False
        # worker side of section 5: one pending sync at a time
        self.pending = None
        self.pending_lock = threading.Lock()
        self.heartbeat_started = False
        # leader side: worker host -> last seen
        self.workers = {}
        self.workers_lock = threading.Lock()
        self.routes = {
            ("GET", "/enclave/leader"): self.h_leader,
            ("GET", "/enclave/sync"): self.h_sync_get,
            ("POST", "/enclave/sync"): self.h_sync_post,
        }

    # -- TLS certificate, swapped when keys arrive
    def install_certificate(self, cert, key):
        cert_path = os.path.join(self.workdir, "cert.pem")
        key_path = os.path.join(self.workdir, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        with open(cert_path, "wb") as f:
            f.write(cert)
        self.tls.load_cert_chain(cert_path, key_path)
        os.unlink(key_path)
        self.fingerprint = hashlib.sha256(leaf_of(cert).public_bytes(serialization.Encoding.DER)).hexdigest()

    # -- section 2
    def h_leader(self, req, query):
        if self.election_over:
            req.reply(410, "")
            return
        try:
            theirs = nonce_from_query(query)
        except Refused as e:
            req.reply(400, str(e) + "\n")
            return
        if theirs == self.our_nonce:
            self.elected.set()
        else:
            log("leader-nonce-not-ours", peer=req.client_address[0])
        req.reply(200, "")

    def elect(self):
        leader, port = self.args.fqdn_leader, self.args.ext_priv_port
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                status, _ = https_request(leader, port, "GET", "/enclave/leader?nonce=" + self.our_nonce.hex())
            except OSError as e:
                status = None
                log("election-retry", detail=e.__class__.__name__)
            if self.elected.is_set():
                role = "leader"
                break
            if status == 410:
                role = "worker"
                break
            if status is not None:
                log("election-retry", status=status)
            time.sleep(1)
        else:
            raise SystemExit("nitriding-peer: timed out talking to leader designation endpoint")
        self.election_over = True
        self.state = role
        log("elected", role=role, leader=f"{leader}:{port}")
        return role

    # -- section 5, worker side
    def h_sync_get(self, req, query):
        try:
            leaders_nonce = nonce_from_query(query)
        except Refused as e:
            req.reply(400, str(e) + "\n")
            return
        with self.pending_lock:
            # nitriding keeps a pending sync until its POST, for ever (a GET
            # without a POST jams the worker, docs/key-sync.md 5.5); this peer
            # lets a newer GET replace one older than PENDING_SECONDS.
            if self.pending is not None and time.monotonic() - self.pending[2] < PENDING_SECONDS:
                req.reply(429, "key sync already in progress\n")
                return
            workers_nonce = secrets.token_bytes(NONCE_LEN)
            box_key = nacl.public.PrivateKey.generate()
            self.pending = (workers_nonce, box_key, time.monotonic())
        log("sync-requested", leader=req.client_address[0])
        pub = bytes(box_key.public_key)
        if self.args.tamper == "worker-nonce":
            leaders_nonce = secrets.token_bytes(NONCE_LEN)  # a document that is not fresh for this leader
        if self.args.tamper == "attestation-doc":
            # any same-image enclave's public /enclave/attestation signs a
            # document with the nonce we choose: pass that off as ours
            host, port = split_host_port(self.args.attestation_from)
            status, body = https_request(host, int(port), "GET", "/enclave/attestation?nonce=" + leaders_nonce.hex())
            doc = base64.b64decode(body.strip()) if status == 200 else b""
        else:
            doc = self.nsm.attest(nonce=leaders_nonce, user_data=workers_nonce, public_key=pub)
        body = json.dumps({"document": base64.b64encode(doc).decode(), "encrypted_keys": ""},
                          separators=(",", ":")) + "\n"
        req.reply(200, body)

    def h_sync_post(self, req, query):
        log("sync-post-received", peer=req.client_address[0])
        with self.pending_lock:
            pending, self.pending = self.pending, None
        if pending is None:
            req.reply(400, "no key sync in progress\n")
            return
        workers_nonce, box_key, _ = pending
        try:
            body = req.read_body(MAX_ATTSTN_BODY)
        except TooLarge:
            req.reply(500, "reached read limit\n")
            return
        try:
            msg = json.loads(body)
            if not isinstance(msg, dict):
                raise ValueError
        except ValueError:
            req.reply(400, "body is not a JSON object\n")
            log("sync-refused", reason="body is not a JSON object")
            return
        try:
            doc_raw = b64field(msg, "document")
        except Refused as e:
            req.reply(500, str(e) + "\n")
            log("sync-refused", reason=str(e))
            return
        try:
            doc = verify_document(doc_raw, self.root, self.pcrs, workers_nonce)
            if doc.get("public_key") != LEADER_MARKER:
                raise Refused("public_key is not the leader's marker \"dummy\"")
            encrypted = b64field(msg, "encrypted_keys")
            if hashlib.sha256(encrypted).digest() != doc.get("user_data"):
                raise Refused("hash of encrypted keys not in attestation document")
            try:
                plain = nacl.public.SealedBox(box_key).decrypt(encrypted)
            except Exception:
                raise Refused("error decrypting enclave keys")
        except Refused as e:
            req.reply(400, str(e) + "\n")
            log("sync-refused", reason=str(e))
            return
        try:
            keys = json.loads(plain)
            if not isinstance(keys, dict):
                raise Refused("keys are not a JSON object")
            key = b64field(keys, "nitriding_key")
            cert = b64field(keys, "nitriding_cert")
            app = b64field(keys, "app_keys", allow_null=True)
            check_pair(cert, key)
        except (Refused, ValueError) as e:
            req.reply(500, f"{e}\n")
            log("sync-refused", reason=str(e))
            return
        with self.keys.lock:
            self.keys.cert, self.keys.key, self.keys.app = cert, key, app
            self.state_version += 1
        self.install_certificate(cert, key)
        req.reply(200, "")
        log("synced", cert_sha256=self.fingerprint, hashed_keys=self.keys.hashed(),
            app_keys="null" if app is None else base64.b64encode(app).decode(),
            leader_module=doc.get("module_id", ""))
        if not self.heartbeat_started:
            self.heartbeat_started = True
            threading.Thread(target=self.heartbeat_loop, daemon=True).start()

    # -- sections 3 and 4, worker side
    def heartbeat_body(self, hashed):
        return json.dumps({"hashed_keys": hashed, "worker_hostname": f"{self.args.hostname}:{self.args.ext_priv_port}"},
                          separators=(",", ":")).encode()

    def post_heartbeat(self, hashed):
        return https_request(self.args.fqdn_leader, self.args.ext_priv_port, "POST", "/enclave/heartbeat",
                             self.heartbeat_body(hashed))

    def register(self):
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _ = self.post_heartbeat("")
                if status == 200:
                    log("registered", leader=f"{self.args.fqdn_leader}:{self.args.ext_priv_port}")
                    return
                log("register-retry", status=status)
            except OSError as e:
                log("register-retry", detail=e.__class__.__name__)
            if time.monotonic() + 5 > deadline:
                raise SystemExit("nitriding-peer: timed out syncing with leader")
            time.sleep(5)

    def heartbeat_loop(self):
        while True:
            time.sleep(self.args.heartbeat_interval)
            try:
                status, _ = self.post_heartbeat(self.keys.hashed())
                log("heartbeat", status=status)
            except OSError as e:
                log("heartbeat-error", detail=e.__class__.__name__)

    # -- sections 4 and 5, leader side
    def h_heartbeat(self, req, query):
        try:
            body = req.read_body(MAX_HEARTBEAT_BODY)
        except TooLarge:
            req.reply(500, "failed to read request body\n")
            return
        try:
            hb = json.loads(body)
            if not isinstance(hb, dict):
                raise ValueError
            hashed, hostname = hb.get("hashed_keys", ""), hb.get("worker_hostname", "")
            if not isinstance(hashed, str) or not isinstance(hostname, str):
                raise ValueError
        except ValueError:
            req.reply(400, "invalid heartbeat\n")
            return
        try:
            host, _ignored_port = split_host_port(hostname)
        except Refused as e:
            req.reply(500, str(e) + "\n")
            return
        log("heartbeat-received", worker=host, matches=str(hashed == self.keys.hashed()).lower())
        if hashed != self.keys.hashed():
            threading.Thread(target=self.sync_and_register, args=(host,), daemon=True).start()
        else:
            self.mark_seen(host)
        req.reply(200, "")

    def mark_seen(self, host):
        with self.workers_lock:
            self.workers[host] = time.monotonic()

    def sync_and_register(self, host):
        if self.sync_with(host):
            self.mark_seen(host)

    def prune_loop(self):
        while True:
            time.sleep(self.args.worker_timeout)
            now = time.monotonic()
            with self.workers_lock:
                for host, seen in list(self.workers.items()):
                    if now - seen > self.args.worker_timeout:
                        del self.workers[host]
                        log("pruned", worker=host)

    def sync_with(self, host):
        port = self.args.ext_priv_port  # the leader's own port, as enclave.go: getWorker
        try:
            leaders_nonce = secrets.token_bytes(NONCE_LEN)
            status, body = https_request(host, port, "GET", "/enclave/sync?nonce=" + leaders_nonce.hex())
            if status != 200:
                raise Refused(f"peer responded with HTTP code {status}")
            if len(body) > MAX_ATTSTN_BODY:
                raise Refused("worker's answer is too long")
            try:
                msg = json.loads(body)
                if not isinstance(msg, dict):
                    raise ValueError
            except ValueError:
                raise Refused("worker's answer is not a JSON object")
            if msg.get("encrypted_keys"):
                raise Refused("expected encrypted keys to be unset")
            raw = b64field(msg, "document")
            if self.args.skip_worker_check:
                doc = unverified_payload(raw)
            else:
                doc = verify_document(raw, self.root, self.pcrs, leaders_nonce)
            if doc.get("public_key") == LEADER_MARKER:
                raise Refused("worker's document carries the leader's marker")
            workers_nonce = doc.get("user_data")
            if workers_nonce is None or len(workers_nonce) != NONCE_LEN:
                raise Refused("worker's user_data is not a 20-byte nonce")
            pub = doc.get("public_key")
            if pub is None or len(pub) != BOX_KEY_LEN:
                raise Refused("worker's public_key is not a 32-byte X25519 key")
            encrypted = nacl.public.SealedBox(nacl.public.PublicKey(pub)).encrypt(self.keys.to_json())
            bound = hashlib.sha256(encrypted).digest()
            doc_nonce = workers_nonce
            if self.args.tamper == "hash":
                bound = hashlib.sha256(b"not the ciphertext").digest()
            elif self.args.tamper == "nonce":
                doc_nonce = secrets.token_bytes(NONCE_LEN)
            elif self.args.tamper == "marker":
                pass
            marker = None if self.args.tamper == "marker" else LEADER_MARKER
            leader_doc = self.nsm.attest(nonce=doc_nonce, user_data=bound, public_key=marker)
            post = json.dumps({"document": base64.b64encode(leader_doc).decode(),
                               "encrypted_keys": base64.b64encode(encrypted).decode()},
                              separators=(",", ":")).encode()
            status, body = https_request(host, port, "POST", "/enclave/sync", post)
            if status != 200:
                raise Refused(f"peer responded with HTTP code {status}: {body[:200].decode(errors='replace').strip()}")
        except (Refused, OSError) as e:
            log("sync-failed", worker=f"{host}:{port}", detail=str(e) or e.__class__.__name__)
            return False
        log("sync-delivered", worker=f"{host}:{port}", cert_sha256=self.fingerprint,
            worker_module=doc.get("module_id", ""))
        return True

    # -- section 6: the internal listener
    def h_state_get(self, req, query):
        if self.state == "in-progress":
            req.reply(503, "leader designation in progress\n")
        elif self.state == "leader":
            req.reply(410, "endpoint not meant to be used\n")
        else:
            req.reply(200, self.keys.snapshot()[2] or b"", ctype="application/octet-stream")

    def h_state_put(self, req, query):
        if self.state == "in-progress":
            req.reply(503, "leader designation in progress\n")
            return
        if self.state == "worker":
            req.reply(410, "endpoint not meant to be used\n")
            return
        try:
            body = req.read_body(MAX_STATE)
        except TooLarge:
            req.reply(500, "failed to read request body\n")
            return
        with self.keys.lock:
            self.keys.app = body
        req.reply(200, "")
        with self.workers_lock:
            hosts = list(self.workers)
        log("state-set", bytes=len(body), workers=len(hosts))
        for host in hosts:
            threading.Thread(target=self.resync_or_drop, args=(host,), daemon=True).start()

    def resync_or_drop(self, host):
        if not self.sync_with(host):
            with self.workers_lock:
                self.workers.pop(host, None)
            log("unregistered", worker=host)

    # -- main
    def serve(self, addr, routes, tls):
        server = Server(addr, routes, tls)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def run(self):
        a = self.args
        sync_srv = self.serve((a.listen, a.ext_priv_port), self.routes, self.tls)
        log("listening", listener="sync", addr=f"{a.listen}:{sync_srv.server_address[1]}",
            cert_sha256=self.fingerprint)
        if a.intport:
            internal = {("GET", "/enclave/state"): self.h_state_get, ("PUT", "/enclave/state"): self.h_state_put}
            srv = self.serve(("127.0.0.1", a.intport), internal, None)
            log("listening", listener="internal", addr=f"127.0.0.1:{srv.server_address[1]}")
        role = self.elect()
        if role != a.mode:
            raise SystemExit(f"nitriding-peer: the election made us {role}, not {a.mode}")
        if role == "leader":
            self.routes[("POST", "/enclave/heartbeat")] = self.h_heartbeat
            threading.Thread(target=self.prune_loop, daemon=True).start()
        else:
            self.register()
        while True:
            time.sleep(3600)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("worker", "leader", "push"))
    p.add_argument("--to", help="push: the worker's host (its port is --ext-priv-port)")
    p.add_argument("--skip-worker-check", action="store_true",
                   help="push: take the worker's key without verifying its document (an attacker would)")
    p.add_argument("--nsm", required=True, help="unix:PATH of the NSM simulator")
    p.add_argument("--root", required=True, help="PEM root that attestation documents must chain to")
    p.add_argument("--fqdn-leader", help="the leader's name (default for a leader: --listen)")
    p.add_argument("--ext-priv-port", type=int, default=444, help="the sync port, the same on every enclave")
    p.add_argument("--listen", default="127.0.0.1", help="address of the sync listener")
    p.add_argument("--hostname", help="host part of worker_hostname (default: --listen)")
    p.add_argument("--intport", type=int, default=0, help="internal /enclave/state listener on 127.0.0.1 (0: none)")
    p.add_argument("--fqdn", default="localhost", help="name in a generated self-signed certificate")
    p.add_argument("--cert", help="PEM certificate to serve and sync instead of a generated one")
    p.add_argument("--key", help="PEM private key of --cert")
    p.add_argument("--state-file", help="initial app state (app_keys); default none (null)")
    p.add_argument("--heartbeat-interval", type=float, default=60.0, help="seconds (nitriding: 60)")
    p.add_argument("--worker-timeout", type=float, default=60.0, help="seconds before a silent worker is pruned")
    p.add_argument("--attestation-from", metavar="HOST:PORT",
                   help="worker --tamper attestation-doc: the public listener whose /enclave/attestation to use")
    p.add_argument("--tamper", choices=("hash", "nonce", "marker", "worker-nonce", "attestation-doc"),
                   help="misbehave on purpose (attack tests): leader: hash = user_data does not bind the "
                        "ciphertext, nonce = the document's nonce is not the worker's, marker = no \"dummy\" "
                        "public_key; worker: worker-nonce = the document's nonce is not the leader's, "
                        "attestation-doc = answer with a client attestation document for the leader's nonce")
    args = p.parse_args()
    if bool(args.cert) != bool(args.key):
        p.error("--cert and --key go together")
    args.fqdn_leader = args.fqdn_leader or args.listen
    args.hostname = args.hostname or args.listen
    # SIGTERM (the tests' stop) runs the atexit cleanup too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.mode == "push":
        if not args.to:
            p.error("push needs --to HOST")
        sys.exit(0 if Peer(args).sync_with(args.to) else 1)
    Peer(args).run()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
