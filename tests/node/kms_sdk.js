#!/usr/bin/env node
// The real AWS SDK for JavaScript v3 (@aws-sdk/client-kms) against
// `cloister kms-local`: an independent client, so protocol shapes and SigV4
// are proven, not only self-consistent.
//
//   node kms_sdk.js basic ENDPOINT AKID SECRET [CA.pem]
//       CreateKey, DescribeKey, aliases, Encrypt/Decrypt with context,
//       GenerateDataKey(+WithoutPlaintext), GenerateRandom, ReEncrypt, key
//       policies (Get/Put, a Deny honoured), Disable/Enable, ScheduleKeyDeletion,
//       error types; prints "KEY=<arn>" and "BLOB=<base64>" for the shell.
//   node kms_sdk.js expect-error ENDPOINT AKID SECRET TYPE [CA.pem]
//       ListKeys must fail with __type TYPE (wrong secret, unknown key).
//   node kms_sdk.js recipient ENDPOINT AKID SECRET OP KEY DOC OUT [BLOB]
//       OP = decrypt | datakey | random: a request with a Recipient
//       (DOC: raw attestation document file); writes CiphertextForRecipient
//       to OUT, prints "ERROR=<type>" instead when refused, and fails if a
//       Plaintext came back.
//   node kms_sdk.js skewed ENDPOINT AKID SECRET    a clock 10 minutes slow is refused
//   node kms_sdk.js encrypt ENDPOINT AKID SECRET KEY TEXT       prints BLOB=
//   node kms_sdk.js decrypt-blob ENDPOINT AKID SECRET BLOB      prints PLAINTEXT=
//   node kms_sdk.js put-policy ENDPOINT AKID SECRET KEY POLICY.json
// ENDPOINT is http(s)://HOST:PORT or unix:PATH (the SDK over a unix socket).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const net = require('node:net');
const kms = require('@aws-sdk/client-kms');

function client(endpoint, akid, secret, ca) {
    const cfg = {
        region: 'us-east-1',
        endpoint,
        credentials: { accessKeyId: akid, secretAccessKey: secret },
        maxAttempts: 1,
    };
    const { NodeHttpHandler } = require('@smithy/node-http-handler');
    if (endpoint.startsWith('unix:')) {
        // the same SDK over a unix socket: an agent whose connections go there
        const path = endpoint.slice(5);
        const agent = new http.Agent({ keepAlive: true });
        agent.createConnection = (opts, cb) => net.connect(path, cb);
        cfg.endpoint = 'http://localhost';
        cfg.requestHandler = new NodeHttpHandler({ httpAgent: agent });
    } else if (ca) {
        cfg.requestHandler = new NodeHttpHandler({ httpsAgent: new https.Agent({ ca: fs.readFileSync(ca) }) });
    }
    return new kms.KMSClient(cfg);
}

let failures = 0;
function check(cond, what) {
    if (cond) {
        console.log(`ok   ${what}`);
    } else {
        console.log(`FAIL ${what}`);
        failures++;
    }
}

async function expectError(promise, type, what) {
    try {
        await promise;
        check(false, `${what}: expected ${type}, it succeeded`);
    } catch (e) {
        check(e.name === type, `${what}: ${e.name === type ? type : `expected ${type}, got ${e.name}: ${e.message}`}`);
        return e;
    }
    return null;
}

const eq = (a, b) => Buffer.from(a).equals(Buffer.from(b));

