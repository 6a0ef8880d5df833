/* kms-local: SigV4 (AWS's documented example, every rejection type), key
 * policies (parse errors, Allow/Deny, attestation conditions), the SQLite
 * store (restart, wrong master key), request handling end to end in
 * process with Recipient documents from an in-process NSM simulator
 * (matching and different PCR0, debug mode, tampered, expired, foreign
 * root), and CiphertextForRecipient opened by OpenSSL's CMS. */
#include "cloister/sim/cms_recipient.h"
#include "cloister/core/encoding.h"
#include "cloister/sim/kms_local.h"
#include "cloister/sim/kms_policy.h"
#include "cloister/sim/kms_store.h"
#include "cloister/enclave/nsm.h"
#include "cloister/sim/nsm_sim.h"
#include "cloister/core/sigv4.h"
#include "test.h"

#include <dirent.h>
#include <jansson.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];

static cl_slice sl(const char *s)
{
    return (cl_slice){(const uint8_t *)s, strlen(s)};
}

/* ---- SigV4 ----------------------------------------------------------------------------------- */

#define EX_AKID "AKIDEXAMPLE"
#define EX_SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

static void sigv4_documented_example(void)
{
    /* AWS's worked example (IAM ListUsers, 2015-08-30T12:36:00Z). */
    cl_http_header h[] = {
        {sl("Content-Type"), sl("application/x-www-form-urlencoded; charset=utf-8")},
        {sl("Host"), sl("iam.amazonaws.com")},
        {sl("X-Amz-Date"), sl("20150830T123600Z")},
    };
    cl_sigv4_request req = {sl("GET"), sl("/"), sl("Action=ListUsers&Version=2010-05-08"), h, 3, NULL, 0};
    cl_buf auth = CL_BUF_INIT;
    CHECK_OK(cl_sigv4_authorization(&req, EX_AKID, EX_SECRET, "us-east-1", "iam", "20150830T123600Z",
                                     "content-type;host;x-amz-date", &auth));
    CHECK_OK(cl_buf_append_u8(&auth, 0));
    CHECK(auth.data && strstr((char *)auth.data, "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"));
    CHECK(auth.data && strstr((char *)auth.data, "Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request"));
    cl_buf_free(&auth);
}

static const char *lookup_example(void *ctx, const char *akid)
{
    (void)ctx;
    return !strcmp(akid, EX_AKID) ? EX_SECRET : NULL;
}

/* A signed KMS request in caller-owned storage. */
typedef struct signed_req {
    cl_http_header h[5];
    char date[17], target[96], auth[1024];
    size_t n;
    cl_sigv4_request req;
} signed_req;

static void make_request_signing(signed_req *s, const char *akid, const char *secret, int64_t at_s, const char *op,
                                 const char *body, const char *signed_list);

static void make_request(signed_req *s, const char *akid, const char *secret, int64_t at_s, const char *op,
                         const char *body)
{
    make_request_signing(s, akid, secret, at_s, op, body, "content-type;host;x-amz-date;x-amz-target");
}

/* The same, signing only the headers in signed_list. */
static void make_request_signing(signed_req *s, const char *akid, const char *secret, int64_t at_s, const char *op,
                                 const char *body, const char *signed_list)
{
    memset(s, 0, sizeof *s);
    cl_sigv4_format_date(at_s, s->date);
    snprintf(s->target, sizeof s->target, "TrentService.%s", op);
    s->h[0] = (cl_http_header){sl("Content-Type"), sl(CL_KMS_CONTENT_TYPE)};
    s->h[1] = (cl_http_header){sl("Host"), sl("kms.us-east-1.amazonaws.com")};
    s->h[2] = (cl_http_header){sl("X-Amz-Date"), sl(s->date)};
    s->h[3] = (cl_http_header){sl("X-Amz-Target"), sl(s->target)};
    s->req = (cl_sigv4_request){sl("POST"), sl("/"), sl(""), s->h, 4, (const uint8_t *)body, strlen(body)};
    cl_buf a = CL_BUF_INIT;
    if (cl_sigv4_authorization(&s->req, akid, secret, "us-east-1", "kms", s->date, signed_list, &a) == CL_OK &&
        a.len < sizeof s->auth) {
        memcpy(s->auth, a.data, a.len);
    }
    cl_buf_free(&a);
    s->h[4] = (cl_http_header){sl("Authorization"), sl(s->auth)};
    s->req.header_count = 5;
}

static int verify(const signed_req *s, int64_t now_s, cl_sigv4_result *res)
{
    return cl_sigv4_verify(&s->req, "us-east-1", "kms", lookup_example, NULL, now_s, res);
}

