#!/usr/bin/env python3
"""boto3 (Debian's python3-boto3), unchanged, as an app inside the enclave uses
`cloister enclave -kms-for-app`; also the refusals, over raw HTTP.

  kms_endpoint_app.py through PORT KEY OTHER_KEY CT_B64 CT_OTHER_B64 CT_CTX_B64 PLAINTEXT_FILE
  kms_endpoint_app.py denied URL AKID SECRET CA KEY CT_B64       (straight to kms-local)
  kms_endpoint_app.py bad PORT                                   (malformed requests)
  kms_endpoint_app.py restricted PORT KEY OTHER_KEY CT_B64 PLAINTEXT_FILE
Prints "ok   ..." per check, exits 1 on the first failure.
"""
import base64
import http.client
import json
import subprocess
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def ok(cond, what):
    if not cond:
        print(f"FAIL boto3: {what}")
        sys.exit(1)
    print(f"ok   boto3: {what}")


def error_of(fn, **kw):
    try:
        fn(**kw)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"].get("Message", ""), \
            e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None, None, 200


def client(url, akid="AKIAANYTHINGATALL000", secret="whatever-the-app-has", verify=None):
    return boto3.client("kms", endpoint_url=url, region_name="eu-west-1", aws_access_key_id=akid,
                        aws_secret_access_key=secret, verify=verify,
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}))