async function basic(c) {
    const created = await c.send(new kms.CreateKeyCommand({ Description: 'sdk test key' }));
    const md = created.KeyMetadata;
    check(/^arn:aws:kms:us-east-1:\d{12}:key\/[0-9a-f-]{36}$/.test(md.Arn), `CreateKey Arn ${md.Arn}`);
    check(md.KeyId === md.Arn.split('/')[1] && md.Enabled === true && md.KeyState === 'Enabled',
          'CreateKey KeyId, Enabled, KeyState');
    check(md.CreationDate instanceof Date && Math.abs(md.CreationDate - Date.now()) < 60000,
          'CreationDate parses as a Date near now');
    check(md.KeySpec === 'SYMMETRIC_DEFAULT' && md.KeyUsage === 'ENCRYPT_DECRYPT' &&
          md.EncryptionAlgorithms[0] === 'SYMMETRIC_DEFAULT', 'KeySpec, KeyUsage, EncryptionAlgorithms');

    // unique across the parallel clients of kms_local.sh, which may start in the same millisecond
    const alias = `alias/sdk-${Date.now()}-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
    await c.send(new kms.CreateAliasCommand({ AliasName: alias, TargetKeyId: md.KeyId }));
    const byAlias = await c.send(new kms.DescribeKeyCommand({ KeyId: alias }));
    check(byAlias.KeyMetadata.Arn === md.Arn, 'DescribeKey by alias');
    await expectError(c.send(new kms.CreateAliasCommand({ AliasName: alias, TargetKeyId: md.KeyId })),
                      'AlreadyExistsException', 'CreateAlias twice');
    const aliases = await c.send(new kms.ListAliasesCommand({ KeyId: md.KeyId }));
    check(aliases.Aliases.length === 1 && aliases.Aliases[0].AliasName === alias &&
          aliases.Aliases[0].TargetKeyId === md.KeyId, 'ListAliases for the key');
    const keys = await c.send(new kms.ListKeysCommand({}));
    check(keys.Keys.some(k => k.KeyArn === md.Arn), 'ListKeys has the key');

    const plaintext = Buffer.from('attack at dawn');
    const context = { purpose: 'sdk-test', tenant: '42' };
    const enc = await c.send(new kms.EncryptCommand({ KeyId: alias, Plaintext: plaintext, EncryptionContext: context }));
    check(enc.KeyId === md.Arn && enc.CiphertextBlob.length > plaintext.length && enc.EncryptionAlgorithm === 'SYMMETRIC_DEFAULT',
          'Encrypt');
    const dec = await c.send(new kms.DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, EncryptionContext: context }));
    check(eq(dec.Plaintext, plaintext) && dec.KeyId === md.Arn, 'Decrypt round trip (key found from the blob)');
    await expectError(c.send(new kms.DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, EncryptionContext: { purpose: 'other' } })),
                      'InvalidCiphertextException', 'Decrypt with another encryption context');
    const tampered = Buffer.from(enc.CiphertextBlob);
    tampered[tampered.length - 1] ^= 1;
    await expectError(c.send(new kms.DecryptCommand({ CiphertextBlob: tampered, EncryptionContext: context })),
                      'InvalidCiphertextException', 'Decrypt of a tampered blob');

    const other = (await c.send(new kms.CreateKeyCommand({}))).KeyMetadata;
    await expectError(c.send(new kms.DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, EncryptionContext: context, KeyId: other.KeyId })),
                      'IncorrectKeyException', 'Decrypt naming another key');
    const re = await c.send(new kms.ReEncryptCommand({ CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: context,
                                                       DestinationKeyId: other.Arn }));
    check(re.SourceKeyId === md.Arn && re.KeyId === other.Arn, 'ReEncrypt source and destination');
    const dec2 = await c.send(new kms.DecryptCommand({ CiphertextBlob: re.CiphertextBlob }));
    check(eq(dec2.Plaintext, plaintext) && dec2.KeyId === other.Arn, 'Decrypt after ReEncrypt');

    const dk = await c.send(new kms.GenerateDataKeyCommand({ KeyId: md.KeyId, KeySpec: 'AES_256' }));
    check(dk.Plaintext.length === 32 && dk.KeyId === md.Arn, 'GenerateDataKey AES_256');
    const dkOpen = await c.send(new kms.DecryptCommand({ CiphertextBlob: dk.CiphertextBlob }));
    check(eq(dkOpen.Plaintext, dk.Plaintext), 'the data key decrypts to its plaintext');
    const dk16 = await c.send(new kms.GenerateDataKeyCommand({ KeyId: md.Arn, NumberOfBytes: 16 }));
    check(dk16.Plaintext.length === 16, 'GenerateDataKey NumberOfBytes 16');
    const dkw = await c.send(new kms.GenerateDataKeyWithoutPlaintextCommand({ KeyId: md.KeyId, KeySpec: 'AES_128' }));
    check(dkw.Plaintext === undefined && dkw.CiphertextBlob.length > 16, 'GenerateDataKeyWithoutPlaintext');
    await expectError(c.send(new kms.GenerateDataKeyCommand({ KeyId: md.KeyId })), 'ValidationException',
                      'GenerateDataKey without a size');

    const r1 = await c.send(new kms.GenerateRandomCommand({ NumberOfBytes: 64 }));
    const r2 = await c.send(new kms.GenerateRandomCommand({ NumberOfBytes: 64 }));
    check(r1.Plaintext.length === 64 && !eq(r1.Plaintext, r2.Plaintext), 'GenerateRandom 64 bytes, twice different');
    await expectError(c.send(new kms.GenerateRandomCommand({ NumberOfBytes: 1025 })), 'ValidationException',
                      'GenerateRandom 1025 bytes');

    const pol = await c.send(new kms.GetKeyPolicyCommand({ KeyId: md.KeyId, PolicyName: 'default' }));
    const parsed = JSON.parse(pol.Policy);
    check(parsed.Statement[0].Principal.AWS === `arn:aws:iam::${md.AWSAccountId}:root` &&
          parsed.Statement[0].Action === 'kms:*', 'the default key policy: account root, kms:*');
    const deny = {
        Version: '2012-10-17',
        Statement: [
            { Sid: 'admin', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${md.AWSAccountId}:root` }, Action: 'kms:*', Resource: '*' },
            { Sid: 'no decrypt', Effect: 'Deny', Principal: '*', Action: 'kms:Decrypt', Resource: '*' },
        ],
    };
    await c.send(new kms.PutKeyPolicyCommand({ KeyId: md.KeyId, PolicyName: 'default', Policy: JSON.stringify(deny) }));
    const back = await c.send(new kms.GetKeyPolicyCommand({ KeyId: md.KeyId }));
    check(JSON.parse(back.Policy).Statement.length === 2, 'GetKeyPolicy returns the policy put');
    await expectError(c.send(new kms.DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, EncryptionContext: context })),
                      'AccessDeniedException', 'Decrypt under a policy that denies it');
    const enc2 = await c.send(new kms.EncryptCommand({ KeyId: md.KeyId, Plaintext: plaintext }));
    check(enc2.CiphertextBlob.length > 0, 'Encrypt still allowed by that policy');
    await expectError(c.send(new kms.PutKeyPolicyCommand({ KeyId: md.KeyId, Policy: '{"Statement": 5}' })),
                      'MalformedPolicyDocumentException', 'PutKeyPolicy with a malformed policy');
    await expectError(c.send(new kms.PutKeyPolicyCommand({ KeyId: md.KeyId, Policy: JSON.stringify({
        Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: '*', Action: 'kms:Encrypt', Resource: '*' }] }) })),
                      'MalformedPolicyDocumentException', 'PutKeyPolicy that would lock the caller out');

    await c.send(new kms.DisableKeyCommand({ KeyId: other.KeyId }));
    await expectError(c.send(new kms.EncryptCommand({ KeyId: other.KeyId, Plaintext: plaintext })), 'DisabledException',
                      'Encrypt with a disabled key');
    check((await c.send(new kms.DescribeKeyCommand({ KeyId: other.KeyId }))).KeyMetadata.KeyState === 'Disabled',
          'DescribeKey shows Disabled');
    await c.send(new kms.EnableKeyCommand({ KeyId: other.KeyId }));
    const sched = await c.send(new kms.ScheduleKeyDeletionCommand({ KeyId: other.KeyId, PendingWindowInDays: 7 }));
    check(sched.KeyState === 'PendingDeletion' && sched.PendingWindowInDays === 7 &&
          Math.abs(sched.DeletionDate - Date.now() - 7 * 86400e3) < 120e3, 'ScheduleKeyDeletion, 7 days');
    await expectError(c.send(new kms.DecryptCommand({ CiphertextBlob: re.CiphertextBlob })), 'KMSInvalidStateException',
                      'Decrypt with a key pending deletion');
    await expectError(c.send(new kms.DescribeKeyCommand({ KeyId: '00000000-0000-4000-8000-000000000000' })),
                      'NotFoundException', 'DescribeKey of no such key');
    await expectError(c.send(new kms.DescribeKeyCommand({ KeyId: 'alias/none' })), 'NotFoundException',
                      'DescribeKey of no such alias');
    const e = await expectError(c.send(new kms.DescribeKeyCommand({})), 'ValidationException', 'DescribeKey without KeyId');
    check(e && e.$metadata.httpStatusCode === 400, 'errors are HTTP 400');

    // for the shell: a key and blob that must survive a restart
    const kept = (await c.send(new kms.CreateKeyCommand({ Description: 'kept' }))).KeyMetadata;
    const keep = await c.send(new kms.EncryptCommand({ KeyId: kept.KeyId, Plaintext: Buffer.from('survives restarts') }));
    console.log(`KEY=${kept.Arn}`);
    console.log(`BLOB=${Buffer.from(keep.CiphertextBlob).toString('base64')}`);
}