static void sigv4_rejections(void)
{
    int64_t now = 1700000000;
    signed_req s;
    cl_sigv4_result res;
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_OK && !strcmp(res.access_key_id, EX_AKID));
    CHECK_OK(verify(&s, now + 299, &res));
    CHECK(res.status == CL_SIGV4_OK);

    make_request(&s, EX_AKID, "wrong secret", now, "ListKeys", "{}");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_MISMATCH && !strcmp(res.error_type, "InvalidSignatureException"));
    CHECK(strstr(res.message, "does not match the signature you provided"));

    make_request(&s, "AKIDUNKNOWN", EX_SECRET, now, "ListKeys", "{}");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_UNKNOWN_KEY && !strcmp(res.error_type, "UnrecognizedClientException"));

    make_request(&s, EX_AKID, EX_SECRET, now - 301, "ListKeys", "{}");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_EXPIRED && !strcmp(res.error_type, "InvalidSignatureException"));
    CHECK(!strncmp(res.message, "Signature expired: ", 19));
    make_request(&s, EX_AKID, EX_SECRET, now + 301, "ListKeys", "{}");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_EXPIRED && !strncmp(res.message, "Signature not yet current", 25));

    /* the body, a signed header, the target: any change breaks it */
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    s.req.body = (const uint8_t *)"{ }";
    s.req.body_len = 3;
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_MISMATCH);
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    s.h[3].value = sl("TrentService.Decrypt");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_MISMATCH);

    /* another region's scope */
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    CHECK_OK(cl_sigv4_verify(&s.req, "eu-west-1", "kms", lookup_example, NULL, now, &res));
    CHECK(res.status == CL_SIGV4_BAD_SCOPE && strstr(res.message, "valid region"));

    /* no Authorization, no date, a truncated header */
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    s.req.header_count = 4;
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_MISSING && !strcmp(res.error_type, "MissingAuthenticationTokenException"));
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    s.h[2].name = sl("X-Not-Date");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && !strcmp(res.error_type, "IncompleteSignatureException"));
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    s.h[4].value = sl("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/kms/aws4_request");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "'Signature'"));
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    s.h[4].value = sl("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/kms/aws4_request, "
                      "SignedHeaders=x-host;x-amz-date, Signature=00");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "'Host'"));

    /* a query that cannot be canonicalized is a mismatch, not an internal error */
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    char query[1024] = "";
    for (int i = 0; i < 100; i++)
        strcat(query, "a=b&");
    s.req.query = sl(query);
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_MISMATCH);
}

/* The Authorization header's parameters: each exactly once, no other. */
static void sigv4_authorization_parameters(void)
{
    int64_t now = 1700000000;
    signed_req s;
    cl_sigv4_result res;
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    char good[1024], text[2048];
    snprintf(good, sizeof good, "%s", s.auth);
    const char *sig = strstr(good, "Signature=");
    CHECK(sig != NULL);
    if (!sig)
        return;
    const char *cred = strstr(good, "Credential="), *sh = strstr(good, "SignedHeaders=");
    /* reordered and with extra spaces: still the same header */
    snprintf(text, sizeof text, "AWS4-HMAC-SHA256 %s,  %.*s , %.*s", sig, (int)(sh - cred - 2), cred,
             (int)(sig - sh - 2), sh);
    s.h[4].value = sl(text);
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_OK);
    /* an unknown parameter (strtok_r skipped it) */
    snprintf(text, sizeof text, "%s, Foo=bar", good);
    s.h[4].value = sl(text);
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "unknown parameter 'Foo'"));
    /* a repeated Signature= (the second overrode the first): refused, whichever is right */
    snprintf(text, sizeof text, "%.*sSignature=%064d, %s", (int)(sig - good), good, 0, sig);
    s.h[4].value = sl(text);
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "'Signature' more than once"));
    snprintf(text, sizeof text, "%s, %s", good, sig);
    s.h[4].value = sl(text);
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "'Signature' more than once"));
    snprintf(text, sizeof text, "%s, %.*s", good, (int)(sh - cred - 2), cred);
    s.h[4].value = sl(text);
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "'Credential' more than once"));
    /* missing ones, each named */
    snprintf(text, sizeof text, "AWS4-HMAC-SHA256 %s", sig);
    s.h[4].value = sl(text);
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "'Credential'") &&
          strstr(res.message, "'SignedHeaders'") && !strstr(res.message, "'Signature'"));
    /* empty values, a part without '=', a trailing comma, a case variant of a name */
    const char *bad[] = {"AWS4-HMAC-SHA256 Credential=, SignedHeaders=host, Signature=00",
                         "AWS4-HMAC-SHA256 Credential=A/B/C/D/aws4_request, SignedHeaders, Signature=00",
                         "AWS4-HMAC-SHA256 Credential=A/B/C/D/aws4_request, SignedHeaders=host, Signature=00,",
                         "AWS4-HMAC-SHA256 credential=A/B/C/D/aws4_request, SignedHeaders=host, Signature=00",
                         "AWS4-HMAC-SHA256 Credential=A/B/C/D/aws4_request,, SignedHeaders=host, Signature=00"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s.h[4].value = sl(bad[i]);
        CHECK_OK(verify(&s, now, &res));
        CHECK(res.status == CL_SIGV4_INCOMPLETE);
    }
}

/* ---- policies ------------------------------------------------------------------------------ */

static int eval(const char *json, const cl_kms_policy_context *ctx)
{
    cl_kms_policy *p = NULL;
    int rc = cl_kms_policy_parse(json, strlen(json), &p);
    if (rc < 0)
        return -100;
    cl_kms_decision d = cl_kms_policy_evaluate(p, ctx);
    cl_kms_policy_free(p);
    /* a decision is never mistaken for CL_OK by a caller that tests rc == 0 */
    CHECK((int)d != CL_OK && (d == CL_KMS_ALLOW || d == CL_KMS_IMPLICIT_DENY || d == CL_KMS_EXPLICIT_DENY));
    return (int)d;
}

#define PCR0_A "aa00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000bb"