def raw(port, body, target="TrentService.Decrypt", ctype="application/x-amz-json-1.1", method="POST"):
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=20)
    headers = {"Content-Type": ctype}
    if target:
        headers["X-Amz-Target"] = target
    c.request(method, "/", body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, {"__raw": data.decode(errors="replace")}


def through(port, key, other_key, ct, ct_other, ct_ctx, plaintext_file):
    want = open(plaintext_file, "rb").read()
    kms = client(f"http://127.0.0.1:{port}")
    r = kms.decrypt(CiphertextBlob=base64.b64decode(ct))
    ok(r["Plaintext"] == want, "Decrypt through the endpoint gives the plaintext")
    ok("CiphertextForRecipient" not in r and r["KeyId"].startswith("arn:aws:kms:"), "an ordinary Decrypt answer")
    g = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
    ok(len(g["Plaintext"]) == 32 and "CiphertextForRecipient" not in g, "GenerateDataKey: a 32-byte Plaintext")
    ok(kms.decrypt(CiphertextBlob=g["CiphertextBlob"])["Plaintext"] == g["Plaintext"],
       "Decrypt of the data key's CiphertextBlob gives the same key")
    g = kms.generate_data_key(KeyId=key, NumberOfBytes=7)
    ok(len(g["Plaintext"]) == 7, "GenerateDataKey NumberOfBytes=7")
    ok(len(kms.generate_random(NumberOfBytes=48)["Plaintext"]) == 48, "GenerateRandom: 48 bytes")
    for spec in ("ECC_NIST_P256", "RSA_2048"):
        p = kms.generate_data_key_pair(KeyId=key, KeyPairSpec=spec)
        # the private key opened inside must be the public key's (openssl derives it)
        pub = subprocess.run(["openssl", "pkey", "-inform", "DER", "-pubout", "-outform", "DER"],
                             input=p["PrivateKeyPlaintext"], capture_output=True, check=True).stdout
        ok(pub == p["PublicKey"] and "CiphertextForRecipient" not in p and p["KeyPairSpec"] == spec,
           f"GenerateDataKeyPair {spec}: PrivateKeyPlaintext (PKCS#8) matches PublicKey")
        ok(kms.decrypt(CiphertextBlob=p["PrivateKeyCiphertextBlob"])["Plaintext"] == p["PrivateKeyPlaintext"],
           f"GenerateDataKeyPair {spec}: Decrypt of PrivateKeyCiphertextBlob gives the same private key")
    # the app's own context goes to KMS unchanged
    ctx = {"app": "kms-test", "tenant": "7"}
    ok(kms.decrypt(CiphertextBlob=base64.b64decode(ct_ctx), EncryptionContext=ctx)["Plaintext"] == want,
       "Decrypt with the app's EncryptionContext")
    code, msg, status = error_of(kms.decrypt, CiphertextBlob=base64.b64decode(ct_ctx))
    ok(code == "InvalidCiphertextException" and status == 400, f"without it, KMS's {code} ({status}): {msg}")
    # pass-through operations, signed with the enclave's credentials
    e = kms.encrypt(KeyId=key, Plaintext=b"made inside", EncryptionContext=ctx)
    ok(kms.decrypt(CiphertextBlob=e["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == b"made inside",
       "Encrypt (pass-through) then Decrypt")
    ok(kms.describe_key(KeyId=key)["KeyMetadata"]["KeyId"], "DescribeKey (pass-through)")
    # a key bound to another PCR0: KMS's refusal, unchanged
    code, msg, status = error_of(kms.decrypt, CiphertextBlob=base64.b64decode(ct_other))
    ok(code == "AccessDeniedException" and status == 400 and "cloister" not in msg,
       f"a key bound to another PCR0: KMS's AccessDeniedException ({status}): {msg}")
    print("MESSAGE=" + msg)
    code, msg, status = error_of(kms.generate_data_key, KeyId=other_key, KeySpec="AES_256")
    ok(code == "AccessDeniedException", f"GenerateDataKey under it: {code}")
    code, msg, status = error_of(kms.describe_key, KeyId="alias/no-such-key")
    ok(code == "NotFoundException", f"an unknown key: KMS's {code}: {msg}")


def denied(url, akid, secret, ca, key, ct):
    kms = client(url, akid, secret, verify=ca)
    code, msg, _ = error_of(kms.decrypt, CiphertextBlob=base64.b64decode(ct))
    ok(code == "AccessDeniedException", f"Decrypt straight to KMS with the enclave's own credentials: {code}")
    code, msg, _ = error_of(kms.generate_data_key, KeyId=key, KeySpec="AES_256")
    ok(code == "AccessDeniedException", f"GenerateDataKey straight to KMS: {code}")
    code, msg, _ = error_of(kms.generate_data_key_pair, KeyId=key, KeyPairSpec="ECC_NIST_P256")
    ok(code == "AccessDeniedException", f"GenerateDataKeyPair straight to KMS: {code}")


def bad(port):
    s, b = raw(port, b'{"CiphertextBlob": "AAAA"')
    ok(s == 400 and b.get("__type") == "SerializationException", f"truncated JSON: {s} {b}")
    s, b = raw(port, b'{"CiphertextBlob": "AAAA", "CiphertextBlob": "AAAA"}')
    ok(s == 400 and b.get("__type") == "SerializationException", f"duplicate member: {s} {b}")
    s, b = raw(port, b'["CiphertextBlob"]')
    ok(s == 400 and b.get("__type") == "SerializationException", f"not an object: {s} {b}")
    s, b = raw(port, b'{"CiphertextBlob": "AAAA"} x')
    ok(s == 400 and b.get("__type") == "SerializationException", f"trailing bytes: {s} {b}")
    s, b = raw(port, b'{}', target="TrentService.CreateKey")
    ok(s == 400 and b.get("__type") == "UnknownOperationException", f"CreateKey is not served: {s} {b}")
    s, b = raw(port, b'{}', target="TrentService.Nope")
    ok(s == 400 and b.get("__type") == "UnknownOperationException", f"unknown target: {s} {b}")
    s, b = raw(port, b'{}', target=None)
    ok(s == 400 and b.get("__type") == "UnknownOperationException", f"no X-Amz-Target: {s} {b}")
    s, b = raw(port, b'{}', ctype="application/json")
    ok(s == 400 and b.get("__type") == "SerializationException", f"wrong Content-Type: {s} {b}")
    s, b = raw(port, b'', method="GET")
    ok(s == 405, f"GET: {s} {b}")
    s, b = raw(port, json.dumps({"CiphertextBlob": "AAAA", "Bogus": 1}).encode())
    ok(s == 400 and b.get("__type") == "ValidationException" and "Bogus" in b["message"], f"unknown member: {s} {b}")
    s, b = raw(port, json.dumps({"CiphertextBlob": 5}).encode())
    ok(s == 400 and b.get("__type") == "SerializationException", f"a number for a blob: {s} {b}")
    s, b = raw(port, json.dumps({"CiphertextBlob": "not base64!"}).encode())
    ok(s == 400 and b.get("__type") == "SerializationException", f"not base64: {s} {b}")
    s, b = raw(port, json.dumps({"KeySpec": "AES_256"}).encode(), target="TrentService.GenerateDataKey")
    ok(s == 400 and b.get("__type") == "ValidationException" and "keyId" in b["message"], f"no KeyId: {s} {b}")
    s, b = raw(port, json.dumps({"NumberOfBytes": 1025}).encode(), target="TrentService.GenerateRandom")
    ok(s == 400 and b.get("__type") == "ValidationException", f"GenerateRandom 1025: {s} {b}")
    big = base64.b64encode(b"\x01" * (6 * 1024 + 1)).decode()
    s, b = raw(port, json.dumps({"CiphertextBlob": big}).encode())
    ok(s == 400 and b.get("__type") == "ValidationException" and "6144" in b["message"],
       f"a CiphertextBlob of 6 KiB + 1: {s} {b}")
    at_limit = base64.b64encode(b"\x01" * 6144).decode()
    s, b = raw(port, json.dumps({"CiphertextBlob": at_limit}).encode())
    ok(s == 400 and b.get("__type") in ("InvalidCiphertextException", "NotFoundException")
       and "cloister" not in b.get("message", ""), f"6 KiB exactly reaches KMS, which refuses it: {s} {b}")
    s, b = raw(port, json.dumps({"CiphertextBlob": "AAAA", "GrantTokens": ["x" * 40000]}).encode())
    ok(s == 413 and b.get("__type") == "ValidationException", f"a 40 KB body: {s} {b}")
    s, b = raw(port, b"{" + b" " * (100 * 1024) + b"}")
    ok(s == 413, f"a 100 KB body: {s}")
    s, b = raw(port, b"[" * 20000 + b"]" * 20000)
    ok(s == 413 or (s == 400 and b.get("__type") == "SerializationException"), f"deep nesting: {s}")
    s, b = raw(port, b"[" * 5000 + b"]" * 5000)
    ok(s == 400 and b.get("__type") == "SerializationException", f"deep nesting within the size: {s} {b}")


def restricted(port, key, other_key, ct, plaintext_file):
    want = open(plaintext_file, "rb").read()
    kms = client(f"http://127.0.0.1:{port}")
    ok(kms.decrypt(CiphertextBlob=base64.b64decode(ct), KeyId=key)["Plaintext"] == want,
       "restricted: Decrypt naming an allowed key")
    code, msg, s = error_of(kms.decrypt, CiphertextBlob=base64.b64decode(ct))
    ok(code == "AccessDeniedException" and "KeyId" in msg, f"restricted: Decrypt naming no key: {code}: {msg}")
    code, msg, s = error_of(kms.generate_data_key, KeyId=other_key, KeySpec="AES_256")
    ok(code == "AccessDeniedException" and "cloister" in msg, f"restricted: another key: {code}: {msg}")
    code, msg, s = error_of(kms.encrypt, KeyId=key, Plaintext=b"x")
    ok(code == "AccessDeniedException" and "Encrypt" in msg, f"restricted: Encrypt not served: {code}: {msg}")
    code, msg, s = error_of(kms.decrypt, CiphertextBlob=base64.b64decode(ct), KeyId=other_key)
    ok(code == "AccessDeniedException", f"restricted: Decrypt naming a key not allowed: {code}")


if __name__ == "__main__":
    {"through": through, "denied": denied, "bad": bad, "restricted": restricted}[sys.argv[1]](*sys.argv[2:])