async function main() {
    const [mode, endpoint, akid, secret, ...rest] = process.argv.slice(2);
    if (mode === 'basic') {
        await basic(client(endpoint, akid, secret, rest[0]));
    } else if (mode === 'expect-error') {
        const c = client(endpoint, akid, secret, rest[1]);
        await expectError(c.send(new kms.ListKeysCommand({})), rest[0], `ListKeys refused`);
    } else if (mode === 'skewed') {
        // a client whose clock is 10 minutes behind, no retry to correct it
        const c = client(endpoint, akid, secret);
        c.config.systemClockOffset = -10 * 60 * 1000;
        const e = await expectError(c.send(new kms.ListKeysCommand({})), 'InvalidSignatureException', 'a skewed clock');
        check(e && /^Signature expired: \d{8}T\d{6}Z is now earlier than/.test(e.message), `skew message: ${e && e.message}`);
    } else if (mode === 'encrypt') {
        const c = client(endpoint, akid, secret);
        const out = await c.send(new kms.EncryptCommand({ KeyId: rest[0], Plaintext: Buffer.from(rest[1]) }));
        console.log(`BLOB=${Buffer.from(out.CiphertextBlob).toString('base64')}`);
    } else if (mode === 'decrypt-blob') {
        const c = client(endpoint, akid, secret);
        const out = await c.send(new kms.DecryptCommand({ CiphertextBlob: Buffer.from(rest[0], 'base64') }));
        console.log(`PLAINTEXT=${Buffer.from(out.Plaintext).toString()}`);
    } else if (mode === 'put-policy') {
        const c = client(endpoint, akid, secret);
        await c.send(new kms.PutKeyPolicyCommand({ KeyId: rest[0], Policy: fs.readFileSync(rest[1], 'utf8') }));
        console.log('ok   PutKeyPolicy');
    } else if (mode === 'recipient') {
        const [op, key, docPath, outPath, blob] = rest;
        const c = client(endpoint, akid, secret);
        const Recipient = { KeyEncryptionAlgorithm: 'RSAES_OAEP_SHA_256', AttestationDocument: fs.readFileSync(docPath) };
        let out;
        try {
            if (op === 'decrypt') {
                out = await c.send(new kms.DecryptCommand({ KeyId: key || undefined, CiphertextBlob: Buffer.from(blob, 'base64'), Recipient }));
            } else if (op === 'datakey') {
                out = await c.send(new kms.GenerateDataKeyCommand({ KeyId: key, KeySpec: 'AES_256', Recipient }));
                fs.writeFileSync(`${outPath}.blob`, Buffer.from(out.CiphertextBlob).toString('base64'));
            } else {
                out = await c.send(new kms.GenerateRandomCommand({ NumberOfBytes: 32, Recipient }));
            }
        } catch (e) {
            console.log(`ERROR=${e.name}`);
            console.log(`MESSAGE=${e.message}`);
            return;
        }
        check(out.Plaintext === undefined || out.Plaintext.length === 0, `${op} with a Recipient returns no Plaintext`);
        check(out.CiphertextForRecipient && out.CiphertextForRecipient.length > 256, `${op} returns CiphertextForRecipient`);
        if (out.CiphertextForRecipient)
            fs.writeFileSync(outPath, out.CiphertextForRecipient);
    } else {
        throw new Error(`unknown mode ${mode}`);
    }
    if (failures) {
        console.log(`${failures} check(s) failed`);
        process.exitCode = 1;
    }
}

main().catch(e => {
    console.log(`FAIL unexpected error ${e.name}: ${e.message}`);
    process.exitCode = 1;
});
