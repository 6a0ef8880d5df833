#!/usr/bin/env node
// The peer app behind `cloister enclave` in the proxy's integration tests: a
// plain HTTP/1.1 server (keep-alive on) with endpoints that exercise what a
// reverse proxy must get right.  Node's built-in modules only, plus the `ws`
// package from tests/node/node_modules (scripts/node-deps.sh installs it).
//
// Usage:
//   node app.js --listen 127.0.0.1:PORT | --listen unix:/path/app.sock
//               [--keep-alive-timeout MS] [--log]
//       Serves until SIGTERM or SIGINT (then exits 0 at once, closing every
//       connection and removing the unix socket file).  Prints
//       "app: listening on 127.0.0.1:PORT" (or "unix:/path") on stdout when
//       ready; --listen also takes tcp:HOST:PORT, [::1]:PORT and a bare PORT
//       (127.0.0.1), and port 0 (the line names the port chosen).  --log
//       prints one line per request.  The idle keep-alive timeout defaults to
//       65 s (long, so that tests of the proxy's connection pool do not race
//       the app closing idle connections).
//   node app.js --gen N SEED
//       Writes the N bytes that GET /bytes?n=N&seed=SEED sends to stdout, so
//       a test can compute the expected checksum: `node app.js --gen N S | sha256sum`.
//
// Endpoints (any path not listed is 404):
//   GET /hello              200 "hello from the app\n"
//   GET /echo-headers       200 JSON {method, url, httpVersion, headers (node's
//                           lower-cased map), rawHeaders ([name, value] pairs as
//                           received), remoteAddress, remotePort, connection}
//   GET /bytes?n=N&seed=S   N bytes of a deterministic pseudo-random stream
//                           (AES-128-CTR keystream, key = SHA-256("cloister-app-bytes:" S)
//                           [0..16)), streamed in 64 KiB chunks with Content-Length;
//                           &chunked=1: without Content-Length (chunked encoding)
//   POST|PUT /upload        reads the body as it comes (Content-Length or chunked,
//                           Expect: 100-continue answered) and replies 200
//                           {"bytes":N,"sha256":"hex","method":..,"chunked":bool}
//   GET /slow?ms=N          waits N ms, then 200 "slow\n"
//   GET /status?code=N      status N (200..599) with body "status N\n" (none for 204/304)
//   GET /sse, GET /stream   headers at once, then "tick\n" every 100 ms, 5 times
//                           (&n=COUNT&ms=INTERVAL); /sse as text/event-stream
//   GET /count              200 {"requests":R,"connections":C,"open":O,"websockets":W}:
//                           requests served so far (this one included), distinct
//                           connections accepted so far, connections open now,
//                           WebSocket sessions accepted so far
//   GET /abort              closes the connection without any response
//   WebSocket /ws           echoes every message back, text as text, binary as binary
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const path = require('path');
const { createRequire } = require('module');

const CHUNK = 64 * 1024;
const ZEROS = Buffer.alloc(CHUNK);

function usage(message) {
  if (message) process.stderr.write(`app: ${message}\n`);
  process.stderr.write(
    'usage: app.js --listen HOST:PORT|unix:PATH [--keep-alive-timeout MS] [--log]\n' +
      '       app.js --gen N SEED\n'
  );
  process.exit(2);
}

// The deterministic byte stream of /bytes and --gen.
function byteStream(seed) {
  const key = crypto.createHash('sha256').update(`cloister-app-bytes:${seed}`).digest().subarray(0, 16);
  const cipher = crypto.createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  return (n) => cipher.update(n === CHUNK ? ZEROS : ZEROS.subarray(0, n));
}

function parseCount(text) {
  if (typeof text !== 'string' || !/^[0-9]{1,16}$/.test(text)) return null;
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : null;
}

// ---- --gen ---------------------------------------------------------------------------
function gen(args) {
  if (args.length !== 2) usage('--gen takes N and SEED');
  const n = parseCount(args[0]);
  if (n === null) usage(`--gen: bad byte count '${args[0]}'`);
  const next = byteStream(args[1]);
  let left = n;
  process.stdout.on('error', (err) => process.exit(err.code === 'EPIPE' ? 0 : 1));
  const pump = () => {
    while (left > 0) {
      const chunk = next(Math.min(CHUNK, left));
      left -= chunk.length;
      if (!process.stdout.write(chunk)) {
        process.stdout.once('drain', pump);
        return;
      }
    }
  };
  pump();
}

