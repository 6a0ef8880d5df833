#!/usr/bin/env node
// An independent verifier of AWS Nitro Enclaves attestation documents.
//
// It shares no code with cloister: CBOR comes from the `cbor` npm package,
// X.509 and ECDSA from Node's built-in crypto.  It follows AWS's published
// procedure ("Verifying the root of trust", aws-nitro-enclaves-nsm-api's
// attestation_process.md) and exists to cross-check cloister's simulator
// and verifier.  It has no policy (debug-mode documents verify like any
// other): it only answers "is this a well-formed document signed by a
// chain that ends in the given root, at this time?".
//
//   node verify.js --root ROOT.pem [--at UNIX_MS] [--json] FILE...
//
// FILE is raw CBOR or base64 text of it.  One line per file:
// "FILE: ok" or "FILE: rejected: reason"; exit 0 only if all verified.
// As a module: verifyDocument(bytes, rootDer, atMs) and friends.
'use strict';

const fs = require('node:fs');
const crypto = require('node:crypto');
const cbor = require('cbor');

const COSE_ALG_ES384 = -35;
const COSE_TAG_SIGN1 = 18;
const MAX_CERT_LEN = 1024;
const MAX_FIELD_LEN = 1024; // public_key, user_data, nonce (real documents use 1024)
const PCR_LENGTHS = new Set([32, 48, 64]);
const REQUIRED = ['module_id', 'digest', 'timestamp', 'pcrs', 'certificate', 'cabundle'];
const OPTIONAL = ['public_key', 'user_data', 'nonce'];
const KNOWN = new Set([...REQUIRED, ...OPTIONAL]);

const DECODE_OPTS = { preferMap: true, preventDuplicateKeys: true, max_depth: 16 };

class Rejected extends Error {}
function reject(msg) {
  throw new Rejected(msg);
}

// The cbor package maps several tags and all floats to plain JavaScript
// values, which would hide e.g. a float timestamp or a float PCR index.
// The attestation payload's CDDL has neither, so scan the encoded payload
// once and refuse both, wherever they appear.  This is only a structural
// scan; the values come from the cbor package.
function scanNoTagsNoFloats(buf) {
  let pos = 0;
  function head() {
    if (pos >= buf.length) reject('payload: truncated CBOR');
    const ib = buf[pos++];
    const mt = ib >> 5;
    const ai = ib & 0x1f;
    let arg;
    if (ai < 24) arg = ai;
    else if (ai <= 27) {
      const n = 1 << (ai - 24);
      if (pos + n > buf.length) reject('payload: truncated CBOR');
      arg = 0;
      for (let i = 0; i < n; i++) arg = arg * 256 + buf[pos + i];
      pos += n;
    } else if (ai === 31) arg = -1; // indefinite (or break)
    else reject('payload: reserved CBOR additional information');
    return { mt, ai, arg };
  }
  function item(depth) {
    if (depth > 16) reject('payload: nesting too deep');
    const h = head();
    switch (h.mt) {
      case 0:
      case 1:
        if (h.arg < 0) reject('payload: indefinite integer');
        return;
      case 2:
      case 3:
        if (h.arg < 0) {
          for (;;) {
            if (buf[pos] === 0xff) {
              pos++;
              return;
            }
            const c = head();
            if (c.mt !== h.mt || c.arg < 0) reject('payload: bad indefinite string chunk');
            pos += c.arg;
          }
        }
        pos += h.arg;
        if (pos > buf.length) reject('payload: truncated CBOR');
        return;
      case 4:
      case 5: {
        const per = h.mt === 5 ? 2 : 1;
        if (h.arg < 0) {
          while (buf[pos] !== 0xff) {
            if (pos >= buf.length) reject('payload: truncated CBOR');
            for (let i = 0; i < per; i++) item(depth + 1);
          }
          pos++;
          return;
        }
        for (let i = 0; i < h.arg * per; i++) item(depth + 1);
        return;
      }
      case 6:
        reject(`payload: CBOR tag ${h.arg} not allowed`);
        return;
      case 7:
        if (h.ai >= 25 && h.ai <= 27) reject('payload: floating-point value not allowed');
        if (h.ai === 31) reject('payload: stray CBOR break');
        return;
    }
  }
  item(0);
  if (pos !== buf.length) reject('payload: trailing bytes');
}

