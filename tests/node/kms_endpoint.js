#!/usr/bin/env node
// The AWS SDK for JavaScript v3, unchanged, against `cloister enclave
// -kms-for-app` (the app's KMS endpoint inside the enclave) and, for the
// refusal, straight against kms-local.
//
//   node kms_endpoint.js through ENDPOINT KEY BLOB PLAINTEXT_B64
//       any credentials; Decrypt(BLOB) must give PLAINTEXT, GenerateDataKey(KEY)
//       a 32-byte Plaintext that Decrypt of its CiphertextBlob gives again
//   node kms_endpoint.js denied ENDPOINT AKID SECRET CA KEY BLOB
//       the enclave's own credentials straight to KMS: Decrypt and
//       GenerateDataKey refused with AccessDeniedException
'use strict';

const fs = require('node:fs');
const https = require('node:https');
const kms = require('@aws-sdk/client-kms');

let failures = 0;
function check(cond, what) {
    console.log(`${cond ? 'ok  ' : 'FAIL'} node: ${what}`);
    if (!cond)
        failures++;
}

async function errorType(p) {
    try {
        await p;
        return 'none';
    } catch (e) {
        return e.name;
    }
}

async function through(endpoint, key, blob, plaintext) {
    const c = new kms.KMSClient({
        region: 'eu-west-1',
        endpoint,
        credentials: { accessKeyId: 'AKIAANYTHINGATALL000', secretAccessKey: 'whatever-the-app-has' },
        maxAttempts: 1,
    });
    const d = await c.send(new kms.DecryptCommand({ CiphertextBlob: Buffer.from(blob, 'base64') }));
    check(Buffer.from(d.Plaintext).equals(Buffer.from(plaintext, 'base64')), 'Decrypt through the endpoint gives the plaintext');
    check(d.CiphertextForRecipient === undefined, 'no CiphertextForRecipient reaches the app');
    const g = await c.send(new kms.GenerateDataKeyCommand({ KeyId: key, KeySpec: 'AES_256' }));
    check(g.Plaintext && g.Plaintext.length === 32, 'GenerateDataKey gives a 32-byte Plaintext');
    const again = await c.send(new kms.DecryptCommand({ CiphertextBlob: g.CiphertextBlob }));
    check(Buffer.from(again.Plaintext).equals(Buffer.from(g.Plaintext)), "Decrypt of the data key's blob gives the same key");
}

async function denied(endpoint, akid, secret, ca, key, blob) {
    const c = new kms.KMSClient({
        region: 'eu-west-1',
        endpoint,
        credentials: { accessKeyId: akid, secretAccessKey: secret },
        maxAttempts: 1,
        requestHandler: new (require('@smithy/node-http-handler').NodeHttpHandler)({
            httpsAgent: new https.Agent({ ca: fs.readFileSync(ca) }),
        }),
    });
    check(await errorType(c.send(new kms.DecryptCommand({ CiphertextBlob: Buffer.from(blob, 'base64') }))) ===
        'AccessDeniedException', 'Decrypt straight to KMS with the enclave role: AccessDeniedException');
    check(await errorType(c.send(new kms.GenerateDataKeyCommand({ KeyId: key, KeySpec: 'AES_256' }))) ===
        'AccessDeniedException', 'GenerateDataKey straight to KMS with the enclave role: AccessDeniedException');
}

(async () => {
    const [mode, ...a] = process.argv.slice(2);
    if (mode === 'through')
        await through(...a);
    else if (mode === 'denied')
        await denied(...a);
    else
        throw new Error(`unknown mode ${mode}`);
    process.exit(failures ? 1 : 0);
})().catch((e) => {
    console.log(`FAIL node: ${e.name}: ${e.message}`);
    process.exit(1);
});