static void policy_parse_errors(void)
{
    static const char *const bad[] = {
        "", "[]", "{}", "{\"Statement\": []}", "{\"Statement\": 5}",
        "{\"Statement\": {\"Effect\": \"Maybe\", \"Principal\": \"*\", \"Action\": \"kms:*\", \"Resource\": \"*\"}}",
        "{\"Statement\": {\"Effect\": \"Allow\", \"Action\": \"kms:*\", \"Resource\": \"*\"}}",
        "{\"Statement\": {\"Effect\": \"Allow\", \"Principal\": \"*\", \"Resource\": \"*\"}}",
        "{\"Statement\": {\"Effect\": \"Allow\", \"Principal\": \"*\", \"Action\": \"kms:*\"}}",
        "{\"Statement\": {\"Effect\": \"Allow\", \"Principal\": \"*\", \"Action\": \"kms:*\", \"Resource\": \"*\","
        " \"Condition\": {\"NumericEquals\": {\"kms:CallerAccount\": \"1\"}}}}",
        "{\"Statement\": {\"Effect\": \"Allow\", \"Principal\": \"*\", \"Action\": \"kms:*\", \"Resource\": \"*\","
        " \"Condition\": {\"StringEquals\": {\"kms:RecipientAttestation:PCR32\": \"00\"}}}}",
        "{\"Statement\": {\"Effect\": \"Allow\", \"Principal\": \"*\", \"Action\": \"kms:*\", \"Resource\": \"*\","
        " \"Surprise\": 1}}",
        "{\"Version\": \"2020-01-01\", \"Statement\": {\"Effect\": \"Allow\", \"Principal\": \"*\", \"Action\": "
        "\"kms:*\", \"Resource\": \"*\"}}",
        "{\"Statement\": {\"Effect\": \"Allow\", \"Effect\": \"Deny\", \"Principal\": \"*\", \"Action\": \"kms:*\", "
        "\"Resource\": \"*\"}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_kms_policy *p = NULL;
        int rc = cl_kms_policy_parse(bad[i], strlen(bad[i]), &p);
        if (rc >= 0)
            fprintf(stderr, "accepted bad policy %zu\n", i);
        CHECK(rc < 0 && p == NULL);
        cl_kms_policy_free(p);
    }
}

static void policy_evaluation(void)
{
    cl_kms_policy_context ctx = {.action = "kms:Decrypt", .principal = "arn:aws:iam::111122223333:user/alice",
                                 .account = "111122223333", .resource = "arn:aws:kms:us-east-1:111122223333:key/k"};
    char *def = NULL;
    CHECK_OK(cl_kms_policy_default("111122223333", &def));
    CHECK(eval(def, &ctx) == CL_KMS_ALLOW);
    ctx.account = "999999999999";
    CHECK(eval(def, &ctx) == CL_KMS_IMPLICIT_DENY);
    ctx.account = "111122223333";
    free(def);

    const char *deny = "{\"Statement\": [{\"Effect\": \"Allow\", \"Principal\": {\"AWS\": \"111122223333\"}, "
                       "\"Action\": \"kms:*\", \"Resource\": \"*\"}, {\"Effect\": \"Deny\", \"Principal\": \"*\", "
                       "\"Action\": [\"kms:De*\"], \"Resource\": \"*\"}]}";
    CHECK(eval(deny, &ctx) == CL_KMS_EXPLICIT_DENY);
    ctx.action = "kms:Encrypt";
    CHECK(eval(deny, &ctx) == CL_KMS_ALLOW);

    const char *named = "{\"Statement\": {\"Effect\": \"Allow\", \"Principal\": {\"AWS\": "
                        "[\"arn:aws:iam::111122223333:user/bob\"]}, \"NotAction\": \"kms:Encrypt\", \"Resource\": \"*\"}}";
    ctx.action = "kms:Decrypt";
    CHECK(eval(named, &ctx) == CL_KMS_IMPLICIT_DENY);
    ctx.principal = "arn:aws:iam::111122223333:user/bob";
    CHECK(eval(named, &ctx) == CL_KMS_ALLOW);
    ctx.action = "kms:Encrypt";
    CHECK(eval(named, &ctx) == CL_KMS_IMPLICIT_DENY);

    /* attestation conditions */
    ctx.action = "kms:Decrypt";
    const char *att = "{\"Version\": \"2012-10-17\", \"Statement\": {\"Effect\": \"Allow\", \"Principal\": \"*\", "
                      "\"Action\": \"kms:Decrypt\", \"Resource\": \"*\", \"Condition\": {\"StringEqualsIgnoreCase\": "
                      "{\"kms:RecipientAttestation:ImageSha384\": \"" PCR0_A "\"}}}}";
    CHECK(eval(att, &ctx) == CL_KMS_IMPLICIT_DENY); /* no attestation: the key is absent */
    ctx.image_sha384 = ctx.pcrs[0] = PCR0_A;
    CHECK(eval(att, &ctx) == CL_KMS_ALLOW);
    ctx.image_sha384 = ctx.pcrs[0] = "AA00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000BB";
    CHECK(eval(att, &ctx) == CL_KMS_ALLOW); /* IgnoreCase */
    ctx.image_sha384 = ctx.pcrs[0] = "cc";
    CHECK(eval(att, &ctx) == CL_KMS_IMPLICIT_DENY);

    const char *pcrs = "{\"Statement\": {\"Effect\": \"Allow\", \"Principal\": \"*\", \"Action\": \"kms:*\", "
                       "\"Resource\": \"*\", \"Condition\": {\"StringEquals\": {\"kms:RecipientAttestation:PCR0\": \""
                       PCR0_A "\", \"kms:recipientattestation:pcr8\": [\"01\", \"02\"]}}}}";
    ctx.image_sha384 = ctx.pcrs[0] = PCR0_A;
    CHECK(eval(pcrs, &ctx) == CL_KMS_IMPLICIT_DENY); /* PCR8 absent */
    ctx.pcrs[8] = "02";
    CHECK(eval(pcrs, &ctx) == CL_KMS_ALLOW); /* both keys, any of the values */
    ctx.pcrs[8] = "03";
    CHECK(eval(pcrs, &ctx) == CL_KMS_IMPLICIT_DENY);
    ctx.pcrs[0] = PCR0_A "00";
    ctx.pcrs[8] = "01";
    CHECK(eval(pcrs, &ctx) == CL_KMS_IMPLICIT_DENY); /* StringEquals is exact */

    /* PCR16 and PCR0 together: the wallet example's key (PCR16 is the app binary, extended and locked) */
    const char *pcr16 = "{\"Statement\": {\"Effect\": \"Allow\", \"Principal\": \"*\", \"Action\": \"kms:Decrypt\", "
                        "\"Resource\": \"*\", \"Condition\": {\"StringEqualsIgnoreCase\": {\"kms:RecipientAttestation:PCR0\": \""
                        PCR0_A "\", \"kms:RecipientAttestation:PCR16\": \"5e\"}}}}";
    ctx.pcrs[0] = PCR0_A;
    ctx.pcrs[16] = NULL;
    CHECK(eval(pcr16, &ctx) == CL_KMS_IMPLICIT_DENY); /* PCR16 absent */
    ctx.pcrs[16] = "5E";
    CHECK(eval(pcr16, &ctx) == CL_KMS_ALLOW);
    ctx.pcrs[16] = "5f";
    CHECK(eval(pcr16, &ctx) == CL_KMS_IMPLICIT_DENY);
    ctx.pcrs[16] = "5e";
    ctx.pcrs[0] = "cc";
    CHECK(eval(pcr16, &ctx) == CL_KMS_IMPLICIT_DENY); /* another image, the same app */
    ctx.pcrs[0] = PCR0_A;
    ctx.pcrs[16] = NULL;

    const char *ifexists = "{\"Statement\": {\"Effect\": \"Allow\", \"Principal\": \"*\", \"Action\": \"kms:*\", "
                           "\"Resource\": \"*\", \"Condition\": {\"StringEqualsIfExists\": "
                           "{\"kms:RecipientAttestation:PCR3\": \"ab\"}, \"StringNotEquals\": "
                           "{\"kms:EncryptionContext:tenant\": \"evil\"}}}}";
    CHECK(eval(ifexists, &ctx) == CL_KMS_ALLOW);
    ctx.pcrs[3] = "ac";
    CHECK(eval(ifexists, &ctx) == CL_KMS_IMPLICIT_DENY);
    ctx.pcrs[3] = NULL;
    cl_kms_policy_pair ec[] = {{"tenant", "evil"}};
    ctx.encryption_context = ec;
    ctx.encryption_context_len = 1;
    CHECK(eval(ifexists, &ctx) == CL_KMS_IMPLICIT_DENY);
}

