#!/usr/bin/env node
// Test peer for the wallet example (tests/integration/wallet_*.sh): an
// implementation independent of the C code of everything the wallet's
// answers must satisfy.
//
//   create-table ENDPOINT TABLE          the workshop's table (key PublicKey, S) in dynalite
//   scan ENDPOINT TABLE                  every item, raw, as JSON lines
//   check-create CREATE.json RECOVERY_PRIVATE.pem
//        opens the recovery share (node:crypto P-384 ECDH, HKDF-SHA256 info "handshake data",
//        AES-256-GCM IV||ct||tag), combines it with the user's share by a Shamir combiner written
//        here from the format's description, derives the public key with ethers and compares it
//        with public_key; prints the key's Ethereum address
//   check-eth PUBKEY_HEX HASH_HEX SIG.json    ethers recovers the key's address from (r, s, v), low-S
//   check-plain PUBKEY_HEX MESSAGE SIG.json   ethers recovers the key from the DER signature over
//                                             SHA-256(MESSAGE); node:crypto verifies it too
//   sign-bench N                         ethers signing one 32-byte hash N times: signatures/s
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const modules = path.join(__dirname, 'node_modules');
const { ethers } = require(path.join(modules, 'ethers'));

function die(msg) {
    console.error(`wallet.js: ${msg}`);
    process.exit(1);
}

// ---- Shamir over GF(2^8), from the description: share = y[0..n-1] || x,
// field GF(2)[X]/(X^8+X^4+X^3+X+1), secret byte = the polynomial at 0.
function gfMul(a, b) {
    let p = 0;
    for (let i = 0; i < 8; i++) {
        if (b & 1) p ^= a;
        const carry = a & 0x80;
        a = (a << 1) & 0xff;
        if (carry) a ^= 0x1b;
        b >>= 1;
    }
    return p;
}
function gfInv(a) {
    for (let x = 1; x < 256; x++) if (gfMul(a, x) === 1) return x;
    throw new Error('no inverse of 0');
}
function combine(shares) {
    const n = shares[0].length - 1;
    const xs = shares.map((s) => s[n]);
    if (new Set(xs).size !== xs.length || xs.includes(0)) throw new Error('bad x coordinates');
    const out = Buffer.alloc(n);
    for (let b = 0; b < n; b++) {
        let acc = 0;
        for (let i = 0; i < shares.length; i++) {
            let basis = 1;
            for (let j = 0; j < shares.length; j++) {
                if (i === j) continue;
                basis = gfMul(basis, gfMul(xs[j], gfInv(xs[i] ^ xs[j]))); // (0 - xj)/(xi - xj)
            }
            acc ^= gfMul(shares[i][b], basis);
        }
        out[b] = acc;
    }
    return out;
}

function openRecovery(create, privatePem) {
    const sealed = Buffer.from(create.recovery.shard, 'base64');
    const ephemeral = crypto.createPublicKey(Buffer.from(create.recovery.ephemeral_public_key, 'base64').toString());
    const mine = crypto.createPrivateKey(privatePem);
    const shared = crypto.diffieHellman({ privateKey: mine, publicKey: ephemeral });
    const key = Buffer.from(crypto.hkdfSync('sha256', shared, Buffer.alloc(0), Buffer.from('handshake data'), 32));
    const iv = sealed.subarray(0, 12), tag = sealed.subarray(sealed.length - 16), ct = sealed.subarray(12, sealed.length - 16);
    const d = crypto.createDecipheriv('aes-256-gcm', key, iv);
    d.setAuthTag(tag);
    return Buffer.concat([d.update(ct), d.final()]);
}

function derToRS(der) {
    // SEQUENCE { INTEGER r, INTEGER s }, short lengths (secp256k1)
    let i = 0;
    if (der[i++] !== 0x30 || der[i++] !== der.length - 2) throw new Error('not a DER signature');
    const ints = [];
    for (let k = 0; k < 2; k++) {
        if (der[i++] !== 0x02) throw new Error('not a DER INTEGER');
        const len = der[i++];
        let v = der.subarray(i, i + len);
        i += len;
        while (v.length > 32 && v[0] === 0) v = v.subarray(1);
        ints.push('0x' + Buffer.concat([Buffer.alloc(32 - v.length), v]).toString('hex'));
    }
    if (i !== der.length) throw new Error('trailing bytes');
    return ints;
}

const N = BigInt('0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141');

