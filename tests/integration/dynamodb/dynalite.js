// dynalite (the DynamoDB protocol, in memory) on 127.0.0.1, over HTTP or,
// with --cert/--key, over HTTPS with the test's own certificate (the one
// dynalite ships expired in 2018).
//   node dynalite.js --port P [--cert PEM --key PEM] [--table NAME ...]
'use strict';
const fs = require('fs');
const path = require('path');
const dynalite = require(path.join(__dirname, '../../node/node_modules/dynalite'));

const args = process.argv.slice(2);
const opt = { tables: [] };
for (let i = 0; i < args.length; i += 2) {
  const k = args[i].replace(/^--/, ''), v = args[i + 1];
  if (k === 'table') opt.tables.push(v); else opt[k] = v;
}
const options = { createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 };
if (opt.cert) {
  options.ssl = true;
  options.cert = fs.readFileSync(opt.cert);
  options.key = fs.readFileSync(opt.key);
  options.ca = options.cert;
}
const server = dynalite(options);
server.listen(Number(opt.port), '127.0.0.1', () => {
  console.log(`dynalite: listening on ${opt.cert ? 'https' : 'http'}://127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
