/* cloister-wallet: the multi-party (Shamir) wallet of AWS's Nitro Enclaves
 * workshop, in C on libcloister, behind `cloister enclave`.
 *
 *   POST /app/sss/key        {recovery_public_key_b64}
 *        a secp256k1 key, split 2-of-3: the enclave's share goes to KMS
 *        (Encrypt) and its ciphertext to DynamoDB; the user's share comes
 *        back in the clear (TLS ends inside the enclave), the recovery
 *        share sealed to the recovery key (P-384 ECDH, HKDF, AES-GCM)
 *   POST /app/sss/signature  {key_shard_b64, pub_key, tx_hash[, mode]}
 *        the enclave's share from DynamoDB, opened by KMS Decrypt with a
 *        Recipient (only this enclave's attestation opens it), combined
 *        with the user's, checked against pub_key, used once, wiped
 *   GET  /app/pk             the app's Recipient key (DER, base64), whose
 *                            SHA-256 is the attested app key hash
 *   GET  /app/stats          where the time of the signatures went
 *
 * At start, as the workshop: the app key hash to /enclave/hash, PCR16
 * extended with the app's binary and locked, then /enclave/ready. */
#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/clock.h"
#include "cloister/core/encoding.h"
#include "cloister/core/log.h"
#include "cloister/core/options.h"
#include "cloister/enclave/kms.h"
#include "cloister/enclave/nsm.h"
#include "cloister/enclave/server.h"
#include "cloister/enclave/shamir.h"
#include "wallet_crypto.h"
#include "wallet_store.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SHARE_LEN (WALLET_KEY_LEN + 1)
#define PUB_HEX_LEN (2 * WALLET_PUB_LEN)
#define MAX_RECOVERY_PEM 4096
#define MAX_TX_HASH 4096
#define MAX_CIPHERTEXT_B64 8192
#define PCR16 16
#define PCR_BLOCK 1024 /* the workshop used 2048; nsm-sim takes at most 1024 bytes per ExtendPCR */
#define SHARD_PURPOSE "wallet-shard"

typedef struct opts {
    char *listen, *nsm, *key_id, *table, *pcr_file;
    char *kms_region, *kms_endpoint, *kms_proxy, *kms_ca_file, *kms_imds;
    char *ddb_endpoint, *ddb_proxy, *ddb_ca_file;
    unsigned intport, threads;
    bool no_ready;
} opts;

static const cl_opt option_table[] = {
    {.name = "listen", CL_OPT_STR(opts, listen), .def = "tcp:127.0.0.1:8081", .arg = "ADDR",
     .help = "serve HTTP here (cloister enclave's -appwebsrv)"},
    {.name = "intport", CL_OPT_UINT_AT(opts, intport, 1, 65535), .def = "8080", .arg = "PORT",
     .help = "cloister enclave's internal port on 127.0.0.1 (/enclave/hash, /enclave/ready)"},
    {.name = "no-ready", CL_OPT_FLAG(opts, no_ready),
     .help = "do not call /enclave/hash and /enclave/ready (the app alone, for tests)"},
    {.name = "nsm", CL_OPT_STR(opts, nsm), .arg = "ADDR",
     .help = "the NSM: /dev/nsm or unix:PATH of nsm-sim ($" CL_NSM_ENV ", /dev/nsm)"},
    {.name = "pcr16-file", CL_OPT_STR(opts, pcr_file), .def = "/proc/self/exe", .arg = "PATH",
     .help = "the file PCR16 is extended with at start (this binary), in 1024-byte blocks, then locked"},
    {.name = "threads", CL_OPT_UINT_AT(opts, threads, 1, 64), .def = "4", .arg = "N",
     .help = "requests served at once (KMS calls are serialised)"},
    {.name = "key-id", CL_OPT_STR(opts, key_id), .def = "alias/wallet", .arg = "ID",
     .help = "the KMS key of the enclave's shares (the workshop's KMSKeyID)"},
    {.name = "table", CL_OPT_STR(opts, table), .def = "cloister-wallet-shards", .arg = "NAME",
     .help = "the DynamoDB table (the workshop's ShardsTableName; key PublicKey, attribute Shard)"},
    {.name = "kms-region", CL_OPT_STR(opts, kms_region), .arg = "R", .help = "region ($AWS_REGION, else IMDS's)"},
    {.name = "kms-endpoint", CL_OPT_STR(opts, kms_endpoint), .arg = "URL", .help = "https://HOST[:PORT] of KMS"},
    {.name = "kms-proxy", CL_OPT_STR(opts, kms_proxy), .arg = "ADDR",
     .help = "the host's outbound proxy to KMS (vsock:3:8000)"},
    {.name = "kms-ca-file", CL_OPT_STR(opts, kms_ca_file), .arg = "PEM", .help = "CAs for KMS instead of the system's"},
    {.name = "kms-imds", CL_OPT_STR(opts, kms_imds), .arg = "ADDR",
     .help = "credentials from IMDSv2 through cloister host --imds (else $AWS_ACCESS_KEY_ID...), for KMS and DynamoDB"},
    {.name = "dynamodb-endpoint", CL_OPT_STR(opts, ddb_endpoint), .arg = "URL",
     .help = "DynamoDB's URL (https://dynamodb.REGION.amazonaws.com)"},
    {.name = "dynamodb-proxy", CL_OPT_STR(opts, ddb_proxy), .arg = "ADDR",
     .help = "the host's outbound proxy to DynamoDB (vsock:3:PORT)"},
    {.name = "dynamodb-ca-file", CL_OPT_STR(opts, ddb_ca_file), .arg = "PEM",
     .help = "CAs for DynamoDB instead of the system's"},
};