/* ---- store ----------------------------------------------------------------------------------- */

static void store_restart_and_master_key(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/store.db", tmpdir);
    uint8_t master[32], other[32];
    memset(master, 7, 32);
    memset(other, 8, 32);
    cl_kms_store *s = NULL;
    CHECK_OK(cl_kms_store_open(path, master, &s));
    cl_kms_key k = {.id = "11111111-2222-4333-8444-555555555555", .creation_s = 1, .state = CL_KMS_DISABLED};
    k.description = "d";
    k.policy = "{}";
    memset(k.material, 0x5a, 32);
    CHECK_OK(cl_kms_store_put_key(s, &k));
    cl_kms_alias a = {.name = "alias/x", .key_id = "11111111-2222-4333-8444-555555555555"};
    CHECK_OK(cl_kms_store_create_alias(s, &a));
    CHECK_ERR(cl_kms_store_create_alias(s, &a), CL_EVERIFY, NULL);
    cl_kms_store_close(s);

    s = NULL;
    CHECK_ERR(cl_kms_store_open(path, other, &s), CL_EVERIFY, "master key");
    CHECK(s == NULL);
    CHECK_OK(cl_kms_store_open(path, master, &s));
    cl_kms_key back;
    CHECK_OK(cl_kms_store_get_key(s, k.id, &back));
    CHECK(back.state == CL_KMS_DISABLED && !memcmp(back.material, k.material, 32) && !strcmp(back.policy, "{}"));
    cl_kms_key_free(&back);
    CHECK_ERR(cl_kms_store_get_key(s, "11111111-2222-4333-8444-000000000000", &back), CL_ENOTFOUND, NULL);
    cl_kms_alias ga;
    CHECK_OK(cl_kms_store_get_alias(s, "alias/x", &ga));
    CHECK(!strcmp(ga.key_id, k.id));
    cl_kms_store_close(s);
}

/* ---- request handling ------------------------------------------------------------------------ */

static cl_nsm_sim *sim_normal, *sim_debug, *sim_other;
static cl_verifier *trust_sim, *trust_aws;
static EVP_PKEY *rsa_key;
static cl_buf rsa_spki;

static cl_nsm_sim *new_sim(const char *name, bool debug, bool other_image)
{
    char dir[128];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
    cl_nsm_sim_config cfg = {.state_dir = dir, .instance_id = "i-0123456789abcdef0", .debug = debug};
    if (other_image) {
        cfg.pcr_mask = 1;
        memset(cfg.pcr_values[0], 0x11, CL_NSM_SIM_PCR_LEN);
    }
    cl_nsm_sim *s = NULL;
    CHECK_OK(cl_nsm_sim_new(&cfg, &s));
    return s;
}