function decodeOne(buf, what) {
  try {
    return cbor.decodeFirstSync(buf, DECODE_OPTS); // throws on trailing data
  } catch (e) {
    reject(`${what}: bad CBOR: ${e.message}`);
  }
  return undefined;
}

const isBytes = (v) => Buffer.isBuffer(v);

function checkBytes(v, name, min, max) {
  if (!isBytes(v)) reject(`${name}: not a byte string`);
  if (v.length < min || v.length > max) reject(`${name}: ${v.length} bytes, expected ${min}..${max}`);
  return v;
}

// The encoding of a CBOR byte-string head, per RFC 8949 preferred
// serialization (shortest form).
function bstrHead(len) {
  if (len < 24) return Buffer.from([0x40 | len]);
  if (len < 0x100) return Buffer.from([0x58, len]);
  if (len < 0x10000) return Buffer.from([0x59, len >> 8, len & 0xff]);
  const b = Buffer.alloc(5);
  b[0] = 0x5a;
  b.writeUInt32BE(len, 1);
  return b;
}

// Sig_structure = ["Signature1", body_protected, external_aad = h'', payload]
// (RFC 9052 section 4.4), encoded deterministically.  Built with the cbor
// package and checked byte for byte against the expected encoding.
function sigStructure(protectedBytes, payload) {
  const viaPackage = cbor.encode(['Signature1', protectedBytes, Buffer.alloc(0), payload]);
  const expected = Buffer.concat([
    Buffer.from([0x84, 0x6a]),
    Buffer.from('Signature1', 'ascii'),
    bstrHead(protectedBytes.length),
    protectedBytes,
    Buffer.from([0x40]),
    bstrHead(payload.length),
    payload,
  ]);
  if (!viaPackage.equals(expected)) {
    throw new Error('internal: cbor package encoded the Sig_structure non-canonically');
  }
  return expected;
}