static const char usage_text[] = "usage: cloister-wallet [OPTIONS]\n\n"
                                 "The multi-party (Shamir 2-of-3) wallet of AWS's Nitro Enclaves workshop, run by\n"
                                 "cloister enclave -appcmd.  Its share of each key opens only inside an enclave\n"
                                 "whose attestation KMS accepts (PCR0, and PCR16 = this binary).\n\n";

typedef struct wallet {
    opts o;
    cl_kms_session kms;
    pthread_mutex_t kms_lock; /* a call and its error type together */
    wallet_store *store;
    uint8_t app_hash[32];
    cl_buf app_pub_b64;
    /* where the time of signatures went, in us */
    atomic_uint_fast64_t signatures, keys, t_store, t_kms, t_combine, t_sign, t_total;
} wallet;

enum route { R_KEY, R_SIGNATURE, R_PK, R_STATS, R_NOT_FOUND };

/* ---- responses ----------------------------------------------------------- */

static void respond_json_text(cl_response *resp, int status, const char *text)
{
    resp->status = status;
    resp->content_type = "application/json";
    cl_buf_reset(&resp->body);
    if (cl_buf_append(&resp->body, text, strlen(text)) < 0 || cl_buf_append(&resp->body, "\n", 1) < 0)
        resp->status = 500;
}

/* {"error": message}: messages never carry key material. */
static void respond_error(cl_response *resp, int status, const char *fmt, ...) CL_PRINTF(3, 4);
static void respond_error(cl_response *resp, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *o = json_pack("{s:s}", "error", msg);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    respond_json_text(resp, status, text ? text : "{\"error\": \"out of memory\"}");
    free(text);
    json_decref(o);
    cl_log(status >= 500 ? CL_LOG_ERROR : CL_LOG_INFO, "refused", "status", status >= 500 ? "5xx" : "4xx", "why",
           msg, NULL);
}

/* appends to a cl_buf (wiped when freed: responses carry the user's share) */
static int put(cl_buf *b, const char *s)
{
    return cl_buf_append(b, s, strlen(s));
}

static int put_n(cl_buf *b, const void *s, size_t n)
{
    return cl_buf_append(b, s, n);
}

/* ---- the request's JSON -------------------------------------------------- */

/* The body as a JSON object whose members are all in `allowed`; duplicate
 * keys, trailing bytes and other types refused. */
