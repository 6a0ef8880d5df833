#!/usr/bin/env node
// The Node.js side of the verification benchmark: the same loop as
// bench_verify over the same files, using the independent verifier in
// tests/node/verify.js (a straightforward verifier without any cache: every
// document is decoded and its whole chain and signature checked each time).
//
//   node bench/verify-node.js --root ROOT.pem [--rounds N] FILE...
//
// The last line of output is machine-readable: "RESULT key=value ...".
'use strict';

const fs = require('node:fs');
const path = require('node:path');

let verifier;
try {
  verifier = require(path.join(__dirname, '..', 'tests', 'node', 'verify.js'));
} catch (e) {
  process.stderr.write(`verify-node.js: cannot load tests/node/verify.js (${e.message}); run scripts/node-deps.sh\n`);
  process.exit(1);
}
const { verifyDocument, decodeInput, readRootDer } = verifier;

function main(argv) {
  let root = null;
  let rounds = 5;
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--root') root = argv[++i];
    else if (argv[i] === '--rounds') rounds = Number(argv[++i]);
    else files.push(argv[i]);
  }
  if (!root || files.length === 0 || !Number.isInteger(rounds) || rounds < 1) {
    process.stderr.write('usage: node verify-node.js --root ROOT.pem [--rounds N] FILE...\n');
    process.exit(2);
  }
  const rootDer = readRootDer(root);
  const docs = files.map((f) => ({ file: f, bytes: decodeInput(fs.readFileSync(f)) }));

  const verifyAll = () => {
    for (const d of docs) {
      const r = verifyDocument(d.bytes, rootDer, null); // at the document's own timestamp
      if (!r.ok) {
        process.stderr.write(`verify-node.js: ${d.file}: rejected: ${r.reason}\n`);
        process.exit(1);
      }
    }
  };
  const n = docs.length;
  const t0 = process.hrtime.bigint();
  verifyAll();
  const t1 = process.hrtime.bigint();
  for (let r = 1; r < rounds; r++) verifyAll();
  const t2 = process.hrtime.bigint();
  const s = (a, b) => Number(b - a) / 1e9;
  const first = n / s(t0, t1);
  const steady = rounds > 1 ? (n * (rounds - 1)) / s(t1, t2) : first;
  const overall = (n * rounds) / s(t0, t2);
  console.log(`node ${process.version}: ${n} documents x ${rounds} rounds in ${s(t0, t2).toFixed(3)} s`);
  console.log(`  first round: ${first.toFixed(0)} documents/s`);
  console.log(`  later rounds: ${steady.toFixed(0)} documents/s`);
  console.log(`  overall: ${overall.toFixed(0)} documents/s`);
  console.log(
    `RESULT impl=node documents=${n} rounds=${rounds} first_per_s=${first.toFixed(1)} ` +
      `steady_per_s=${steady.toFixed(1)} overall_per_s=${overall.toFixed(1)}`,
  );
}

main(process.argv.slice(2));
