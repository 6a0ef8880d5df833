// Misbehaving and numerous TLS clients for the proxy's integration tests.
//
//   node clients.js slowloris PORT SECONDS
//       Sends a request head one byte every 200 ms and never finishes it.
//       Exit 0 when the server closes the connection within SECONDS,
//       printing after how long; exit 1 otherwise.
//   node clients.js many PORT N PATH
//       Opens N keep-alive TLS connections at once, sends GET PATH on each,
//       then a second GET on each of the same connections.  Exit 0 when all
//       2N responses are 200 and no connection was closed in between.
//   node clients.js drip PORT PATH
//       Holds one idle keep-alive connection open; prints "closed" when the
//       server closes it (used to watch idle and drain behaviour).
'use strict';
const tls = require('tls');

const [mode, portText, ...rest] = process.argv.slice(2);
const port = Number(portText);
if (!mode || !port) {
  console.error('usage: clients.js slowloris|many|drip PORT ...');
  process.exit(2);
}

function connect() {
  return tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
}

// Reads HTTP/1.1 responses with Content-Length bodies off a socket.
function responseReader(sock, onResponse) {
  let buf = Buffer.alloc(0);
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const m = /content-length:\s*(\d+)/i.exec(head);
      const len = m ? Number(m[1]) : 0;
      if (buf.length < end + 4 + len) return;
      const status = Number(head.split(' ')[1]);
      buf = buf.subarray(end + 4 + len);
      onResponse(status, head);
    }
  });
}

if (mode === 'slowloris') {
  const limit = Number(rest[0] || 30) * 1000;
  const started = Date.now();
  const sock = connect();
  const head = 'GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Slow: ' + 'a'.repeat(1000);
  let i = 0;
  const timer = setInterval(() => {
    if (i < head.length && !sock.destroyed) sock.write(head[i++]);
  }, 200);
  sock.on('error', () => {});
  sock.on('close', () => {
    clearInterval(timer);
    const took = Date.now() - started;
    console.log(`closed by the server after ${took} ms, ${i} bytes sent`);
    process.exit(took <= limit ? 0 : 1);
  });
  setTimeout(() => {
    console.log(`still open after ${limit} ms`);
    process.exit(1);
  }, limit + 1000);
} else if (mode === 'many') {
  const n = Number(rest[0] || 1000);
  const path = rest[1] || '/hello';
  const request = `GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`;
  let ok = 0, bad = 0, closedEarly = 0, connected = 0;
  const socks = [];
  const done = () => {
    console.log(`connections=${n} ok=${ok} bad=${bad} closed_early=${closedEarly}`);
    process.exit(ok === 2 * n && bad === 0 && closedEarly === 0 ? 0 : 1);
  };
  const guard = setTimeout(() => {
    console.log(`timeout: connected=${connected}`);
    done();
  }, 150000); // a hang guard only: 1000 TLS handshakes under ASan on a loaded 2-core machine took over a minute
  let firstRound = 0;
  for (let k = 0; k < n; k++) {
    const sock = connect();
    socks.push(sock);
    let answers = 0;
    sock.on('secureConnect', () => {
      connected++;
      sock.write(request);
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      if (answers < 2) closedEarly++;
      if (ok + bad + closedEarly >= 2 * n) done();
    });
    responseReader(sock, (status) => {
      answers++;
      if (status === 200) ok++;
      else bad++;
      if (answers === 1 && ++firstRound === n) {
        // every connection is open and answered once: ask again on each
        for (const s of socks) s.write(request);
      }
      if (ok + bad === 2 * n) {
        clearTimeout(guard);
        for (const s of socks) s.destroy();
        done();
      }
    });
  }
} else if (mode === 'drip') {
  const path = rest[0] || '/hello';
  const sock = connect();
  sock.on('secureConnect', () => sock.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`));
  responseReader(sock, (status) => console.log(`status ${status}`));
  sock.on('error', () => {});
  sock.on('close', () => {
    console.log('closed');
    process.exit(0);
  });
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
