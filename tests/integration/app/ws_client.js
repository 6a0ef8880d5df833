#!/usr/bin/env node
// A WebSocket echo client for the integration tests (the `ws` package from
// tests/node/node_modules).
//
//   node ws_client.js [--binary] [--size N] [--timeout MS] URL [MESSAGE...]
//
// Connects to URL (ws:// or wss://; wss:// accepts any certificate), sends
// each MESSAGE (as a text frame, or a binary frame with --binary) and, with
// --size N, one more binary message of N pseudo-random bytes; then expects the
// echoes back in order, same type and content, prints each one ("text: MSG",
// "binary: MSG", or "binary: N bytes sha256=HEX" for --size), closes with
// 1000 and exits 0.  Exits 1 on a mismatch, a failed handshake, an early
// close or when everything has not come back within --timeout (default 10000
// ms); 2 on a usage error; 3 when `ws` cannot be loaded.
'use strict';

const crypto = require('crypto');
const path = require('path');
const { createRequire } = require('module');

function usage(message) {
  if (message) console.error(`ws_client: ${message}`);
  console.error('usage: ws_client.js [--binary] [--size N] [--timeout MS] URL [MESSAGE...]');
  process.exit(2);
}

function loadWs() {
  const nodeDir = path.join(__dirname, '..', '..', 'node');
  try {
    return createRequire(path.join(nodeDir, 'package.json'))('ws');
  } catch (first) {
    try {
      return require('ws');
    } catch (_) {
      console.error(`ws_client: cannot load 'ws' (run scripts/node-deps.sh): ${first.message.split('\n')[0]}`);
      process.exit(3);
    }
  }
}

const args = process.argv.slice(2);
let binary = false;
let size = null;
let timeout = 10000;
while (args.length && args[0].startsWith('--')) {
  const a = args.shift();
  if (a === '--binary') binary = true;
  else if (a === '--size' || a === '--timeout') {
    const v = args.shift();
    if (!/^[0-9]+$/.test(v || '')) usage(`${a} takes a number`);
    if (a === '--size') size = Number(v);
    else timeout = Number(v);
  } else if (a === '--') break;
  else usage(`unknown option ${a}`);
}
const url = args.shift();
if (!url || !/^wss?:\/\//.test(url)) usage('URL must start with ws:// or wss://');

const WebSocket = loadWs();
const expected = args.map((m) => ({ binary, data: Buffer.from(m), show: `${binary ? 'binary' : 'text'}: ${m}` }));
if (size !== null) {
  const data = crypto.randomBytes(size);
  const sum = crypto.createHash('sha256').update(data).digest('hex');
  expected.push({ binary: true, data, show: `binary: ${size} bytes sha256=${sum}` });
}

let received = 0;
let finished = false;
const finish = (code, message) => {
  if (finished) return;
  finished = true;
  if (message) console.error(`ws_client: ${message}`);
  clearTimeout(timer);
  if (code === 0 && ws.readyState === WebSocket.OPEN) {
    ws.once('close', () => process.exit(0));
    ws.close(1000, 'done');
    setTimeout(() => process.exit(0), 2000).unref();
  } else {
    ws.terminate();
    process.exit(code);
  }
};
const timer = setTimeout(
  () => finish(1, `timeout after ${timeout} ms: ${received} of ${expected.length} echoes received`),
  timeout
);

const ws = new WebSocket(url, { rejectUnauthorized: false, maxPayload: 256 * 1024 * 1024 });
ws.on('unexpected-response', (req, res) => finish(1, `handshake refused: HTTP ${res.statusCode}`));
ws.on('error', (err) => finish(1, `error: ${err.message}`));
ws.on('close', (code) => finish(1, `closed by the server (code ${code}) after ${received} of ${expected.length} echoes`));
ws.on('open', () => {
  if (expected.length === 0) return finish(0);
  for (const m of expected) ws.send(m.data, { binary: m.binary });
});
ws.on('message', (data, isBinary) => {
  const want = expected[received];
  if (!want) return finish(1, `unexpected extra message (${data.length} bytes)`);
  const got = Buffer.isBuffer(data) ? data : Buffer.concat([].concat(data));
  if (isBinary !== want.binary || !got.equals(want.data)) {
    const what = isBinary ? `${got.length} binary bytes` : JSON.stringify(got.toString());
    return finish(1, `echo ${received + 1} mismatch: got ${what}, want ${want.show}`);
  }
  console.log(want.show);
  if (++received === expected.length) finish(0);
});
