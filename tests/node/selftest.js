#!/usr/bin/env node
// Negative and edge-case checks of verify.js itself on the real Nitro
// vectors: it must accept what AWS accepts and refuse every tampering, or
// the cross-check against cloister proves nothing.
//
//   node selftest.js VECTOR_DIR
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const cbor = require('cbor');
const { verifyDocument, decodeInput, readRootDer, sigStructure } = require('./verify.js');

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: node selftest.js VECTOR_DIR\n');
  process.exit(2);
}
const root = readRootDer(path.join(dir, 'aws-nitro-root-g1.pem'));
const load = (f) => decodeInput(fs.readFileSync(path.join(dir, f)));
const good = [
  'nitro-2022-10-13.cbor',
  'nitro-2022-10-12-debug.cbor',
  'nitro-2023-09-18.b64',
  'nitro-2024-09-07-maxfields.b64',
  'nitro-2024-09-07-debug.b64',
];

let failed = 0;
function expect(name, result, ok, fragment) {
  const pass = result.ok === ok && (ok || !fragment || result.reason.includes(fragment));
  if (!pass) failed++;
  const got = result.ok ? 'ok' : `rejected: ${result.reason}`;
  console.log(`${pass ? 'ok  ' : 'FAIL'} ${name}: ${got}`);
}

// Rebuilds a COSE_Sign1 with some parts replaced.
function rebuild(bytes, edit) {
  const parts = cbor.decodeFirstSync(bytes, { preferMap: true });
  edit(parts);
  return cbor.encode(parts);
}

for (const f of good) expect(`${f} at its timestamp`, verifyDocument(load(f), root), true);

const doc = load('nitro-2022-10-13.cbor');
const ts = 1665651482136;
expect('tag 18 accepted', verifyDocument(Buffer.concat([Buffer.from([0xd2]), doc]), root), true);
expect('other tag refused', verifyDocument(Buffer.concat([Buffer.from([0xd1]), doc]), root), false, 'tag');
expect('trailing byte', verifyDocument(Buffer.concat([doc, Buffer.from([0])]), root), false, 'CBOR');
expect('truncated', verifyDocument(doc.subarray(0, doc.length - 1), root), false, 'CBOR');

const sigFlip = Buffer.from(doc);
sigFlip[sigFlip.length - 10] ^= 0x01;
expect('signature byte flipped', verifyDocument(sigFlip, root), false, 'COSE signature');

const payloadFlip = rebuild(doc, (p) => {
  p[2] = Buffer.from(p[2]);
  p[2][20] ^= 0x01; // inside module_id's text
});
expect('payload byte flipped', verifyDocument(payloadFlip, root), false, 'COSE signature');

expect('4 hours after the timestamp', verifyDocument(doc, root, ts + 4 * 3600 * 1000), false, 'not valid at');
expect('before the leaf was issued', verifyDocument(doc, root, ts - 3600 * 1000), false, 'not valid at');
expect('an hour later is still fine', verifyDocument(doc, root, ts + 3600 * 1000), true);

const payload = cbor.decodeFirstSync(cbor.decodeFirstSync(doc)[2], { preferMap: true });
expect('another root', verifyDocument(doc, payload.get('cabundle')[1]), false, 'trusted root');

const withPayload = (edit) =>
  rebuild(doc, (p) => {
    const m = cbor.decodeFirstSync(p[2], { preferMap: true });
    edit(m);
    p[2] = cbor.encode(m);
  });
expect('digest SHA256', verifyDocument(withPayload((m) => m.set('digest', 'SHA256')), root), false, 'digest');
expect('module_id empty', verifyDocument(withPayload((m) => m.set('module_id', '')), root), false, 'module_id');
expect('timestamp text', verifyDocument(withPayload((m) => m.set('timestamp', '1')), root), false, 'timestamp');
expect('pcr 47 bytes', verifyDocument(withPayload((m) => m.get('pcrs').set(3, Buffer.alloc(47))), root), false, 'pcrs');
expect('pcr index 32', verifyDocument(withPayload((m) => m.get('pcrs').set(32, Buffer.alloc(48))), root), false, 'pcrs');
expect('cabundle empty', verifyDocument(withPayload((m) => m.set('cabundle', [])), root), false, 'cabundle');
expect('nonce 1025 bytes', verifyDocument(withPayload((m) => m.set('nonce', Buffer.alloc(1025))), root), false, 'nonce');
expect('user_data text', verifyDocument(withPayload((m) => m.set('user_data', 'x')), root), false, 'user_data');
expect('unknown key', verifyDocument(withPayload((m) => m.set('extra', 1)), root), false, 'unknown key');
expect('certificate missing', verifyDocument(withPayload((m) => m.delete('certificate')), root), false, 'certificate');
expect('float timestamp', verifyDocument(withPayload((m) => m.set('timestamp', 1.5)), root), false, 'floating');
// The payload re-encoded but unchanged in meaning: only the signature fails.
expect('nonce null -> absent', verifyDocument(withPayload((m) => m.delete('nonce')), root), false, 'COSE signature');

const prot = (bytes) => rebuild(doc, (p) => (p[0] = bytes));
expect('alg ES256', verifyDocument(prot(Buffer.from('a10126', 'hex')), root), false, 'alg');
expect('unprotected null', verifyDocument(rebuild(doc, (p) => (p[1] = null)), root), false, 'unprotected');
expect('signature 95 bytes', verifyDocument(rebuild(doc, (p) => (p[3] = p[3].subarray(1))), root), false, 'signature');

const bad = load('bad-selfsigned.b64');
expect('bad-selfsigned', verifyDocument(bad, root), false);
expect('bad-selfsigned at its time', verifyDocument(bad, root, 1713379906000), false);
expect(
  'bad-selfsigned with a map as unprotected header',
  verifyDocument(rebuild(bad, (p) => (p[1] = new Map())), root),
  false,
  'cabundle',
);

// Sig_structure encodings around every length boundary of a byte string.
for (const n of [0, 23, 24, 255, 256, 65535, 65536]) {
  try {
    const s = sigStructure(Buffer.from([0xa1, 0x01, 0x38, 0x22]), Buffer.alloc(n, 7));
    const back = cbor.decodeFirstSync(s);
    const okShape = back[0] === 'Signature1' && back[2].length === 0 && back[3].length === n;
    expect(`Sig_structure with a ${n}-byte payload`, { ok: okShape, reason: 'decodes wrong' }, true);
  } catch (e) {
    expect(`Sig_structure with a ${n}-byte payload`, { ok: false, reason: e.message }, true);
  }
}

console.log(failed ? `${failed} checks failed` : 'all checks passed');
process.exit(failed ? 1 : 0);