static int document(cl_nsm_sim *sim, cl_buf *doc)
{
    cl_nsm *nsm = NULL;
    CL_TRY(cl_nsm_open_sim(sim, &nsm));
    int rc = cl_nsm_attestation(nsm, NULL, 0, NULL, 0, rsa_spki.data, rsa_spki.len, doc);
    cl_nsm_close(nsm);
    return rc;
}

static json_t *call_kms(cl_kms_local *k, const char *op, const char *body, uint64_t now_ms, char *type_out)
{
    signed_req s;
    make_request(&s, EX_AKID, EX_SECRET, (int64_t)(now_ms / 1000), op, body);
    cl_kms_response r = {.body = CL_BUF_INIT};
    json_t *j = NULL;
    if (cl_kms_local_handle(k, &s.req, now_ms, &r) == CL_OK)
        j = json_loadb((const char *)r.body.data, r.body.len, 0, NULL);
    strcpy(type_out, r.error_type);
    if (j && r.error_type[0]) {
        const char *t = json_string_value(json_object_get(j, "__type"));
        if (!t || strcmp(t, r.error_type) || r.status != 400)
            strcpy(type_out, "bad error shape");
    }
    cl_buf_free(&r.body);
    return j;
}

static char *b64(const uint8_t *d, size_t n)
{
    cl_buf b = CL_BUF_INIT;
    if (cl_base64_encode(d, n, &b) < 0)
        return strdup("");
    char *s = strdup((char *)b.data);
    cl_buf_free(&b);
    return s;
}

static bool cms_open(const char *b64text, cl_buf *out)
{
    cl_buf der = CL_BUF_INIT;
    bool ok = cl_base64_decode((const uint8_t *)b64text, strlen(b64text), &der) == CL_OK;
    BIO *in = ok ? BIO_new_mem_buf(der.data, (int)der.len) : NULL;
    BIO *mem = BIO_new(BIO_s_mem());
    CMS_ContentInfo *cms = in ? d2i_CMS_bio(in, NULL) : NULL;
    ok = cms && CMS_decrypt(cms, rsa_key, NULL, NULL, mem, CMS_BINARY) == 1;
    char *data = NULL;
    long n = ok ? BIO_get_mem_data(mem, &data) : 0;
    ok = ok && cl_buf_append(out, data, (size_t)n) == CL_OK;
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    BIO_free(mem);
    cl_buf_free(&der);
    return ok;
}

static cl_kms_local *new_kms(cl_kms_store **store, cl_verifier *v)
{
    uint8_t master[32] = {1};
    CHECK_OK(cl_kms_store_open(":memory:", master, store));
    cl_kms_credential cred = {EX_AKID, EX_SECRET, NULL};
    cl_kms_local_config cfg = {.region = "us-east-1", .credentials = &cred, .credential_count = 1, .verifier = v,
                               .store = *store};
    cl_kms_local *k = NULL;
    CHECK_OK(cl_kms_local_new(&cfg, &k));
    return k;
}

static void pcr0_hex(cl_nsm_sim *sim, char out[97])
{
    cl_nsm *nsm = NULL;
    cl_buf v = CL_BUF_INIT;
    bool locked;
    out[0] = '\0';
    if (cl_nsm_open_sim(sim, &nsm) == CL_OK && cl_nsm_describe_pcr(nsm, 0, &locked, &v) == CL_OK && v.len == 48)
        cl_hex_encode(v.data, 48, out);
    cl_buf_free(&v);
    cl_nsm_close(nsm);
}

/* A captured request re-targeted after signing: X-Amz-Target names the
 * operation, so it (with Content-Type and every x-amz-* header) must be
 * signed, as AWS requires.  Signing only host and x-amz-date used to pass. */
static void sigv4_retargeted(void)
{
    int64_t now = 1700000000;
    signed_req s;
    cl_sigv4_result res;
    make_request_signing(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}", "host;x-amz-date");
    s.h[3].value = sl("TrentService.GenerateRandom");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "'Content-Type' must be a 'SignedHeader'"));
    make_request_signing(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}", "content-type;host;x-amz-date");
    s.h[3].value = sl("TrentService.GenerateRandom");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "'X-Amz-Target' must be a 'SignedHeader'"));
    make_request_signing(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}", "content-type;host;x-amz-target");
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "'X-Amz-Date' must be a 'SignedHeader'"));
    /* an extra x-amz-* header added after signing */
    make_request(&s, EX_AKID, EX_SECRET, now, "ListKeys", "{}");
    cl_http_header h[6];
    memcpy(h, s.h, sizeof s.h);
    h[5] = (cl_http_header){sl("x-amz-security-token"), sl("added")};
    s.req.headers = h;
    s.req.header_count = 6;
    CHECK_OK(verify(&s, now, &res));
    CHECK(res.status == CL_SIGV4_INCOMPLETE && strstr(res.message, "'x-amz-security-token' must be a"));

    /* through kms-local's request -> reply core: the re-targeted request gets no answer but the refusal */
    cl_kms_store *store = NULL;
    cl_kms_local *k = new_kms(&store, trust_sim);
    uint64_t now_ms = cl_now_ms();
    make_request(&s, EX_AKID, EX_SECRET, (int64_t)(now_ms / 1000), "ListKeys", "{}");
    cl_kms_response r = {.body = CL_BUF_INIT};
    CHECK_OK(cl_kms_local_handle(k, &s.req, now_ms, &r));
    CHECK(r.status == 200); /* signed as AWS wants, the same core answers */
    cl_buf_free(&r.body);
    r = (cl_kms_response){.body = CL_BUF_INIT};
    /* a ListKeys whose signature left out X-Amz-Target, replayed as GenerateRandom */
    make_request_signing(&s, EX_AKID, EX_SECRET, (int64_t)(now_ms / 1000), "ListKeys", "{\"NumberOfBytes\": 32}",
                         "content-type;host;x-amz-date");
    s.h[3].value = sl("TrentService.GenerateRandom");
    CHECK_OK(cl_kms_local_handle(k, &s.req, now_ms, &r));
    CHECK(r.status == 400 && !strcmp(r.error_type, "IncompleteSignatureException"));
    CHECK(!r.body.data || !memmem(r.body.data, r.body.len, "Plaintext", 9));
    cl_buf_free(&r.body);
    cl_kms_local_free(k);
    cl_kms_store_close(store);
}