// Decodes and checks the COSE_Sign1 envelope and the payload's fields.
function parseDocument(bytes) {
  let msg = decodeOne(bytes, 'COSE_Sign1');
  if (msg instanceof cbor.Tagged) {
    if (msg.tag !== COSE_TAG_SIGN1) reject(`COSE_Sign1: unexpected tag ${msg.tag}`);
    msg = msg.value;
  }
  if (!Array.isArray(msg) || msg.length !== 4) reject('COSE_Sign1: not an array of 4');
  const [protectedBytes, unprotected, payload, signature] = msg;
  if (!isBytes(protectedBytes)) reject('COSE_Sign1: protected header is not a byte string');
  if (!(unprotected instanceof Map)) reject('COSE_Sign1: unprotected header is not a map');
  if (!isBytes(payload)) reject('COSE_Sign1: payload is not a byte string');
  if (!isBytes(signature)) reject('COSE_Sign1: signature is not a byte string');
  if (signature.length !== 96) reject(`COSE_Sign1: signature is ${signature.length} bytes, expected 96`);

  const prot = decodeOne(protectedBytes, 'protected header');
  if (!(prot instanceof Map)) reject('protected header: not a map');
  if (prot.get(1) !== COSE_ALG_ES384) reject(`protected header: alg is ${prot.get(1)}, expected -35 (ES384)`);
  if (unprotected.has(1)) reject('unprotected header: alg must be protected');

  scanNoTagsNoFloats(payload);
  const p = decodeOne(payload, 'payload');
  if (!(p instanceof Map)) reject('payload: not a map');
  for (const k of p.keys()) {
    if (typeof k !== 'string' || !KNOWN.has(k)) reject(`payload: unknown key ${JSON.stringify(String(k))}`);
  }
  for (const k of REQUIRED) if (!p.has(k)) reject(`payload: ${k} missing`);

  const moduleId = p.get('module_id');
  if (typeof moduleId !== 'string' || moduleId.length === 0) reject('module_id: not a non-empty text string');
  if (p.get('digest') !== 'SHA384') reject('digest: not "SHA384"');
  const ts = p.get('timestamp');
  if (typeof ts !== 'number' || !Number.isSafeInteger(ts) || ts <= 0) reject('timestamp: not a positive integer');

  const pcrs = p.get('pcrs');
  if (!(pcrs instanceof Map) || pcrs.size < 1 || pcrs.size > 32) reject('pcrs: not a map of 1..32 entries');
  for (const [i, v] of pcrs) {
    if (typeof i !== 'number' || !Number.isInteger(i) || i < 0 || i > 31) reject(`pcrs: bad index ${i}`);
    if (!isBytes(v) || !PCR_LENGTHS.has(v.length)) reject(`pcrs[${i}]: not a 32, 48 or 64-byte string`);
  }

  const certificate = checkBytes(p.get('certificate'), 'certificate', 1, MAX_CERT_LEN);
  const cabundle = p.get('cabundle');
  if (!Array.isArray(cabundle) || cabundle.length === 0) reject('cabundle: not a non-empty array');
  cabundle.forEach((c, i) => checkBytes(c, `cabundle[${i}]`, 1, MAX_CERT_LEN));

  const optional = {};
  for (const k of OPTIONAL) {
    const v = p.get(k); // absent -> undefined, CBOR null -> null
    if (v === undefined || v === null) optional[k] = null;
    else optional[k] = checkBytes(v, k, 0, MAX_FIELD_LEN);
  }

  return {
    protectedBytes,
    payload,
    signature,
    moduleId,
    timestamp: ts,
    pcrs,
    certificate,
    cabundle,
    keys: [...p.keys()],
    ...optional,
  };
}

function certTimes(cert) {
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  if (Number.isNaN(from) || Number.isNaN(to)) reject(`${cert.subject}: unreadable validity`);
  return [from, to];
}

function parseCert(der, what) {
  try {
    return new crypto.X509Certificate(der);
  } catch (e) {
    reject(`${what}: not a DER certificate: ${e.message}`);
  }
  return undefined;
}

// AWS's chain: [certificate, cabundle[N-1], ..., cabundle[0]] with
// cabundle[0] the root.
function verifyChain(doc, rootDer, atMs) {
  if (!doc.cabundle[0].equals(rootDer)) reject('cabundle[0] is not the trusted root');
  const ders = [doc.certificate, ...doc.cabundle.slice().reverse()];
  const names = ['certificate', ...doc.cabundle.map((_, i) => `cabundle[${i}]`).reverse()];
  const certs = ders.map((d, i) => parseCert(d, names[i]));
  certs.forEach((c, i) => {
    const [from, to] = certTimes(c);
    if (atMs < from || atMs > to) {
      reject(`${names[i]} not valid at ${new Date(atMs).toISOString()} (${c.validFrom} .. ${c.validTo})`);
    }
    if (i > 0 && !c.ca) reject(`${names[i]} is not a CA certificate`);
  });
  if (certs[0].ca) reject('certificate (leaf) is a CA certificate');
  for (let i = 0; i + 1 < certs.length; i++) {
    const child = certs[i];
    const parent = certs[i + 1];
    if (!child.checkIssued(parent)) reject(`${names[i]} is not issued by ${names[i + 1]}`);
    if (!child.verify(parent.publicKey)) reject(`${names[i]}: signature does not verify with ${names[i + 1]}'s key`);
  }
  // The root itself is trusted by byte equality with the given root, as
  // AWS's procedure says; its self-signature adds nothing.
  return certs[0];
}