async function main() {
    const [cmd, ...a] = process.argv.slice(2);
    if (cmd === 'create-table' || cmd === 'scan') {
        const ddb = require(path.join(modules, '@aws-sdk/client-dynamodb'));
        const client = new ddb.DynamoDBClient({ endpoint: a[0], region: 'us-east-1',
            credentials: { accessKeyId: 'AKIAWALLETTEST000000', secretAccessKey: 'wallet-test-secret' } });
        if (cmd === 'create-table') {
            await client.send(new ddb.CreateTableCommand({ TableName: a[1], BillingMode: 'PAY_PER_REQUEST',
                AttributeDefinitions: [{ AttributeName: 'PublicKey', AttributeType: 'S' }],
                KeySchema: [{ AttributeName: 'PublicKey', KeyType: 'HASH' }] }));
            for (let i = 0; i < 100; i++) {
                const t = await client.send(new ddb.DescribeTableCommand({ TableName: a[1] }));
                if (t.Table.TableStatus === 'ACTIVE') return;
                await new Promise((r) => setTimeout(r, 50));
            }
            die('the table did not become ACTIVE');
        }
        const r = await client.send(new ddb.ScanCommand({ TableName: a[1] }));
        for (const item of r.Items) console.log(JSON.stringify(item));
        return;
    }
    if (cmd === 'put-key-policy') { // ENDPOINT KEY_ID POLICY_FILE ACCESS_KEY SECRET (CA: NODE_EXTRA_CA_CERTS)
        const kms = require(path.join(modules, '@aws-sdk/client-kms'));
        const client = new kms.KMSClient({ endpoint: a[0], region: 'us-east-1',
            credentials: { accessKeyId: a[3], secretAccessKey: a[4] } });
        await client.send(new kms.PutKeyPolicyCommand({ KeyId: a[1], PolicyName: 'default',
            Policy: fs.readFileSync(a[2], 'utf8') }));
        return;
    }
    if (cmd === 'check-eth-many') { // PUBKEY_HEX FILE: lines "HASH SIGNATURE_JSON"
        const expected = ethers.computeAddress('0x' + a[0]);
        let n = 0;
        for (const line of fs.readFileSync(a[1], 'utf8').split('\n')) {
            if (!line.trim()) continue;
            const sp = line.indexOf(' ');
            const hash = line.slice(0, sp), sig = JSON.parse(line.slice(sp + 1));
            if (BigInt(sig.s) > N / 2n) die(`high S for ${hash}`);
            const got = ethers.recoverAddress(hash, { r: sig.r, s: sig.s, v: sig.v });
            if (got !== expected) die(`signature ${n} over ${hash}: recovered ${got}, expected ${expected}`);
            n++;
        }
        console.log(`verified=${n}`);
        return;
    }
    if (cmd === 'check-create') {
        const create = JSON.parse(fs.readFileSync(a[0], 'utf8'));
        const recovery = openRecovery(create, fs.readFileSync(a[1], 'utf8'));
        const user = Buffer.from(create.key_shard, 'base64');
        if (user.length !== 33 || recovery.length !== 33) die(`shares of ${user.length} and ${recovery.length} bytes`);
        const key = combine([user, recovery]);
        const pub = ethers.SigningKey.computePublicKey('0x' + key.toString('hex'), true).slice(2);
        if (pub !== create.public_key) die(`user+recovery combine into the key of ${pub}, not ${create.public_key}`);
        console.log(`address=${ethers.computeAddress('0x' + create.public_key)} key=${'0x' + key.toString('hex')}`);
        return;
    }
    if (cmd === 'check-eth') {
        const [pub, hash, file] = a;
        const sig = JSON.parse(fs.readFileSync(file, 'utf8'));
        const s = BigInt(sig.s);
        if (s > N / 2n) die('high S');
        if (sig.v !== 27 && sig.v !== 28) die(`v is ${sig.v}`);
        if (sig.signature !== sig.r + sig.s.slice(2) + sig.v.toString(16)) die('signature is not r || s || v');
        const recovered = ethers.recoverAddress(hash, { r: sig.r, s: sig.s, v: sig.v });
        const expected = ethers.computeAddress('0x' + pub);
        if (recovered !== expected) die(`recovered ${recovered}, expected ${expected}`);
        console.log(`address=${recovered}`);
        return;
    }
    if (cmd === 'check-plain') {
        const [pub, message, file] = a;
        const sig = JSON.parse(fs.readFileSync(file, 'utf8'));
        const der = Buffer.from(sig.signature, 'base64');
        const [r, s] = derToRS(der);
        const digest = ethers.sha256(ethers.toUtf8Bytes(message));
        const found = [27, 28].some((v) =>
            ethers.SigningKey.recoverPublicKey(digest, { r, s, v }) === ethers.SigningKey.computePublicKey('0x' + pub, false));
        if (!found) die('ethers does not recover the key from the signature');
        const spki = Buffer.concat([Buffer.from('3036301006072a8648ce3d020106052b8104000a032200', 'hex'), Buffer.from(pub, 'hex')]);
        const key = crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' });
        if (!crypto.verify('sha256', Buffer.from(message, 'utf8'), key, der)) die('node:crypto does not verify it');
        console.log('plain signature verified');
        return;
    }
    if (cmd === 'sign-bench') {
        const n = Number(a[0] || 1000);
        const key = new ethers.SigningKey(ethers.hexlify(ethers.randomBytes(32)));
        const hash = ethers.keccak256(ethers.toUtf8Bytes('bench'));
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < n; i++) key.sign(hash);
        const s = Number(process.hrtime.bigint() - t0) / 1e9;
        console.log(`ethers_signs_per_s=${(n / s).toFixed(0)} us_per_sign=${(1e6 * s / n).toFixed(1)}`);
        return;
    }
    die('usage: wallet.js create-table|scan|check-create|check-eth|check-plain|sign-bench ...');
}

main().catch((e) => die(e.stack || String(e)));