// ---- the server ------------------------------------------------------------------------
function loadWs() {
  const nodeDir = path.join(__dirname, '..', '..', 'node');
  try {
    return createRequire(path.join(nodeDir, 'package.json'))('ws');
  } catch (first) {
    try {
      return require('ws'); // NODE_PATH or a node_modules above this file
    } catch (second) {
      process.stderr.write(
        `app: cannot load the 'ws' package (${first.message.split('\n')[0]}); ` +
          `run scripts/node-deps.sh to install ${path.join(nodeDir, 'node_modules')}\n`
      );
      process.exit(3);
    }
  }
}

function parseListen(text) {
  if (!text) usage('--listen is required');
  if (text.startsWith('unix:')) {
    const p = text.slice(5);
    if (!p) usage('--listen unix: needs a path');
    return { path: p, label: `unix:${p}` };
  }
  let rest = text.startsWith('tcp:') ? text.slice(4) : text;
  let host = '127.0.0.1';
  let portText = rest;
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(rest) || /^([^:]+):(\d+)$/.exec(rest);
  if (m) [host, portText] = [m[1], m[2]];
  const port = parseCount(portText);
  if (port === null || port > 65535) usage(`--listen: bad address '${text}'`);
  return { host, port };
}

function serve(opts) {
  const { WebSocketServer } = loadWs();
  const listen = parseListen(opts.listen);
  const stats = { requests: 0, connections: 0, websockets: 0 };
  const open = new Set();
  const log = opts.log ? (line) => process.stdout.write(`app: ${line}\n`) : () => {};

  const server = http.createServer({
    keepAlive: true,
    requestTimeout: 0, // 100 MB bodies through a sanitized proxy can be slow
    maxHeaderSize: 256 * 1024, // the proxy's own head limit is what tests probe
  });
  server.keepAliveTimeout = opts.keepAliveTimeout;
  server.headersTimeout = Math.max(60000, opts.keepAliveTimeout + 1000);

  server.on('connection', (sock) => {
    stats.connections++;
    sock.appConnection = stats.connections;
    open.add(sock);
    sock.on('close', () => open.delete(sock));
  });

  server.on('clientError', (err, sock) => {
    if (err.code !== 'ECONNRESET') process.stderr.write(`app: client error: ${err.code || ''} ${err.message}\n`);
    if (!sock.writable || err.code === 'ECONNRESET') {
      sock.destroy();
      return;
    }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
    sock.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  });

  const send = (res, status, body, type = 'text/plain; charset=utf-8') => {
    const buf = Buffer.from(body);
    res.writeHead(status, { 'Content-Type': type, 'Content-Length': buf.length });
    res.end(buf);
  };
  const sendJson = (res, status, value) => send(res, status, JSON.stringify(value) + '\n', 'application/json');

  const handlers = {
    '/hello': (req, res) => send(res, 200, 'hello from the app\n'),

    '/echo-headers': (req, res) => {
      const raw = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
      sendJson(res, 200, {
        method: req.method,
        url: req.url,
        httpVersion: req.httpVersion,
        headers: req.headers,
        rawHeaders: raw,
        remoteAddress: req.socket.remoteAddress || null,
        remotePort: req.socket.remotePort || null,
        connection: req.socket.appConnection,
      });
    },

    '/bytes': (req, res, q) => {
      const n = parseCount(q.get('n'));
      if (n === null) return send(res, 400, 'bytes: n must be a byte count\n');
      const next = byteStream(q.get('seed') || '0');
      const headers = { 'Content-Type': 'application/octet-stream' };
      if (q.get('chunked') !== '1') headers['Content-Length'] = n;
      res.writeHead(200, headers);
      let left = n;
      let gone = false;
      res.on('close', () => (gone = true));
      const pump = () => {
        while (left > 0 && !gone) {
          const chunk = next(Math.min(CHUNK, left));
          left -= chunk.length;
          if (!res.write(chunk)) {
            res.once('drain', pump);
            return;
          }
        }
        if (!gone) res.end();
      };
      pump();
    },

    '/upload': (req, res) => {
      if (req.method !== 'POST' && req.method !== 'PUT') {
        res.setHeader('Allow', 'POST, PUT');
        return send(res, 405, 'upload: use POST or PUT\n');
      }
      const hash = crypto.createHash('sha256');
      let bytes = 0;
      req.on('data', (d) => {
        bytes += d.length;
        hash.update(d);
      });
      req.on('end', () =>
        sendJson(res, 200, {
          bytes,
          sha256: hash.digest('hex'),
          method: req.method,
          chunked: /chunked/i.test(req.headers['transfer-encoding'] || ''),
        })
      );
      req.on('error', () => {});
    },

    '/slow': (req, res, q) => {
      const ms = parseCount(q.get('ms') || '1000');
      if (ms === null || ms > 600000) return send(res, 400, 'slow: ms must be 0..600000\n');
      const timer = setTimeout(() => send(res, 200, 'slow\n'), ms);
      res.on('close', () => clearTimeout(timer));
    },

    '/status': (req, res, q) => {
      const code = parseCount(q.get('code'));
      if (code === null || code < 200 || code > 599) return send(res, 400, 'status: code must be 200..599\n');
      if (code === 204 || code === 304) {
        res.writeHead(code);
        return res.end();
      }
      send(res, code, `status ${code}\n`);
    },

    '/sse': (req, res, q) => ticks(res, q, 'text/event-stream'),
    '/stream': (req, res, q) => ticks(res, q, 'text/plain; charset=utf-8'),

    '/count': (req, res) => sendJson(res, 200, { ...stats, open: open.size }),

    '/abort': (req, res) => req.socket.destroy(),
  };

  function ticks(res, q, type) {
    const count = parseCount(q.get('n') || '5');
    const ms = parseCount(q.get('ms') || '100');
    if (count === null || ms === null || count > 100000 || ms > 600000) return send(res, 400, 'ticks: bad n or ms\n');
    res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-cache' });
    res.flushHeaders();
    let sent = 0;
    if (count === 0) return res.end();
    const timer = setInterval(() => {
      res.write('tick\n');
      if (++sent === count) {
        clearInterval(timer);
        res.end();
      }
    }, ms);
    res.on('close', () => clearInterval(timer));
  }

  function onRequest(req, res) {
    stats.requests++;
    const url = new URL(req.url, 'http://app.invalid');
    log(`${req.method} ${req.url} HTTP/${req.httpVersion} connection=${req.socket.appConnection}`);
    const handler = handlers[url.pathname];
    if (!handler) {
      req.resume();
      return send(res, 404, 'not found\n');
    }
    if (url.pathname !== '/upload') req.resume(); // drain any body nobody reads
    handler(req, res, url.searchParams);
  }
  server.on('request', onRequest);
  server.on('checkContinue', (req, res) => {
    res.writeContinue();
    onRequest(req, res);
  });

  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 * 1024 });
  server.on('upgrade', (req, sock, head) => {
    stats.requests++;
    log(`${req.method} ${req.url} upgrade=${req.headers.upgrade} connection=${sock.appConnection}`);
    const pathname = new URL(req.url, 'http://app.invalid').pathname;
    if (pathname !== '/ws' || !/^websocket$/i.test(req.headers.upgrade || '')) {
      sock.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 10\r\n\r\nnot found\n');
      return;
    }
    wss.handleUpgrade(req, sock, head, (ws) => {
      stats.websockets++;
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
      ws.on('error', () => {});
    });
  });

  const target = listen.path !== undefined ? { path: listen.path } : { host: listen.host, port: listen.port };
  if (listen.path !== undefined) {
    let st = null;
    try {
      st = fs.lstatSync(listen.path);
    } catch (_) {}
    if (st && !st.isSocket()) {
      process.stderr.write(`app: ${listen.path} exists and is not a socket\n`);
      process.exit(3);
    }
    if (st) fs.unlinkSync(listen.path); // a stale socket of an earlier run
  }

  server.on('error', (err) => {
    process.stderr.write(`app: cannot listen on ${opts.listen}: ${err.message}\n`);
    process.exit(3);
  });
  server.listen({ ...target, backlog: 4096 }, () => {
    let label = listen.label;
    if (!label) {
      const a = server.address();
      label = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
    }
    process.stdout.write(`app: listening on ${label}\n`);
  });

  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    process.stdout.write(`app: stopping on ${signal}\n`);
    for (const ws of wss.clients) ws.terminate();
    server.close();
    for (const sock of open) sock.destroy();
    if (listen.path !== undefined) {
      try {
        fs.unlinkSync(listen.path);
      } catch (_) {}
    }
    process.exit(0);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

// ---- main ------------------------------------------------------------------------------
function main(argv) {
  if (argv[0] === '--gen') return gen(argv.slice(1));
  const opts = { listen: null, keepAliveTimeout: 65000, log: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--listen' && i + 1 < argv.length) opts.listen = argv[++i];
    else if (a.startsWith('--listen=')) opts.listen = a.slice(9);
    else if (a === '--keep-alive-timeout' && i + 1 < argv.length) {
      const ms = parseCount(argv[++i]);
      if (ms === null) usage('--keep-alive-timeout takes milliseconds');
      opts.keepAliveTimeout = ms;
    } else if (a === '--log') opts.log = true;
    else if (a === '--help' || a === '-h') {
      const lines = fs.readFileSync(__filename, 'utf8').split('\n');
      const end = lines.indexOf("'use strict';");
      process.stdout.write(lines.slice(1, end).map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n');
      process.exit(0);
    } else usage(`unknown argument '${a}'`);
  }
  serve(opts);
}

main(process.argv.slice(2));