static void handle_end_to_end(void)
{
    cl_kms_store *store = NULL;
    cl_kms_local *k = new_kms(&store, trust_sim);
    uint64_t now = cl_now_ms();
    char type[64];
    json_t *r = call_kms(k, "CreateKey", "{\"Description\": \"t\"}", now, type);
    CHECK(r && !type[0]);
    const char *arn = json_string_value(json_object_get(json_object_get(r, "KeyMetadata"), "Arn"));
    CHECK(arn && !strncmp(arn, "arn:aws:kms:us-east-1:111122223333:key/", 39));
    char key[160];
    snprintf(key, sizeof key, "%s", arn ? arn : "");
    json_decref(r);

    char body[8192];
    snprintf(body, sizeof body, "{\"KeyId\": \"%s\", \"Plaintext\": \"c2VjcmV0\", \"EncryptionContext\": {\"a\": \"b\"}}",
             key);
    r = call_kms(k, "Encrypt", body, now, type);
    const char *blob_text = json_string_value(json_object_get(r, "CiphertextBlob"));
    CHECK(blob_text && !type[0]);
    char blob[1024];
    snprintf(blob, sizeof blob, "%s", blob_text ? blob_text : "");
    json_decref(r);
    snprintf(body, sizeof body, "{\"CiphertextBlob\": \"%s\", \"EncryptionContext\": {\"a\": \"b\"}}", blob);
    r = call_kms(k, "Decrypt", body, now, type);
    CHECK(r && !type[0] && !strcmp(json_string_value(json_object_get(r, "Plaintext")), "c2VjcmV0"));
    json_decref(r);

    /* errors of the protocol itself */
    r = call_kms(k, "Nonsense", "{}", now, type);
    CHECK(!strcmp(type, "UnknownOperationException"));
    json_decref(r);
    r = call_kms(k, "Encrypt", "{\"KeyId\": ", now, type);
    CHECK(!strcmp(type, "SerializationException"));
    json_decref(r);
    r = call_kms(k, "Encrypt", "{\"KeyId\": 5, \"Plaintext\": \"AA==\"}", now, type);
    CHECK(!strcmp(type, "SerializationException"));
    json_decref(r);
    r = call_kms(k, "Encrypt", "{\"Plaintext\": \"AA==\"}", now, type);
    CHECK(!strcmp(type, "ValidationException"));
    json_decref(r);
    r = call_kms(k, "Encrypt", "{\"KeyId\": \"\", \"Plaintext\": \"AA==\"}", now, type);
    CHECK(!strcmp(type, "ValidationException"));
    json_decref(r);
    r = call_kms(k, "DescribeKey", "{\"KeyId\": \"not-a-key\"}", now, type);
    CHECK(!strcmp(type, "NotFoundException"));
    json_decref(r);

    /* a policy allowing Decrypt only to the simulator's PCR0 */
    char pcr0[97], policy[4096], escaped[8192];
    pcr0_hex(sim_normal, pcr0);
    snprintf(policy, sizeof policy,
             "{\"Version\": \"2012-10-17\", \"Statement\": [{\"Sid\": \"admin\", \"Effect\": \"Allow\", "
             "\"Principal\": {\"AWS\": \"arn:aws:iam::111122223333:root\"}, \"NotAction\": [\"kms:Decrypt\", "
             "\"kms:GenerateDataKey\"], \"Resource\": \"*\"}, {\"Sid\": \"enclave\", \"Effect\": \"Allow\", "
             "\"Principal\": \"*\", \"Action\": [\"kms:Decrypt\", \"kms:GenerateDataKey\"], \"Resource\": \"*\", "
             "\"Condition\": {\"StringEqualsIgnoreCase\": {\"kms:RecipientAttestation:PCR0\": \"%s\"}}}]}",
             pcr0);
    json_t *ps = json_string(policy);
    char *pdump = json_dumps(ps, JSON_ENCODE_ANY);
    snprintf(escaped, sizeof escaped, "{\"KeyId\": \"%s\", \"Policy\": %s}", key, pdump);
    free(pdump);
    json_decref(ps);
    r = call_kms(k, "PutKeyPolicy", escaped, now, type);
    CHECK(!type[0]);
    json_decref(r);

    snprintf(body, sizeof body, "{\"CiphertextBlob\": \"%s\", \"EncryptionContext\": {\"a\": \"b\"}}", blob);
    r = call_kms(k, "Decrypt", body, now, type);
    CHECK(!strcmp(type, "AccessDeniedException")); /* no Recipient: no PCR0 */
    json_decref(r);

    cl_buf doc = CL_BUF_INIT, debug_doc = CL_BUF_INIT, other_doc = CL_BUF_INIT;
    CHECK_OK(document(sim_normal, &doc));
    CHECK_OK(document(sim_debug, &debug_doc));
    CHECK_OK(document(sim_other, &other_doc));
    struct {
        const char *name;
        const cl_buf *doc;
        uint64_t at;
        bool tamper;
        const char *want; /* NULL: success */
    } cases[] = {
        {"matching PCR0", &doc, now, false, NULL},
        {"another PCR0", &other_doc, now, false, "AccessDeniedException"},
        {"debug mode", &debug_doc, now, false, "AccessDeniedException"},
        {"tampered", &doc, now, true, "ValidationException"},
        {"expired", &doc, now + CL_NSM_SIM_LEAF_LIFETIME_MS + 60000, false, "ValidationException"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cl_buf d = CL_BUF_INIT;
        CHECK_OK(cl_buf_append(&d, cases[i].doc->data, cases[i].doc->len));
        if (cases[i].tamper && d.len > 100)
            d.data[d.len - 10] ^= 0x01; /* inside the signature */
        char *docb64 = b64(d.data, d.len);
        char *big = malloc(strlen(docb64) + 2048);
        sprintf(big,
                "{\"CiphertextBlob\": \"%s\", \"EncryptionContext\": {\"a\": \"b\"}, \"Recipient\": "
                "{\"KeyEncryptionAlgorithm\": \"RSAES_OAEP_SHA_256\", \"AttestationDocument\": \"%s\"}}",
                blob, docb64);
        /* an expired document is tried with a request signed at that time */
        r = call_kms(k, "Decrypt", big, cases[i].at, type);
        if (cases[i].want ? strcmp(type, cases[i].want) : type[0] != 0)
            fprintf(stderr, "case %s: got '%s'\n", cases[i].name, type);
        CHECK(cases[i].want ? !strcmp(type, cases[i].want) : !type[0]);
        CHECK(!json_object_get(r, "Plaintext")); /* never, with a Recipient */
        if (!cases[i].want) {
            const char *cfr = json_string_value(json_object_get(r, "CiphertextForRecipient"));
            cl_buf pt = CL_BUF_INIT;
            CHECK(cfr && cms_open(cfr, &pt) && pt.len == 6 && !memcmp(pt.data, "secret", 6));
            cl_buf_free(&pt);
        }
        json_decref(r);
        /* GenerateDataKey under the same rules */
        sprintf(big,
                "{\"KeyId\": \"%s\", \"KeySpec\": \"AES_256\", \"Recipient\": {\"KeyEncryptionAlgorithm\": "
                "\"RSAES_OAEP_SHA_256\", \"AttestationDocument\": \"%s\"}}",
                key, docb64);
        r = call_kms(k, "GenerateDataKey", big, cases[i].at, type);
        CHECK(cases[i].want ? !strcmp(type, cases[i].want) : !type[0]);
        CHECK(!json_object_get(r, "Plaintext"));
        if (!cases[i].want) {
            cl_buf pt = CL_BUF_INIT;
            const char *cfr = json_string_value(json_object_get(r, "CiphertextForRecipient"));
            CHECK(cfr && cms_open(cfr, &pt) && pt.len == 32);
            CHECK(json_object_get(r, "CiphertextBlob") != NULL);
            cl_buf_free(&pt);
        }
        json_decref(r);
        free(big);
        free(docb64);
        cl_buf_free(&d);
    }
    cl_kms_local_free(k);
    cl_kms_store_close(store);

    /* a kms-local that trusts AWS's root only refuses the simulator's documents */
    k = new_kms(&store, trust_aws);
    char *docb64 = b64(doc.data, doc.len);
    char *big = malloc(strlen(docb64) + 256);
    sprintf(big, "{\"NumberOfBytes\": 16, \"Recipient\": {\"AttestationDocument\": \"%s\"}}", docb64);
    r = call_kms(k, "GenerateRandom", big, now, type);
    CHECK(!strcmp(type, "ValidationException") && !json_object_get(r, "Plaintext"));
    json_decref(r);
    cl_kms_local_free(k);
    cl_kms_store_close(store);
    k = new_kms(&store, trust_sim);
    r = call_kms(k, "GenerateRandom", big, now, type);
    cl_buf pt = CL_BUF_INIT;
    CHECK(!type[0] && !json_object_get(r, "Plaintext"));
    CHECK(cms_open(json_string_value(json_object_get(r, "CiphertextForRecipient")), &pt) && pt.len == 16);
    cl_buf_free(&pt);
    json_decref(r);
    /* a Recipient document is good for 5 minutes, as with KMS: a captured one cannot be replayed later */
    r = call_kms(k, "GenerateRandom", big, now + 4 * 60 * 1000, type);
    CHECK(!type[0] && json_object_get(r, "CiphertextForRecipient"));
    json_decref(r);
    r = call_kms(k, "GenerateRandom", big, now + 6 * 60 * 1000, type);
    CHECK(!strcmp(type, "ValidationException") && !json_object_get(r, "CiphertextForRecipient"));
    const char *msg = json_string_value(json_object_get(r, "message"));
    CHECK(msg && strstr(msg, "s old, more than the allowed 300 s"));
    json_decref(r);
    cl_kms_local_free(k);
    cl_kms_store_close(store);
    /* the bound is configurable */
    {
        uint8_t master[32] = {1};
        CHECK_OK(cl_kms_store_open(":memory:", master, &store));
        cl_kms_credential cred = {EX_AKID, EX_SECRET, NULL};
        cl_kms_local_config cfg = {.region = "us-east-1", .credentials = &cred, .credential_count = 1,
                                   .verifier = trust_sim, .store = store, .recipient_max_age_ms = 60 * 1000};
        CHECK_OK(cl_kms_local_new(&cfg, &k));
        r = call_kms(k, "GenerateRandom", big, now + 2 * 60 * 1000, type);
        CHECK(!strcmp(type, "ValidationException") && !json_object_get(r, "CiphertextForRecipient"));
        json_decref(r);
    }
    free(big);
    free(docb64);
    cl_kms_local_free(k);
    cl_kms_store_close(store);
    cl_buf_free(&doc);
    cl_buf_free(&debug_doc);
    cl_buf_free(&other_doc);
}

/* ---- CiphertextForRecipient ------------------------------------------------------------------ */

static void cms_shape_and_refusals(void)
{
    cl_buf out = CL_BUF_INIT;
    uint8_t pt[100];
    memset(pt, 0x42, sizeof pt);
    CHECK_OK(cl_cms_recipient_encrypt(rsa_spki.data, rsa_spki.len, pt, sizeof pt, &out));
    /* BER with indefinite lengths, as KMS sends it */
    CHECK(out.len > 4 && out.data[0] == 0x30 && out.data[1] == 0x80);
    const uint8_t *p = out.data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)out.len);
    CHECK(cms && OBJ_obj2nid(CMS_get0_type(cms)) == NID_pkcs7_enveloped);
    STACK_OF(CMS_RecipientInfo) *ris = cms ? CMS_get0_RecipientInfos(cms) : NULL;
    CHECK(ris && sk_CMS_RecipientInfo_num(ris) == 1);
    if (ris && sk_CMS_RecipientInfo_num(ris) == 1) {
        CMS_RecipientInfo *ri = sk_CMS_RecipientInfo_value(ris, 0);
        CHECK(CMS_RecipientInfo_type(ri) == CMS_RECIPINFO_TRANS);
        ASN1_OCTET_STRING *keyid = NULL;
        CHECK(CMS_RecipientInfo_ktri_get0_signer_id(ri, &keyid, NULL, NULL) == 1 && keyid);
        uint8_t want[32];
        unsigned n = 0;
        EVP_Digest(rsa_spki.data, rsa_spki.len, want, &n, EVP_sha256(), NULL);
        CHECK(keyid && ASN1_STRING_length(keyid) == 32 && !memcmp(ASN1_STRING_get0_data(keyid), want, 32));
        X509_ALGOR *alg = NULL;
        CMS_RecipientInfo_ktri_get0_algs(ri, NULL, NULL, &alg);
        CHECK(alg && OBJ_obj2nid(alg->algorithm) == NID_rsaesOaep);
    }
    CMS_ContentInfo_free(cms);
    char *t = b64(out.data, out.len);
    cl_buf back = CL_BUF_INIT;
    CHECK(cms_open(t, &back) && back.len == sizeof pt && !memcmp(back.data, pt, sizeof pt));
    free(t);
    cl_buf_free(&back);
    cl_buf_free(&out);

    /* keys that are not RSA 2048+ */
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    EVP_PKEY *small = EVP_RSA_gen(1024);
    uint8_t *der = NULL;
    int len = i2d_PUBKEY(ec, &der);
    CHECK_ERR(cl_cms_recipient_encrypt(der, (size_t)len, pt, 1, &out), CL_EPARSE, "not an RSA key");
    OPENSSL_free(der);
    der = NULL;
    len = i2d_PUBKEY(small, &der);
    CHECK_ERR(cl_cms_recipient_encrypt(der, (size_t)len, pt, 1, &out), CL_EPARSE, "1024 bits");
    CHECK_ERR(cl_cms_recipient_encrypt(der, (size_t)len - 1, pt, 1, &out), CL_EPARSE, NULL);
    OPENSSL_free(der);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(small);
    cl_buf_free(&out);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cloister-kms-unit.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    rsa_key = EVP_RSA_gen(2048);
    uint8_t *der = NULL;
    int len = i2d_PUBKEY(rsa_key, &der);
    if (len > 0 && cl_buf_append(&rsa_spki, der, (size_t)len) < 0)
        return 1;
    OPENSSL_free(der);
    sim_normal = new_sim("sim", false, false);
    sim_debug = new_sim("sim-debug", true, false);
    sim_other = new_sim("sim-other", false, true); /* another image: another PCR0 */
    CHECK_OK(cl_verifier_new(false, &trust_sim));
    CHECK_OK(cl_verifier_add_root_pem_file(trust_sim, cl_nsm_sim_root_pem_path(sim_normal)));
    CHECK_OK(cl_verifier_add_root_pem_file(trust_sim, cl_nsm_sim_root_pem_path(sim_debug)));
    CHECK_OK(cl_verifier_add_root_pem_file(trust_sim, cl_nsm_sim_root_pem_path(sim_other)));
    CHECK_OK(cl_verifier_new(true, &trust_aws));

    RUN(sigv4_documented_example);
    RUN(sigv4_rejections);
    RUN(sigv4_authorization_parameters);
    RUN(policy_parse_errors);
    RUN(policy_evaluation);
    RUN(store_restart_and_master_key);
    RUN(cms_shape_and_refusals);
    RUN(handle_end_to_end);
    RUN(sigv4_retargeted);

    cl_nsm_sim_free(sim_normal);
    cl_nsm_sim_free(sim_debug);
    cl_nsm_sim_free(sim_other);
    cl_verifier_free(trust_sim);
    cl_verifier_free(trust_aws);
    EVP_PKEY_free(rsa_key);
    cl_buf_free(&rsa_spki);
    test_remove_tree(tmpdir);
    return test_summary();
}