static json_t *parse_body(const cl_request_info *req, const char *const *allowed, size_t n, cl_response *resp)
{
    json_error_t err;
    json_t *o = json_loadb((const char *)req->body, req->body_len, JSON_REJECT_DUPLICATES, &err);
    if (!o || !json_is_object(o)) {
        respond_error(resp, 400, "the body must be a JSON object%s%s", o ? "" : ": ", o ? "" : err.text);
        json_decref(o);
        return NULL;
    }
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        bool known = false;
        for (size_t i = 0; i < n && !known; i++)
            known = !strcmp(key, allowed[i]);
        if (!known || !json_is_string(v)) {
            respond_error(resp, 400, known ? "\"%s\" must be a string" : "unknown member \"%s\"", key);
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* jansson keeps its own copy of strings: a share's is wiped before release */
static void wipe_member(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (json_is_string(v))
        cl_wipe((char *)json_string_value(v), json_string_length(v));
}

static bool parse_pub_hex(const char *hex, uint8_t pub[WALLET_PUB_LEN], char lower[PUB_HEX_LEN + 1])
{
    if (!hex || strlen(hex) != PUB_HEX_LEN || cl_hex_decode_fixed(hex, pub, WALLET_PUB_LEN) < 0 ||
        (pub[0] != 2 && pub[0] != 3))
        return false;
    cl_hex_encode(pub, WALLET_PUB_LEN, lower);
    return true;
}

/* ---- KMS ----------------------------------------------------------------- */

static int kms_status(int rc, const char *type)
{
    if (!strcmp(type, "AccessDeniedException"))
        return 403;
    if (rc == CL_EIO || rc == CL_ENOMEM)
        return 503;
    return 502;
}

static int shard_context(const char *pub_hex, cl_kms_context_entry ctx[2])
{
    ctx[0] = (cl_kms_context_entry){"purpose", SHARD_PURPOSE};
    ctx[1] = (cl_kms_context_entry){"public_key", pub_hex};
    return 2;
}

/* ---- POST /app/sss/key --------------------------------------------------- */

static void create_key(wallet *w, const cl_request_info *req, cl_response *resp)
{
    static const char *const members[] = {"recovery_public_key_b64"};
    json_t *o = parse_body(req, members, 1, resp);
    if (!o)
        return;
    uint8_t key[WALLET_KEY_LEN], pub[WALLET_PUB_LEN];
    char pub_hex[PUB_HEX_LEN + 1];
    cl_buf pem = CL_BUF_INIT, shares[3] = {CL_BUF_INIT, CL_BUF_INIT, CL_BUF_INIT};
    cl_buf sealed = CL_BUF_INIT, eph = CL_BUF_INIT, ct = CL_BUF_INIT, ct_b64 = CL_BUF_INIT, b64 = CL_BUF_INIT;
    cl_buf out = CL_BUF_INIT;
    const char *rec = json_string_value(json_object_get(o, "recovery_public_key_b64"));
    if (!rec) {
        respond_error(resp, 400, "recovery_public_key_b64 is required (the base64 of a P-384 public key's PEM)");
        goto done;
    }
    if (strlen(rec) > 2 * MAX_RECOVERY_PEM || cl_base64_decode((const uint8_t *)rec, strlen(rec), &pem) < 0) {
        respond_error(resp, 400, "recovery_public_key_b64 is not base64 of at most %d bytes", MAX_RECOVERY_PEM);
        goto done;
    }
    if (wallet_key_new(key) < 0 || wallet_key_public(key, pub) < 0 ||
        cl_shamir_split(key, WALLET_KEY_LEN, 3, 2, shares) < 0) {
        respond_error(resp, 500, "key generation failed: %s", cl_error_message());
        goto done;
    }
    cl_wipe(key, sizeof key); /* from here on only shares exist */
    cl_hex_encode(pub, WALLET_PUB_LEN, pub_hex);
    /* the recovery key is checked before anything is stored, so that a bad
     * one leaves no orphan item behind */
    if (wallet_recovery_seal(pem.data, pem.len, shares[2].data, shares[2].len, &sealed, &eph) < 0) {
        respond_error(resp, 400, "recovery_public_key_b64: %s", cl_error_message());
        goto done;
    }
    cl_kms_context_entry ctx[2];
    cl_kms_options ko = {.key_id = w->o.key_id, .context = ctx, .context_count = (size_t)shard_context(pub_hex, ctx)};
    pthread_mutex_lock(&w->kms_lock);
    int rc = cl_kms_encrypt(w->kms.kms, &ko, shares[0].data, shares[0].len, &ct);
    char type[64];
    snprintf(type, sizeof type, "%s", rc < 0 ? cl_kms_error_type(w->kms.kms) : "");
    pthread_mutex_unlock(&w->kms_lock);
    if (rc < 0) {
        respond_error(resp, kms_status(rc, type), "KMS Encrypt of the enclave's share failed: %s",
                      cl_error_message());
        goto done;
    }
    if (cl_base64_encode(ct.data, ct.len, &ct_b64) < 0 || cl_buf_append_u8(&ct_b64, 0) < 0) {
        respond_error(resp, 500, "out of memory");
        goto done;
    }
    /* one item per request (the workshop stored two: its decorator called
     * the handler twice); never over an existing one */
    rc = wallet_store_put_new(w->store, pub_hex, (const char *)ct_b64.data);
    if (rc < 0) {
        respond_error(resp, rc == CL_EIO ? 503 : 502,
                      "storing the enclave's share failed, no key was made: %s", cl_error_message());
        goto done;
    }
    /* {"key_shard": ..., "public_key": ..., "recovery": {"shard": ..., "ephemeral_public_key": ...}} */
    int e = put(&out, "{\"key_shard\": \"");
    e |= cl_base64_encode(shares[1].data, shares[1].len, &b64);
    e |= put_n(&out, b64.data, b64.len);
    e |= put(&out, "\", \"public_key\": \"");
    e |= put(&out, pub_hex);
    e |= put(&out, "\", \"recovery\": {\"shard\": \"");
    cl_buf_reset(&b64); /* cl_base64_encode appends */
    e |= cl_base64_encode(sealed.data, sealed.len, &b64);
    e |= put_n(&out, b64.data, b64.len);
    e |= put(&out, "\", \"ephemeral_public_key\": \"");
    cl_buf_reset(&b64);
    e |= cl_base64_encode(eph.data, eph.len, &b64);
    e |= put_n(&out, b64.data, b64.len);
    e |= put(&out, "\"}}\n");
    if (e != 0) {
        respond_error(resp, 500, "out of memory");
        goto done;
    }
    resp->status = 200;
    resp->content_type = "application/json";
    cl_buf_free(&resp->body);
    resp->body = out;
    out = (cl_buf)CL_BUF_INIT;
    atomic_fetch_add(&w->keys, 1);
    cl_log(CL_LOG_INFO, "key_created", "public_key", pub_hex, NULL);
done:
    cl_wipe(key, sizeof key);
    wipe_member(o, "recovery_public_key_b64");
    json_decref(o);
    for (int i = 0; i < 3; i++)
        cl_buf_free(&shares[i]);
    cl_buf_free(&pem);
    cl_buf_free(&sealed);
    cl_buf_free(&eph);
    cl_buf_free(&ct);
    cl_buf_free(&ct_b64);
    cl_buf_free(&b64);
    cl_buf_free(&out);
}

/* ---- POST /app/sss/signature --------------------------------------------- */

static bool parse_eth_hash(const char *text, uint8_t hash[32])
{
    if (!strncmp(text, "0x", 2) || !strncmp(text, "0X", 2))
        text += 2;
    return strlen(text) == 64 && cl_hex_decode_fixed(text, hash, 32) == CL_OK;
}

static void sign(wallet *w, const cl_request_info *req, cl_response *resp)
{
    static const char *const members[] = {"key_shard_b64", "pub_key", "tx_hash", "mode"};
    json_t *o = parse_body(req, members, 4, resp);
    if (!o)
        return;
    uint64_t t0 = cl_monotonic_us();
    uint8_t key[WALLET_KEY_LEN], pub[WALLET_PUB_LEN], combined_pub[WALLET_PUB_LEN], eth_hash[32];
    char pub_hex[PUB_HEX_LEN + 1];
    cl_buf user = CL_BUF_INIT, stored_b64 = CL_BUF_INIT, ct = CL_BUF_INIT, enclave_share = CL_BUF_INIT;
    cl_buf out = CL_BUF_INIT;
    const char *shard_b64 = json_string_value(json_object_get(o, "key_shard_b64"));
    const char *pub_text = json_string_value(json_object_get(o, "pub_key"));
    const char *tx_hash = json_string_value(json_object_get(o, "tx_hash"));
    const char *mode = json_string_value(json_object_get(o, "mode"));
    bool eth = false;
    if (!shard_b64 || !pub_text || !tx_hash) {
        respond_error(resp, 400, "key_shard_b64, pub_key and tx_hash are required");
        goto done;
    }
    if (mode && strcmp(mode, "plain") && strcmp(mode, "ethereum")) {
        respond_error(resp, 400, "mode is \"plain\" (the workshop's: ECDSA over SHA-256(tx_hash)) or \"ethereum\"");
        goto done;
    }
    eth = mode && !strcmp(mode, "ethereum");
    if (!parse_pub_hex(pub_text, pub, pub_hex)) {
        respond_error(resp, 400, "pub_key must be a compressed secp256k1 public key in hex (66 digits, 02 or 03 first)");
        goto done;
    }
    if (eth ? !parse_eth_hash(tx_hash, eth_hash) : (!*tx_hash || strlen(tx_hash) > MAX_TX_HASH)) {
        respond_error(resp, 400, eth ? "tx_hash must be a 32-byte hash in hex (0x and 64 digits) in ethereum mode"
                                     : "tx_hash must be 1 to 4096 bytes");
        goto done;
    }
    cl_shamir_share shares[2];
    if (strlen(shard_b64) > 128 || cl_base64_decode((const uint8_t *)shard_b64, strlen(shard_b64), &user) < 0 ||
        cl_shamir_share_parse(user.data, user.len, WALLET_KEY_LEN, &shares[1]) < 0) {
        respond_error(resp, 400, "key_shard_b64 is not a share of a 32-byte key (base64 of 33 bytes, x not 0)");
        goto done;
    }

    uint64_t t1 = cl_monotonic_us();
    int rc = wallet_store_get(w->store, pub_hex, &stored_b64);
    if (rc < 0) {
        respond_error(resp, rc == CL_ENOTFOUND ? 404 : rc == CL_EIO ? 503 : 502, "%s",
                      rc == CL_ENOTFOUND ? "no key with this public key" : cl_error_message());
        goto done;
    }
    if (stored_b64.len > MAX_CIPHERTEXT_B64 || cl_base64_decode(stored_b64.data, stored_b64.len, &ct) < 0) {
        respond_error(resp, 502, "the stored share is not base64");
        goto done;
    }
    uint64_t t2 = cl_monotonic_us();
    cl_kms_context_entry ctx[2];
    cl_kms_options ko = {.context = ctx, .context_count = (size_t)shard_context(pub_hex, ctx)};
    pthread_mutex_lock(&w->kms_lock);
    rc = cl_kms_decrypt(w->kms.kms, &ko, ct.data, ct.len, &enclave_share);
    char type[64];
    snprintf(type, sizeof type, "%s", rc < 0 ? cl_kms_error_type(w->kms.kms) : "");
    pthread_mutex_unlock(&w->kms_lock);
    if (rc < 0) {
        respond_error(resp, kms_status(rc, type), "KMS Decrypt of the enclave's share failed: %s",
                      cl_error_message());
        goto done;
    }
    uint64_t t3 = cl_monotonic_us();
    if (cl_shamir_share_parse(enclave_share.data, enclave_share.len, WALLET_KEY_LEN, &shares[0]) < 0) {
        respond_error(resp, 502, "the enclave's share is not a share of a 32-byte key");
        goto done;
    }
    if (cl_shamir_combine(shares, 2, key, sizeof key) < 0) {
        respond_error(resp, 400, "key_shard_b64 does not combine with the enclave's share: %s", cl_error_message());
        goto done;
    }
    /* a wrong or tampered user share combines into another key: no signature */
    if (wallet_key_public(key, combined_pub) < 0 || memcmp(combined_pub, pub, WALLET_PUB_LEN) != 0) {
        respond_error(resp, 400, "key_shard_b64 is not a share of the key of pub_key (wrong or tampered share)");
        goto done;
    }
    uint64_t t4 = cl_monotonic_us();
    int e = 0;
    if (eth) {
        uint8_t sig[WALLET_ETH_SIG_LEN];
        char hex[2 * WALLET_ETH_SIG_LEN + 1], v[8];
        rc = wallet_sign_ethereum(key, eth_hash, sig);
        cl_hex_encode(sig, sizeof sig, hex);
        snprintf(v, sizeof v, "%u", sig[64]);
        e |= put(&out, "{\"signature\": \"0x");
        e |= put(&out, hex);
        e |= put(&out, "\", \"r\": \"0x");
        e |= put_n(&out, hex, 64);
        e |= put(&out, "\", \"s\": \"0x");
        e |= put_n(&out, hex + 64, 64);
        e |= put(&out, "\", \"v\": ");
        e |= put(&out, v);
        e |= put(&out, "}\n");
    } else {
        uint8_t der[WALLET_DER_SIG_MAX];
        size_t der_len = 0;
        cl_buf b64 = CL_BUF_INIT;
        rc = wallet_sign_plain(key, (const uint8_t *)tx_hash, strlen(tx_hash), der, &der_len);
        if (rc == CL_OK)
            e |= cl_base64_encode(der, der_len, &b64);
        e |= put(&out, "{\"signature\": \"");
        e |= put_n(&out, b64.data, b64.len);
        e |= put(&out, "\"}\n");
        cl_buf_free(&b64);
    }
    cl_wipe(key, sizeof key);
    uint64_t t5 = cl_monotonic_us();
    if (rc < 0 || e != 0) {
        respond_error(resp, 500, "signing failed: %s", cl_error_message());
        goto done;
    }
    resp->status = 200;
    resp->content_type = "application/json";
    cl_buf_free(&resp->body);
    resp->body = out;
    out = (cl_buf)CL_BUF_INIT;
    atomic_fetch_add(&w->signatures, 1);
    atomic_fetch_add(&w->t_store, t2 - t1);
    atomic_fetch_add(&w->t_kms, t3 - t2);
    atomic_fetch_add(&w->t_combine, t4 - t3);
    atomic_fetch_add(&w->t_sign, t5 - t4);
    atomic_fetch_add(&w->t_total, t5 - t0);
done:
    cl_wipe(key, sizeof key);
    wipe_member(o, "key_shard_b64");
    json_decref(o);
    cl_buf_free(&user);
    cl_buf_free(&stored_b64);
    cl_buf_free(&ct);
    cl_buf_free(&enclave_share);
    cl_buf_free(&out);
}

static void stats(wallet *w, cl_response *resp)
{
    char text[512];
    snprintf(text, sizeof text,
             "{\"keys\": %llu, \"signatures\": %llu, \"us\": {\"store_get\": %llu, \"kms_decrypt_recipient\": %llu, "
             "\"combine\": %llu, \"sign\": %llu, \"total\": %llu}}",
             (unsigned long long)atomic_load(&w->keys), (unsigned long long)atomic_load(&w->signatures),
             (unsigned long long)atomic_load(&w->t_store), (unsigned long long)atomic_load(&w->t_kms),
             (unsigned long long)atomic_load(&w->t_combine), (unsigned long long)atomic_load(&w->t_sign),
             (unsigned long long)atomic_load(&w->t_total));
    respond_json_text(resp, 200, text);
}

static int route(void *ctx, const cl_http_head *h)
{
    (void)ctx;
    if (cl_slice_eq(h->path, "/app/sss/key"))
        return R_KEY;
    if (cl_slice_eq(h->path, "/app/sss/signature"))
        return R_SIGNATURE;
    if (cl_slice_eq(h->path, "/app/pk"))
        return R_PK;
    if (cl_slice_eq(h->path, "/app/stats"))
        return R_STATS;
    return R_NOT_FOUND;
}

static void handle(void *ctx, int r, const cl_request_info *req, cl_response *resp)
{
    wallet *w = ctx;
    const char *want = r == R_KEY || r == R_SIGNATURE ? "POST" : "GET";
    if (r == R_NOT_FOUND) {
        respond_error(resp, 404, "not found: POST /app/sss/key, POST /app/sss/signature, GET /app/pk");
        return;
    }
    if (!cl_slice_eq(req->head->method, want)) {
        respond_error(resp, 405, "use %s", want);
        return;
    }
    switch (r) {
    case R_KEY:
        create_key(w, req, resp);
        return;
    case R_SIGNATURE:
        sign(w, req, resp);
        return;
    case R_PK: {
        char text[1024];
        snprintf(text, sizeof text, "{\"public_key\": \"%.*s\"}", (int)w->app_pub_b64.len,
                 (const char *)w->app_pub_b64.data);
        respond_json_text(resp, 200, text);
        return;
    }
    default:
        stats(w, resp);
    }
}

/* ---- start: the enclave's internal endpoints, PCR16 ------------------------ */

/* One plain HTTP/1.1 exchange with cloister enclave on 127.0.0.1:port; the
 * status, or a negative cl_err. */
static int enclave_call(unsigned port, const char *method, const char *path, const char *body, int *status)
{
    char addr_text[64];
    snprintf(addr_text, sizeof addr_text, "tcp:127.0.0.1:%u", port);
    cl_address a;
    int fd = -1;
    CL_TRY(cl_address_parse(addr_text, &a));
    CL_TRY(cl_address_connect(&a, &fd));
    char req[512];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     method, path, port, strlen(body), body);
    int rc = CL_OK;
    if (n <= 0 || (size_t)n >= sizeof req || write(fd, req, (size_t)n) != n)
        rc = cl_error_set(CL_EIO, "cannot send %s %s to cloister enclave", method, path);
    char answer[256] = "";
    size_t got = 0;
    while (rc == CL_OK && got < sizeof answer - 1) {
        ssize_t r = read(fd, answer + got, sizeof answer - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    CL_TRY(rc);
    answer[got] = '\0';
    CL_ENSURE(sscanf(answer, "HTTP/1.%*d %d", status) == 1, CL_EPROTO, "cloister enclave's answer to %s: %.40s",
              path, answer);
    return CL_OK;
}

/* PCR16 <- SHA-384(PCR16 || block) for each 1024-byte block of the file,
 * then locked; what the workshop does with its /app/proxy.  A PCR16
 * locked already (the app restarted) must hold exactly that value. */
static int extend_pcr16(cl_nsm *nsm, const char *path, char hex_out[97])
{
    cl_buf file = CL_BUF_INIT, value = CL_BUF_INIT;
    int rc = CL_OK;
    CL_TRY_OUT(cl_read_file(path, 512u << 20, &file));
    uint8_t expect[48] = {0};
    for (size_t off = 0; off < file.len; off += PCR_BLOCK) {
        size_t n = file.len - off < PCR_BLOCK ? file.len - off : PCR_BLOCK;
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        unsigned len = 0;
        bool ok = md && EVP_DigestInit_ex(md, EVP_sha384(), NULL) == 1 && EVP_DigestUpdate(md, expect, 48) == 1 &&
                  EVP_DigestUpdate(md, file.data + off, n) == 1 && EVP_DigestFinal_ex(md, expect, &len) == 1;
        EVP_MD_CTX_free(md);
        CL_ENSURE_OUT(ok, CL_ECRYPTO, "SHA-384 failed");
    }
    cl_hex_encode(expect, 48, hex_out);
    bool locked = false;
    CL_TRY_OUT(cl_nsm_describe_pcr(nsm, PCR16, &locked, &value));
    if (locked) {
        CL_ENSURE_OUT(value.len == 48 && !memcmp(value.data, expect, 48), CL_EVERIFY,
                      "PCR16 is locked with another value than this binary's (%s)", hex_out);
        goto out;
    }
    bool zero = true;
    for (size_t i = 0; i < value.len; i++)
        zero &= value.data[i] == 0;
    CL_ENSURE_OUT(zero, CL_EVERIFY, "PCR16 was extended by someone else before this app");
    for (size_t off = 0; off < file.len; off += PCR_BLOCK) {
        size_t n = file.len - off < PCR_BLOCK ? file.len - off : PCR_BLOCK;
        CL_TRY_OUT(cl_nsm_extend_pcr(nsm, PCR16, file.data + off, n, &value));
    }
    CL_ENSURE_OUT(value.len == 48 && !memcmp(value.data, expect, 48), CL_EVERIFY,
                  "the NSM's PCR16 is not the expected chain of the file's blocks");
    CL_TRY_OUT(cl_nsm_lock_pcr(nsm, PCR16));
out:
    cl_buf_free(&file);
    cl_buf_free(&value);
    return rc;
}

static int start(wallet *w)
{
    CL_TRY(wallet_crypto_init());
    const opts *o = &w->o;
    cl_kms_setup ks = {.region = o->kms_region,
                       .endpoint = o->kms_endpoint,
                       .proxy = o->kms_proxy,
                       .ca_file = o->kms_ca_file,
                       .imds = o->kms_imds,
                       .recipient = true,
                       .nsm = o->nsm};
    CL_TRY(cl_kms_session_open(&ks, &w->kms));
    /* the app key: the Recipient's RSA key, as in the workshop */
    cl_slice spki = cl_kms_recipient_public_key(w->kms.recipient);
    unsigned len = 0;
    CL_ENSURE_OSSL(EVP_Digest(spki.data, spki.len, w->app_hash, &len, EVP_sha256(), NULL) == 1, CL_ECRYPTO,
                   "SHA-256 failed");
    CL_TRY(cl_base64_encode(spki.data, spki.len, &w->app_pub_b64));
    char pcr16[97];
    CL_TRY(extend_pcr16(w->kms.nsm, o->pcr_file, pcr16));
    char app_hex[65];
    cl_hex_encode(w->app_hash, 32, app_hex);
    cl_log(CL_LOG_INFO, "measured", "pcr16", pcr16, "app_key_hash", app_hex, NULL);
    wallet_store_config sc = {.table = o->table,
                              .region = w->kms.region,
                              .endpoint = o->ddb_endpoint,
                              .proxy = o->ddb_proxy,
                              .ca_file = o->ddb_ca_file,
                              .credentials = w->kms.credentials};
    CL_TRY(wallet_store_open(&sc, &w->store));
    return CL_OK;
}

static int announce(wallet *w)
{
    cl_buf b64 = CL_BUF_INIT;
    CL_TRY(cl_base64_encode(w->app_hash, 32, &b64));
    CL_TRY(cl_buf_append_u8(&b64, 0));
    int status = 0;
    int rc = enclave_call(w->o.intport, "POST", "/enclave/hash", (const char *)b64.data, &status);
    cl_buf_free(&b64);
    CL_TRY(rc);
    CL_ENSURE(status == 200, CL_EPROTO, "POST /enclave/hash answered %d", status);
    CL_TRY(enclave_call(w->o.intport, "GET", "/enclave/ready", "", &status));
    /* 410: the enclave runs without -wait-for-app, its listener is open */
    CL_ENSURE(status == 200 || status == 410, CL_EPROTO, "GET /enclave/ready answered %d", status);
    return CL_OK;
}

int main(int argc, char **argv)
{
    static wallet w;
    cl_opt_section section = CL_OPT_SECTION("options", option_table, &w.o);
    cl_options spec = {.prog = "cloister-wallet", .usage = usage_text, .sections = &section, .section_count = 1};
    cl_options_result r;
    int rc = cl_options_main(&spec, argc, argv, &r);
    cl_options_free(NULL, &r);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    cl_log_set_component("wallet");
    pthread_mutex_init(&w.kms_lock, NULL);
    sigset_t wanted;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGINT);
    pthread_sigmask(SIG_BLOCK, &wanted, NULL);
    signal(SIGPIPE, SIG_IGN);
    int status = 1, listen_fd = -1;
    cl_server *server = NULL;
    cl_address addr;
    if (start(&w) < 0) {
        fprintf(stderr, "cloister-wallet: %s\n", cl_error_message());
        goto out;
    }
    if (cl_address_parse(w.o.listen, &addr) < 0 || cl_address_listen(&addr, 128, &listen_fd) < 0) {
        fprintf(stderr, "cloister-wallet: --listen %s: %s\n", w.o.listen, cl_error_message());
        goto out;
    }
    cl_server_config scfg = {.name = "wallet", .threads = w.o.threads, .route = route, .handle = handle, .ctx = &w};
    if (cl_server_start(&scfg, listen_fd, &server) < 0) {
        fprintf(stderr, "cloister-wallet: %s\n", cl_error_message());
        goto out;
    }
    listen_fd = -1;
    cl_log(CL_LOG_INFO, "listening", "addr", w.o.listen, "key_id", w.o.key_id, "table", w.o.table, NULL);
    if (!w.o.no_ready && announce(&w) < 0) {
        fprintf(stderr, "cloister-wallet: %s\n", cl_error_message());
        goto out;
    }
    fprintf(stderr, "cloister-wallet: ready on %s\n", w.o.listen);
    int sig = 0;
    while (sigwait(&wanted, &sig) != 0)
        ;
    status = 0;
out:
    if (server) {
        cl_server_drain(server, 5000);
        cl_server_wait(server);
    }
    if (listen_fd >= 0)
        close(listen_fd);
    wallet_store_close(w.store);
    cl_kms_session_close(&w.kms);
    cl_buf_free(&w.app_pub_b64);
    cl_options_free(&spec, NULL);
    return status;
}