function verifyCoseSignature(doc, leaf) {
  const key = leaf.publicKey;
  const details = key.asymmetricKeyDetails || {};
  if (key.asymmetricKeyType !== 'ec' || details.namedCurve !== 'secp384r1') {
    reject('certificate: leaf key is not P-384');
  }
  const toBeSigned = sigStructure(doc.protectedBytes, doc.payload);
  const ok = crypto.verify('sha384', toBeSigned, { key, dsaEncoding: 'ieee-p1363' }, doc.signature);
  if (!ok) reject('COSE signature does not verify');
}

// Full verification of one document.  bytes: raw COSE_Sign1 CBOR;
// rootDer: the trusted root certificate (DER Buffer); atMs: the time, or
// undefined/null for the document's own timestamp.
// Returns {ok: true, doc} or {ok: false, reason}.
function verifyDocument(bytes, rootDer, atMs) {
  try {
    const doc = parseDocument(bytes);
    const at = atMs === undefined || atMs === null ? doc.timestamp : atMs;
    const leaf = verifyChain(doc, rootDer, at);
    verifyCoseSignature(doc, leaf);
    return { ok: true, doc };
  } catch (e) {
    if (e instanceof Rejected) return { ok: false, reason: e.message };
    throw e;
  }
}

// Raw CBOR, or base64 text of it (standard or URL-safe, whitespace allowed).
function decodeInput(buf) {
  const text = buf.toString('latin1');
  if (buf.length > 0 && /^[A-Za-z0-9+/=_\-\s]+$/.test(text)) {
    const compact = text.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(compact) || (compact.replace(/=+$/, '').length % 4) === 1) {
      return buf;
    }
    return Buffer.from(compact.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  }
  return buf;
}

function readRootDer(path) {
  const pem = fs.readFileSync(path);
  return new crypto.X509Certificate(pem).raw;
}

function usage() {
  process.stderr.write('usage: node verify.js --root ROOT.pem [--at UNIX_MS] [--json] FILE...\n');
  process.exit(2);
}

function main(argv) {
  let rootPath = null;
  let at = null;
  let json = false;
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--root') rootPath = argv[++i];
    else if (a === '--at') {
      const v = argv[++i];
      if (!/^\d+$/.test(v || '')) usage();
      at = Number(v);
    } else if (a === '--json') json = true;
    else if (a === '-h' || a === '--help') usage();
    else if (a.startsWith('--')) usage();
    else files.push(a);
  }
  if (!rootPath || files.length === 0) usage();
  let rootDer;
  try {
    rootDer = readRootDer(rootPath);
  } catch (e) {
    process.stderr.write(`${rootPath}: cannot read a root certificate: ${e.message}\n`);
    process.exit(2);
  }
  let allOk = true;
  for (const f of files) {
    let result;
    try {
      result = verifyDocument(decodeInput(fs.readFileSync(f)), rootDer, at);
    } catch (e) {
      result = { ok: false, reason: e.code === 'ENOENT' ? 'no such file' : e.message };
    }
    allOk = allOk && result.ok;
    if (json) {
      const out = { file: f, ok: result.ok };
      if (result.ok) {
        const d = result.doc;
        out.module_id = d.moduleId;
        out.timestamp = d.timestamp;
        out.keys = d.keys.join(',');
        out.cabundle_length = d.cabundle.length;
        out.pcrs = Object.fromEntries([...d.pcrs].map(([i, v]) => [i, v.toString('hex')]));
        for (const k of OPTIONAL) out[k] = d[k] === null ? null : d[k].toString('hex');
      } else out.reason = result.reason;
      process.stdout.write(JSON.stringify(out) + '\n');
    } else {
      process.stdout.write(result.ok ? `${f}: ok\n` : `${f}: rejected: ${result.reason}\n`);
    }
  }
  process.exit(allOk ? 0 : 1);
}

module.exports = { verifyDocument, parseDocument, decodeInput, readRootDer, sigStructure };

if (require.main === module) main(process.argv.slice(2));
