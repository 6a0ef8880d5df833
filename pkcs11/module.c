/* libcloister-pkcs11.so: a PKCS#11 v2.40 module whose keys live in the
 * enclave's key-holder (`cloister keyholder serve`).
 *
 * p11-kit server forks one process per client connection, so this module
 * keeps no token state of its own: it asks the key-holder over one unix
 * socket per process (CLOISTER_KEYHOLDER, default unix:/run/cloister/keyholder.sock),
 * kept open between calls and reopened only after a failure (then the
 * cached PIN logs in again).  What it keeps in memory is a cache of public
 * objects (keys' public halves and certificates) and per-session operation
 * state.  Hash-then-sign mechanisms are hashed here and signed raw by the
 * key-holder; no private key byte ever reaches this process.  Every
 * function not listed in the README returns CKR_FUNCTION_NOT_SUPPORTED. */
#include "cloister/core/address.h"
#include "cloister/core/buf.h"
#include "cloister/core/keyholder_proto.h"

#include <p11-kit/pkcs11.h>

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define DEFAULT_ADDRESS "unix:/run/cloister/keyholder.sock"
#define MAX_SESSIONS 1024
#define MAX_ATTRS 40
#define IO_TIMEOUT_S 10

/* ---- objects ------------------------------------------------------------------------ */

typedef struct attr {
    CK_ATTRIBUTE_TYPE type;
    uint8_t *value;
    CK_ULONG len;
} attr;

typedef struct object {
    CK_OBJECT_HANDLE handle;
    CK_OBJECT_CLASS klass;
    CK_KEY_TYPE key_type;
    bool is_private;
    size_t sig_len;    /* keys: signature size (EC r||s, RSA modulus bytes) */
    size_t rsa_bytes;  /* RSA modulus bytes */
    attr attrs[MAX_ATTRS];
    size_t nattrs;
} object;

typedef struct slot {
    bool present;
    char label[CL_KH_LABEL_MAX + 1];
    char serial[17];
    uint8_t flags;
    uint64_t generation;
    bool logged_in;
    uint8_t pin[CL_KH_PIN_MAX];
    size_t pin_len;
    object cur[CL_KH_MAX_OBJECTS], old[CL_KH_MAX_OBJECTS];
    size_t ncur, nold;
    uint64_t cur_generation;
    bool cur_valid;
} slot;

enum op_state { OP_NONE, OP_INIT, OP_UPDATE };

typedef struct session {
    bool used;
    CK_SLOT_ID slot;
    CK_FLAGS flags;
    /* find */
    bool finding;
    CK_OBJECT_HANDLE found[2 * CL_KH_MAX_OBJECTS];
    size_t nfound, pos;
    /* sign */
    int sign_state;
    CK_OBJECT_HANDLE sign_key;
    size_t sig_len;
    uint8_t op, hash, mgf, prehash;
    uint32_t salt;
    bool digest_info;
    EVP_MD_CTX *md;
    cl_buf acc;
    /* decrypt */
    bool decrypting;
    CK_OBJECT_HANDLE dec_key;
    uint8_t dec_op, dec_hash, dec_mgf;
    uint8_t dec_label[CL_KH_DATA_MAX];
    size_t dec_label_len;
    size_t dec_k;
} session;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static bool g_init;
static pid_t g_pid;
static int g_fd = -1;
static char g_addr[512];
static slot g_slots[CL_KH_MAX_TOKENS];
static session g_sessions[MAX_SESSIONS];

static void pad(CK_UTF8CHAR *dst, size_t n, const char *src)
{
    size_t l = strlen(src);
    memset(dst, ' ', n);
    memcpy(dst, src, l < n ? l : n);
}

static void object_clear(object *o)
{
    for (size_t i = 0; i < o->nattrs; i++)
        free(o->attrs[i].value);
    memset(o, 0, sizeof *o);
}

static void slot_objects_clear(slot *s)
{
    for (size_t i = 0; i < s->ncur; i++)
        object_clear(&s->cur[i]);
    for (size_t i = 0; i < s->nold; i++)
        object_clear(&s->old[i]);
    s->ncur = s->nold = 0;
    s->cur_valid = false;
}

static int add_attr(object *o, CK_ATTRIBUTE_TYPE type, const void *v, size_t len)
{
    if (o->nattrs == MAX_ATTRS)
        return -1;
    attr *a = &o->attrs[o->nattrs];
    a->value = malloc(len ? len : 1);
    if (!a->value)
        return -1;
    if (len)
        memcpy(a->value, v, len);
    a->len = len;
    a->type = type;
    o->nattrs++;
    return 0;
}

static int add_bool(object *o, CK_ATTRIBUTE_TYPE type, bool v)
{
    CK_BBOOL b = v ? CK_TRUE : CK_FALSE;
    return add_attr(o, type, &b, sizeof b);
}

static int add_ulong(object *o, CK_ATTRIBUTE_TYPE type, CK_ULONG v)
{
    return add_attr(o, type, &v, sizeof v);
}

static int add_bn(object *o, CK_ATTRIBUTE_TYPE type, EVP_PKEY *pkey, const char *param)
{
    BIGNUM *bn = NULL;
    if (!EVP_PKEY_get_bn_param(pkey, param, &bn))
        return -1;
    uint8_t buf[1024];
    int n = BN_num_bytes(bn);
    int rc = -1;
    if (n > 0 && n <= (int)sizeof buf && BN_bn2bin(bn, buf) == n)
        rc = add_attr(o, type, buf, (size_t)n);
    BN_free(bn);
    return rc;
}

static int add_der(object *o, CK_ATTRIBUTE_TYPE type, int len, uint8_t *der)
{
    if (len <= 0 || !der)
        return -1;
    int rc = add_attr(o, type, der, (size_t)len);
    OPENSSL_free(der);
    return rc;
}

/* Public key attributes for keys (private and public objects alike). */
static int add_public_parts(object *o, EVP_PKEY *pkey)
{
    if (o->key_type == CKK_RSA) {
        o->rsa_bytes = o->sig_len = (size_t)EVP_PKEY_get_size(pkey);
        if (add_bn(o, CKA_MODULUS, pkey, OSSL_PKEY_PARAM_RSA_N) < 0 ||
            add_bn(o, CKA_PUBLIC_EXPONENT, pkey, OSSL_PKEY_PARAM_RSA_E) < 0)
            return -1;
        if (!o->is_private && add_ulong(o, CKA_MODULUS_BITS, (CK_ULONG)EVP_PKEY_get_bits(pkey)) < 0)
            return -1;
        return 0;
    }
    o->sig_len = 2 * (((size_t)EVP_PKEY_get_bits(pkey) + 7) / 8);
    char group[64];
    size_t glen = 0;
    if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen))
        return -1;
    int nid = OBJ_sn2nid(group);
    if (nid == NID_undef)
        nid = OBJ_ln2nid(group);
    ASN1_OBJECT *oid = OBJ_nid2obj(nid);
    uint8_t *der = NULL;
    if (!oid || add_der(o, CKA_EC_PARAMS, i2d_ASN1_OBJECT(oid, &der), der) < 0)
        return -1;
    uint8_t point[200];
    size_t plen = 0;
    if (!EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, sizeof point, &plen))
        return -1;
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    if (!os || !ASN1_OCTET_STRING_set(os, point, (int)plen)) {
        ASN1_OCTET_STRING_free(os);
        return -1;
    }
    der = NULL;
    int n = i2d_ASN1_OCTET_STRING(os, &der);
    ASN1_OCTET_STRING_free(os);
    return add_der(o, CKA_EC_POINT, n, der);
}

/* Builds an object's attribute table from the key-holder's description.
 * subject: the certificate's subject DER (for the keys' CKA_SUBJECT). */
static int object_build(object *o, const cl_kh_object_info *in, cl_slice subject)
{
    memset(o, 0, sizeof *o);
    o->handle = in->handle;
    o->key_type = in->key_type == CL_KH_KEY_RSA ? CKK_RSA : CKK_EC;
    o->klass = in->klass == CL_KH_CLASS_PRIVATE_KEY  ? CKO_PRIVATE_KEY
               : in->klass == CL_KH_CLASS_PUBLIC_KEY ? CKO_PUBLIC_KEY
                                                     : CKO_CERTIFICATE;
    o->is_private = o->klass == CKO_PRIVATE_KEY;
    int rc = 0;
    rc |= add_ulong(o, CKA_CLASS, o->klass);
    rc |= add_bool(o, CKA_TOKEN, true);
    rc |= add_bool(o, CKA_PRIVATE, o->is_private);
    rc |= add_bool(o, CKA_MODIFIABLE, false);
    rc |= add_bool(o, CKA_COPYABLE, false);
    rc |= add_bool(o, CKA_DESTROYABLE, false);
    rc |= add_attr(o, CKA_LABEL, in->label.data, in->label.len);
    rc |= add_attr(o, CKA_ID, in->id.data, in->id.len);
    if (rc)
        return -1;
    if (o->klass == CKO_CERTIFICATE) {
        const uint8_t *p = in->der.data;
        X509 *x = d2i_X509(NULL, &p, (long)in->der.len);
        if (!x)
            return -1;
        uint8_t *der = NULL;
        rc |= add_ulong(o, CKA_CERTIFICATE_TYPE, CKC_X_509);
        rc |= add_bool(o, CKA_TRUSTED, false);
        rc |= add_ulong(o, CKA_CERTIFICATE_CATEGORY, 0);
        rc |= add_attr(o, CKA_VALUE, in->der.data, in->der.len);
        rc |= add_der(o, CKA_SUBJECT, i2d_X509_NAME(X509_get_subject_name(x), &der), der);
        der = NULL;
        rc |= add_der(o, CKA_ISSUER, i2d_X509_NAME(X509_get_issuer_name(x), &der), der);
        der = NULL;
        rc |= add_der(o, CKA_SERIAL_NUMBER, i2d_ASN1_INTEGER((ASN1_INTEGER *)X509_get0_serialNumber(x), &der), der);
        rc |= add_attr(o, CKA_URL, "", 0);
        X509_free(x);
        return rc ? -1 : 0;
    }
    const uint8_t *p = in->der.data;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)in->der.len);
    if (!pkey)
        return -1;
    bool rsa = o->key_type == CKK_RSA;
    rc |= add_ulong(o, CKA_KEY_TYPE, o->key_type);
    rc |= add_bool(o, CKA_LOCAL, false);
    rc |= add_bool(o, CKA_DERIVE, false);
    rc |= add_attr(o, CKA_START_DATE, "", 0);
    rc |= add_attr(o, CKA_END_DATE, "", 0);
    rc |= add_ulong(o, CKA_KEY_GEN_MECHANISM, CK_UNAVAILABLE_INFORMATION);
    rc |= add_attr(o, CKA_SUBJECT, subject.data, subject.len);
    rc |= add_attr(o, CKA_PUBLIC_KEY_INFO, in->der.data, in->der.len);
    if (o->is_private) {
        rc |= add_bool(o, CKA_SENSITIVE, true);
        rc |= add_bool(o, CKA_EXTRACTABLE, false);
        /* imported, not generated in the token: truthfully false */
        rc |= add_bool(o, CKA_ALWAYS_SENSITIVE, false);
        rc |= add_bool(o, CKA_NEVER_EXTRACTABLE, false);
        rc |= add_bool(o, CKA_SIGN, true);
        rc |= add_bool(o, CKA_SIGN_RECOVER, false);
        rc |= add_bool(o, CKA_DECRYPT, rsa);
        rc |= add_bool(o, CKA_UNWRAP, false);
        rc |= add_bool(o, CKA_ALWAYS_AUTHENTICATE, false);
        rc |= add_bool(o, CKA_WRAP_WITH_TRUSTED, false);
    } else {
        rc |= add_bool(o, CKA_VERIFY, true);
        rc |= add_bool(o, CKA_VERIFY_RECOVER, false);
        rc |= add_bool(o, CKA_ENCRYPT, rsa);
        rc |= add_bool(o, CKA_WRAP, false);
        rc |= add_bool(o, CKA_TRUSTED, false);
    }
    if (rc == 0)
        rc = add_public_parts(o, pkey);
    EVP_PKEY_free(pkey);
    return rc ? -1 : 0;
}

static bool attr_sensitive(const object *o, CK_ATTRIBUTE_TYPE t)
{
    if (!o->is_private)
        return false;
    switch (t) {
    case CKA_VALUE:
    case CKA_PRIVATE_EXPONENT:
    case CKA_PRIME_1:
    case CKA_PRIME_2:
    case CKA_EXPONENT_1:
    case CKA_EXPONENT_2:
    case CKA_COEFFICIENT:
        return true;
    default:
        return false;
    }
}

static const attr *attr_find(const object *o, CK_ATTRIBUTE_TYPE t)
{
    for (size_t i = 0; i < o->nattrs; i++)
        if (o->attrs[i].type == t)
            return &o->attrs[i];
    return NULL;
}

/* ---- the key-holder connection ----------------------------------------------------- */

static void disconnect(void)
{
    if (g_fd >= 0 && g_pid == getpid())
        close(g_fd);
    g_fd = -1;
}

static CK_RV map_status(uint32_t st)
{
    switch (st) {
    case 0: return CKR_OK;
    case CL_KH_ST_NO_SLOT: return CKR_TOKEN_NOT_PRESENT;
    case CL_KH_ST_NO_OBJECT: return CKR_KEY_HANDLE_INVALID;
    case CL_KH_ST_PIN_INCORRECT: return CKR_PIN_INCORRECT;
    case CL_KH_ST_PIN_LOCKED: return CKR_PIN_LOCKED;
    case CL_KH_ST_NOT_LOGGED_IN: return CKR_USER_NOT_LOGGED_IN;
    case CL_KH_ST_MECHANISM: return CKR_KEY_TYPE_INCONSISTENT;
    case CL_KH_ST_DATA_INVALID: return CKR_DATA_LEN_RANGE;
    case CL_KH_ST_DECRYPT_FAILED: return CKR_ENCRYPTED_DATA_INVALID;
    case CL_KH_ST_EXPIRED: return CKR_TOKEN_NOT_PRESENT;
    case CL_KH_ST_ALREADY_LOGGED_IN: return CKR_USER_ALREADY_LOGGED_IN;
    default: return CKR_DEVICE_ERROR;
    }
}

/* One request and its reply over the current connection. */
static int exchange(const cl_buf *req, cl_buf *reply, uint32_t *st, cl_cursor *payload)
{
    CL_TRY(cl_kh_write_frame(g_fd, req->data, req->len));
    CL_TRY(cl_kh_read_frame(g_fd, CL_KH_MAX_FRAME, reply, NULL));
    return cl_kh_reply_split(reply->data, reply->len, st, payload);
}

static int connect_kh(void)
{
    cl_address a;
    int fd;
    CL_TRY(cl_address_parse(g_addr, &a));
    CL_TRY(cl_address_connect(&a, &fd));
    struct timeval tv = {IO_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    g_fd = fd;
    g_pid = getpid();
    /* log in again where the application was logged in */
    for (uint32_t i = 0; i < CL_KH_MAX_TOKENS; i++) {
        slot *s = &g_slots[i];
        if (!s->logged_in)
            continue;
        cl_buf req = CL_BUF_INIT, reply = CL_BUF_INIT;
        cl_kh_request r = {.type = CL_KH_LOGIN, .slot = i, .pin = {s->pin, s->pin_len}};
        uint32_t st = 1;
        cl_cursor pl;
        int rc = cl_kh_request_encode(&req, &r);
        if (rc == 0)
            rc = exchange(&req, &reply, &st, &pl);
        cl_buf_free(&req);
        cl_buf_free(&reply);
        if (rc < 0) {
            disconnect();
            return rc;
        }
        if (st != 0 && st != CL_KH_ST_ALREADY_LOGGED_IN) {
            s->logged_in = false;
            cl_wipe(s->pin, sizeof s->pin);
            s->pin_len = 0;
        }
    }
    return CL_OK;
}

/* Sends r and reads the reply (owned by *reply).  One retry on a fresh
 * connection when the kept one turns out broken. */
static CK_RV kh_call(const cl_kh_request *r, cl_buf *reply, cl_cursor *payload)
{
    cl_buf req = CL_BUF_INIT;
    if (cl_kh_request_encode(&req, r) < 0) {
        cl_buf_free(&req);
        return CKR_HOST_MEMORY;
    }
    CK_RV rv = CKR_DEVICE_ERROR;
    if (g_pid != getpid())
        g_fd = -1; /* inherited across fork: not ours to use */
    for (int attempt = 0; attempt < 2; attempt++) {
        bool fresh = false;
        if (g_fd < 0) {
            if (connect_kh() < 0)
                break;
            fresh = true;
        }
        uint32_t st;
        if (exchange(&req, reply, &st, payload) < 0) {
            disconnect();
            if (fresh)
                break;
            continue;
        }
        rv = map_status(st);
        break;
    }
    cl_buf_free(&req);
    return rv;
}

/* Refreshes the slot list from the key-holder. */
static CK_RV refresh_slots(void)
{
    cl_buf reply = CL_BUF_INIT;
    cl_cursor pl;
    cl_kh_request r = {.type = CL_KH_LIST_TOKENS};
    CK_RV rv = kh_call(&r, &reply, &pl);
    if (rv == CKR_OK) {
        cl_kh_token_info t[CL_KH_MAX_TOKENS];
        size_t n = 0;
        if (cl_kh_decode_tokens(&pl, t, CL_KH_MAX_TOKENS, &n) < 0) {
            rv = CKR_DEVICE_ERROR;
        } else {
            bool seen[CL_KH_MAX_TOKENS] = {0};
            for (size_t i = 0; i < n; i++) {
                if (t[i].slot >= CL_KH_MAX_TOKENS)
                    continue;
                slot *s = &g_slots[t[i].slot];
                char label[CL_KH_LABEL_MAX + 1];
                snprintf(label, sizeof label, "%.*s", (int)t[i].label.len, (const char *)t[i].label.data);
                if (s->present && strcmp(s->label, label)) {
                    /* a different token in the same slot */
                    slot_objects_clear(s);
                    s->logged_in = false;
                }
                s->present = true;
                seen[t[i].slot] = true;
                snprintf(s->label, sizeof s->label, "%s", label);
                snprintf(s->serial, sizeof s->serial, "%.*s", (int)t[i].serial.len, (const char *)t[i].serial.data);
                s->flags = t[i].flags;
                s->generation = t[i].generation;
            }
            for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++)
                if (!seen[i] && g_slots[i].present) {
                    g_slots[i].present = false;
                    slot_objects_clear(&g_slots[i]);
                }
        }
    }
    cl_buf_free(&reply);
    return rv;
}

/* Refreshes a slot's objects; the previous generation's stay findable by
 * handle so that operations started before a rotation can finish. */
static CK_RV refresh_objects(CK_SLOT_ID id)
{
    slot *s = &g_slots[id];
    cl_buf reply = CL_BUF_INIT;
    cl_cursor pl;
    cl_kh_request r = {.type = CL_KH_LIST_OBJECTS, .slot = (uint32_t)id};
    CK_RV rv = kh_call(&r, &reply, &pl);
    if (rv != CKR_OK)
        goto out;
    cl_kh_object_info in[CL_KH_MAX_OBJECTS];
    size_t n = 0;
    if (cl_kh_decode_objects(&pl, in, CL_KH_MAX_OBJECTS, &n) < 0) {
        rv = CKR_DEVICE_ERROR;
        goto out;
    }
    bool same = s->cur_valid && s->ncur == n;
    for (size_t i = 0; same && i < n; i++)
        same = s->cur[i].handle == in[i].handle;
    if (same)
        goto out;
    /* the certificate's subject, for the keys' CKA_SUBJECT */
    uint8_t *subj = NULL;
    int subj_len = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i].klass != CL_KH_CLASS_CERTIFICATE || subj)
            continue;
        const uint8_t *p = in[i].der.data;
        X509 *x = d2i_X509(NULL, &p, (long)in[i].der.len);
        if (x)
            subj_len = i2d_X509_NAME(X509_get_subject_name(x), &subj);
        X509_free(x);
    }
    object fresh[CL_KH_MAX_OBJECTS];
    size_t built = 0;
    for (; built < n; built++) {
        if (object_build(&fresh[built], &in[built], (cl_slice){subj, subj_len > 0 ? (size_t)subj_len : 0}) < 0) {
            object_clear(&fresh[built]);
            break;
        }
    }
    OPENSSL_free(subj);
    if (built < n) {
        for (size_t i = 0; i < built; i++)
            object_clear(&fresh[i]);
        ERR_clear_error();
        rv = CKR_DEVICE_ERROR;
        goto out;
    }
    for (size_t i = 0; i < s->nold; i++)
        object_clear(&s->old[i]);
    memcpy(s->old, s->cur, sizeof s->cur);
    s->nold = s->ncur;
    memcpy(s->cur, fresh, sizeof fresh);
    s->ncur = n;
    s->cur_valid = true;
out:
    cl_buf_free(&reply);
    return rv;
}

/* Asks the key-holder for one object by handle (it may belong to the
 * previous key generation, which listings no longer show) and keeps it
 * with the old objects. */
static object *fetch_object(CK_SLOT_ID id, CK_OBJECT_HANDLE h)
{
    slot *s = &g_slots[id];
    if (h == 0 || h > UINT32_MAX)
        return NULL;
    cl_buf reply = CL_BUF_INIT;
    cl_cursor pl;
    cl_kh_request r = {.type = CL_KH_GET_OBJECT, .slot = (uint32_t)id, .handle = (uint32_t)h};
    object *o = NULL;
    cl_kh_object_info in[1];
    size_t n = 0;
    if (kh_call(&r, &reply, &pl) != CKR_OK || cl_kh_decode_objects(&pl, in, 1, &n) < 0 || n != 1 ||
        in[0].handle != h)
        goto out;
    if (s->nold == CL_KH_MAX_OBJECTS) {
        object_clear(&s->old[0]);
        memmove(&s->old[0], &s->old[1], (CL_KH_MAX_OBJECTS - 1) * sizeof s->old[0]);
        s->nold--;
    }
    o = &s->old[s->nold];
    if (object_build(o, &in[0], (cl_slice){NULL, 0}) < 0) {
        object_clear(o);
        ERR_clear_error();
        o = NULL;
        goto out;
    }
    s->nold++;
out:
    cl_buf_free(&reply);
    return o;
}

static object *find_object(CK_SLOT_ID id, CK_OBJECT_HANDLE h, bool logged_in)
{
    slot *s = &g_slots[id];
    object *o = NULL;
    for (int pass = 0; pass < 3 && !o; pass++) {
        for (size_t i = 0; i < s->ncur && !o; i++)
            if (s->cur[i].handle == h)
                o = &s->cur[i];
        for (size_t i = 0; i < s->nold && !o; i++)
            if (s->old[i].handle == h)
                o = &s->old[i];
        if (o)
            break;
        if (pass == 0 && refresh_objects(id) != CKR_OK)
            return NULL;
        if (pass == 1)
            o = fetch_object(id, h);
    }
    return o && o->is_private && !logged_in ? NULL : o;
}

/* ---- helpers ------------------------------------------------------------------------- */

#define LOCK_INIT()                                                                                          \
    pthread_mutex_lock(&g_lock);                                                                             \
    if (!g_init) {                                                                                           \
        pthread_mutex_unlock(&g_lock);                                                                       \
        return CKR_CRYPTOKI_NOT_INITIALIZED;                                                                 \
    }

#define RETURN(rv)                                                                                           \
    do {                                                                                                     \
        CK_RV rv_ = (rv);                                                                                    \
        pthread_mutex_unlock(&g_lock);                                                                       \
        return rv_;                                                                                          \
    } while (0)

static session *get_session(CK_SESSION_HANDLE h)
{
    if (h == 0 || h > MAX_SESSIONS || !g_sessions[h - 1].used)
        return NULL;
    return &g_sessions[h - 1];
}

static void sign_end(session *s)
{
    EVP_MD_CTX_free(s->md);
    s->md = NULL;
    cl_buf_free(&s->acc);
    s->sign_state = OP_NONE;
}

static void session_close(session *s)
{
    sign_end(s);
    cl_wipe(s, sizeof *s);
}

static bool slot_valid(CK_SLOT_ID id)
{
    return id < CL_KH_MAX_TOKENS && g_slots[id].present;
}

static uint8_t kh_hash_of_ckm(CK_MECHANISM_TYPE m)
{
    switch (m) {
    case CKM_SHA_1: return CL_KH_HASH_SHA1;
    case CKM_SHA224: return CL_KH_HASH_SHA224;
    case CKM_SHA256: return CL_KH_HASH_SHA256;
    case CKM_SHA384: return CL_KH_HASH_SHA384;
    case CKM_SHA512: return CL_KH_HASH_SHA512;
    default: return 0;
    }
}

static uint8_t kh_hash_of_mgf(CK_RSA_PKCS_MGF_TYPE m)
{
    switch (m) {
    case CKG_MGF1_SHA1: return CL_KH_HASH_SHA1;
    case CKG_MGF1_SHA224: return CL_KH_HASH_SHA224;
    case CKG_MGF1_SHA256: return CL_KH_HASH_SHA256;
    case CKG_MGF1_SHA384: return CL_KH_HASH_SHA384;
    case CKG_MGF1_SHA512: return CL_KH_HASH_SHA512;
    default: return 0;
    }
}

static const EVP_MD *md_of(uint8_t h)
{
    switch (h) {
    case CL_KH_HASH_SHA1: return EVP_sha1();
    case CL_KH_HASH_SHA224: return EVP_sha224();
    case CL_KH_HASH_SHA256: return EVP_sha256();
    case CL_KH_HASH_SHA384: return EVP_sha384();
    case CL_KH_HASH_SHA512: return EVP_sha512();
    default: return NULL;
    }
}

/* DER DigestInfo prefixes (RFC 8017, section 9.2, note 1). */
static const uint8_t *digest_info_prefix(uint8_t h, size_t *len)
{
    static const uint8_t sha1[] = {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00,
                                   0x04, 0x14};
    static const uint8_t sha224[] = {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c};
    static const uint8_t sha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    static const uint8_t sha384[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
    static const uint8_t sha512[] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};
    switch (h) {
    case CL_KH_HASH_SHA1: *len = sizeof sha1; return sha1;
    case CL_KH_HASH_SHA224: *len = sizeof sha224; return sha224;
    case CL_KH_HASH_SHA256: *len = sizeof sha256; return sha256;
    case CL_KH_HASH_SHA384: *len = sizeof sha384; return sha384;
    case CL_KH_HASH_SHA512: *len = sizeof sha512; return sha512;
    default: *len = 0; return NULL;
    }
}

/* ---- mechanisms ---------------------------------------------------------------------- */

typedef struct mech {
    CK_MECHANISM_TYPE type;
    CK_KEY_TYPE key_type;
    uint8_t op;
    uint8_t prehash; /* hashed by the module first */
    bool pss;        /* takes CK_RSA_PKCS_PSS_PARAMS */
    CK_FLAGS flags;
} mech;

static const mech MECHS[] = {
    {CKM_ECDSA, CKK_EC, CL_KH_OP_ECDSA, 0, false, CKF_SIGN},
    {CKM_ECDSA_SHA256, CKK_EC, CL_KH_OP_ECDSA, CL_KH_HASH_SHA256, false, CKF_SIGN},
    {CKM_ECDSA_SHA384, CKK_EC, CL_KH_OP_ECDSA, CL_KH_HASH_SHA384, false, CKF_SIGN},
    {CKM_ECDSA_SHA512, CKK_EC, CL_KH_OP_ECDSA, CL_KH_HASH_SHA512, false, CKF_SIGN},
    {CKM_RSA_PKCS, CKK_RSA, CL_KH_OP_RSA_PKCS, 0, false, CKF_SIGN | CKF_DECRYPT},
    {CKM_RSA_X_509, CKK_RSA, CL_KH_OP_RSA_X509, 0, false, CKF_SIGN | CKF_DECRYPT},
    {CKM_RSA_PKCS_PSS, CKK_RSA, CL_KH_OP_RSA_PSS, 0, true, CKF_SIGN},
    {CKM_RSA_PKCS_OAEP, CKK_RSA, CL_KH_OP_RSA_OAEP, 0, false, CKF_DECRYPT},
    {CKM_SHA256_RSA_PKCS, CKK_RSA, CL_KH_OP_RSA_PKCS, CL_KH_HASH_SHA256, false, CKF_SIGN},
    {CKM_SHA384_RSA_PKCS, CKK_RSA, CL_KH_OP_RSA_PKCS, CL_KH_HASH_SHA384, false, CKF_SIGN},
    {CKM_SHA512_RSA_PKCS, CKK_RSA, CL_KH_OP_RSA_PKCS, CL_KH_HASH_SHA512, false, CKF_SIGN},
    {CKM_SHA256_RSA_PKCS_PSS, CKK_RSA, CL_KH_OP_RSA_PSS, CL_KH_HASH_SHA256, true, CKF_SIGN},
    {CKM_SHA384_RSA_PKCS_PSS, CKK_RSA, CL_KH_OP_RSA_PSS, CL_KH_HASH_SHA384, true, CKF_SIGN},
    {CKM_SHA512_RSA_PKCS_PSS, CKK_RSA, CL_KH_OP_RSA_PSS, CL_KH_HASH_SHA512, true, CKF_SIGN},
};
#define NMECHS (sizeof MECHS / sizeof MECHS[0])

static const mech *mech_find(CK_MECHANISM_TYPE t)
{
    for (size_t i = 0; i < NMECHS; i++)
        if (MECHS[i].type == t)
            return &MECHS[i];
    return NULL;
}

/* ---- general ------------------------------------------------------------------------- */

static CK_FUNCTION_LIST function_list;

EXPORT CK_RV C_Initialize(CK_VOID_PTR init_args)
{
    if (init_args) {
        CK_C_INITIALIZE_ARGS *a = init_args;
        if (a->pReserved)
            return CKR_ARGUMENTS_BAD;
        int given = !!a->CreateMutex + !!a->DestroyMutex + !!a->LockMutex + !!a->UnlockMutex;
        if (given != 0 && given != 4)
            return CKR_ARGUMENTS_BAD;
        /* we lock with pthreads: fine with OS locking, impossible with only
         * the application's functions */
        if (given == 4 && !(a->flags & CKF_OS_LOCKING_OK))
            return CKR_CANT_LOCK;
    }
    pthread_mutex_lock(&g_lock);
    if (g_init && g_pid == getpid()) {
        pthread_mutex_unlock(&g_lock);
        return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    }
    const char *addr = getenv("CLOISTER_KEYHOLDER");
    snprintf(g_addr, sizeof g_addr, "%s", addr && *addr ? addr : DEFAULT_ADDRESS);
    g_fd = -1;
    g_pid = getpid();
    memset(g_slots, 0, sizeof g_slots);
    memset(g_sessions, 0, sizeof g_sessions);
    g_init = true;
    pthread_mutex_unlock(&g_lock);
    return CKR_OK;
}

EXPORT CK_RV C_Finalize(CK_VOID_PTR reserved)
{
    if (reserved)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    for (size_t i = 0; i < MAX_SESSIONS; i++)
        if (g_sessions[i].used)
            session_close(&g_sessions[i]);
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++) {
        slot_objects_clear(&g_slots[i]);
        cl_wipe(&g_slots[i], sizeof g_slots[i]);
    }
    disconnect();
    g_init = false;
    RETURN(CKR_OK);
}

EXPORT CK_RV C_GetInfo(CK_INFO_PTR info)
{
    if (!info)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    memset(info, 0, sizeof *info);
    info->cryptokiVersion.major = 2;
    info->cryptokiVersion.minor = 40;
    pad(info->manufacturerID, sizeof info->manufacturerID, "cloister");
    pad(info->libraryDescription, sizeof info->libraryDescription, "cloister enclave key-holder");
    info->libraryVersion.major = 0;
    info->libraryVersion.minor = 1;
    RETURN(CKR_OK);
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (!list)
        return CKR_ARGUMENTS_BAD;
    *list = &function_list;
    return CKR_OK;
}

/* PKCS#11 3.0's interface discovery, offering the 2.40 function list. */
typedef struct ck_interface {
    CK_CHAR *pInterfaceName;
    CK_VOID_PTR pFunctionList;
    CK_FLAGS flags;
} ck_interface;

static ck_interface interface = {(CK_CHAR *)"PKCS 11", &function_list, 0};

EXPORT CK_RV C_GetInterfaceList(ck_interface *list, CK_ULONG *count)
{
    if (!count)
        return CKR_ARGUMENTS_BAD;
    if (!list) {
        *count = 1;
        return CKR_OK;
    }
    if (*count < 1) {
        *count = 1;
        return CKR_BUFFER_TOO_SMALL;
    }
    list[0] = interface;
    *count = 1;
    return CKR_OK;
}

EXPORT CK_RV C_GetInterface(CK_UTF8CHAR *name, CK_VERSION *version, ck_interface **out, CK_FLAGS flags)
{
    if (!out)
        return CKR_ARGUMENTS_BAD;
    if (name && strcmp((const char *)name, "PKCS 11"))
        return CKR_ARGUMENTS_BAD;
    if (version && (version->major != 2 || version->minor != 40))
        return CKR_ARGUMENTS_BAD;
    if (flags & ~interface.flags)
        return CKR_ARGUMENTS_BAD;
    *out = &interface;
    return CKR_OK;
}

/* ---- slots and tokens ------------------------------------------------------------------ */

EXPORT CK_RV C_GetSlotList(CK_BBOOL token_present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
    (void)token_present; /* a slot exists while its token does */
    if (!count)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    CK_RV rv = refresh_slots();
    if (rv != CKR_OK)
        RETURN(rv);
    CK_ULONG n = 0;
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++)
        n += g_slots[i].present;
    if (!list) {
        *count = n;
        RETURN(CKR_OK);
    }
    if (*count < n) {
        *count = n;
        RETURN(CKR_BUFFER_TOO_SMALL);
    }
    CK_ULONG k = 0;
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++)
        if (g_slots[i].present)
            list[k++] = i;
    *count = n;
    RETURN(CKR_OK);
}

EXPORT CK_RV C_GetSlotInfo(CK_SLOT_ID id, CK_SLOT_INFO_PTR info)
{
    if (!info)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    if (!slot_valid(id))
        RETURN(CKR_SLOT_ID_INVALID);
    memset(info, 0, sizeof *info);
    char desc[64];
    snprintf(desc, sizeof desc, "cloister key-holder slot %lu", (unsigned long)id);
    pad(info->slotDescription, sizeof info->slotDescription, desc);
    pad(info->manufacturerID, sizeof info->manufacturerID, "cloister");
    info->flags = CKF_TOKEN_PRESENT;
    info->hardwareVersion.major = 0;
    info->firmwareVersion.major = 0;
    RETURN(CKR_OK);
}

EXPORT CK_RV C_GetTokenInfo(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info)
{
    if (!info)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    CK_RV rv = refresh_slots();
    if (rv != CKR_OK)
        RETURN(rv);
    if (id >= CL_KH_MAX_TOKENS)
        RETURN(CKR_SLOT_ID_INVALID);
    slot *s = &g_slots[id];
    if (!s->present)
        RETURN(CKR_SLOT_ID_INVALID);
    memset(info, 0, sizeof *info);
    pad(info->label, sizeof info->label, s->label);
    pad(info->manufacturerID, sizeof info->manufacturerID, "cloister");
    pad(info->model, sizeof info->model, "enclave token");
    pad(info->serialNumber, sizeof info->serialNumber, s->serial);
    info->flags = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
    if (s->flags & CL_KH_TOKEN_LOCKED)
        info->flags |= CKF_USER_PIN_LOCKED;
    if (s->flags & CL_KH_TOKEN_COUNT_LOW)
        info->flags |= CKF_USER_PIN_COUNT_LOW;
    if (s->flags & CL_KH_TOKEN_FINAL_TRY)
        info->flags |= CKF_USER_PIN_FINAL_TRY;
    CK_ULONG sessions = 0, rw = 0;
    for (size_t i = 0; i < MAX_SESSIONS; i++)
        if (g_sessions[i].used && g_sessions[i].slot == id) {
            sessions++;
            rw += !!(g_sessions[i].flags & CKF_RW_SESSION);
        }
    info->ulMaxSessionCount = MAX_SESSIONS;
    info->ulSessionCount = sessions;
    info->ulMaxRwSessionCount = MAX_SESSIONS;
    info->ulRwSessionCount = rw;
    info->ulMaxPinLen = CL_KH_PIN_MAX;
    info->ulMinPinLen = CL_KH_PIN_MIN;
    info->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
    memset(info->utcTime, ' ', sizeof info->utcTime);
    RETURN(CKR_OK);
}

EXPORT CK_RV C_GetMechanismList(CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
    if (!count)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    if (!slot_valid(id))
        RETURN(CKR_SLOT_ID_INVALID);
    if (!list) {
        *count = NMECHS;
        RETURN(CKR_OK);
    }
    if (*count < NMECHS) {
        *count = NMECHS;
        RETURN(CKR_BUFFER_TOO_SMALL);
    }
    for (size_t i = 0; i < NMECHS; i++)
        list[i] = MECHS[i].type;
    *count = NMECHS;
    RETURN(CKR_OK);
}

EXPORT CK_RV C_GetMechanismInfo(CK_SLOT_ID id, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info)
{
    if (!info)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    if (!slot_valid(id))
        RETURN(CKR_SLOT_ID_INVALID);
    const mech *m = mech_find(type);
    if (!m)
        RETURN(CKR_MECHANISM_INVALID);
    info->flags = m->flags;
    if (m->key_type == CKK_EC) {
        info->ulMinKeySize = 256;
        info->ulMaxKeySize = 521;
        info->flags |= CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
    } else {
        info->ulMinKeySize = 2048;
        info->ulMaxKeySize = 8192;
    }
    RETURN(CKR_OK);
}

/* ---- sessions and login ------------------------------------------------------------------ */

EXPORT CK_RV C_OpenSession(CK_SLOT_ID id, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                           CK_SESSION_HANDLE_PTR out)
{
    (void)app;
    (void)notify; /* no callbacks are ever made */
    if (!out)
        return CKR_ARGUMENTS_BAD;
    if (!(flags & CKF_SERIAL_SESSION))
        return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
    LOCK_INIT();
    if (!slot_valid(id))
        RETURN(CKR_SLOT_ID_INVALID);
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        if (!g_sessions[i].used) {
            memset(&g_sessions[i], 0, sizeof g_sessions[i]);
            g_sessions[i].used = true;
            g_sessions[i].slot = id;
            g_sessions[i].flags = flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION);
            *out = i + 1;
            RETURN(CKR_OK);
        }
    }
    RETURN(CKR_SESSION_COUNT);
}

static void logout_local(CK_SLOT_ID id)
{
    slot *s = &g_slots[id];
    s->logged_in = false;
    cl_wipe(s->pin, sizeof s->pin);
    s->pin_len = 0;
}

EXPORT CK_RV C_CloseSession(CK_SESSION_HANDLE h)
{
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    CK_SLOT_ID id = s->slot;
    session_close(s);
    /* the login ends with the application's last session on the token */
    bool any = false;
    for (size_t i = 0; i < MAX_SESSIONS; i++)
        any |= g_sessions[i].used && g_sessions[i].slot == id;
    if (!any && g_slots[id].logged_in) {
        cl_buf reply = CL_BUF_INIT;
        cl_cursor pl;
        cl_kh_request r = {.type = CL_KH_LOGOUT, .slot = (uint32_t)id};
        (void)kh_call(&r, &reply, &pl);
        cl_buf_free(&reply);
        logout_local(id);
    }
    RETURN(CKR_OK);
}

EXPORT CK_RV C_CloseAllSessions(CK_SLOT_ID id)
{
    LOCK_INIT();
    if (id >= CL_KH_MAX_TOKENS)
        RETURN(CKR_SLOT_ID_INVALID);
    for (size_t i = 0; i < MAX_SESSIONS; i++)
        if (g_sessions[i].used && g_sessions[i].slot == id)
            session_close(&g_sessions[i]);
    if (g_slots[id].logged_in) {
        cl_buf reply = CL_BUF_INIT;
        cl_cursor pl;
        cl_kh_request r = {.type = CL_KH_LOGOUT, .slot = (uint32_t)id};
        (void)kh_call(&r, &reply, &pl);
        cl_buf_free(&reply);
        logout_local(id);
    }
    RETURN(CKR_OK);
}

EXPORT CK_RV C_GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info)
{
    if (!info)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    bool rw = s->flags & CKF_RW_SESSION, user = g_slots[s->slot].logged_in;
    info->slotID = s->slot;
    info->flags = s->flags;
    info->ulDeviceError = 0;
    info->state = rw ? (user ? CKS_RW_USER_FUNCTIONS : CKS_RW_PUBLIC_SESSION)
                     : (user ? CKS_RO_USER_FUNCTIONS : CKS_RO_PUBLIC_SESSION);
    RETURN(CKR_OK);
}

EXPORT CK_RV C_Login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len)
{
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (user == CKU_SO || user == CKU_CONTEXT_SPECIFIC)
        RETURN(user == CKU_SO ? CKR_USER_TYPE_INVALID : CKR_OPERATION_NOT_INITIALIZED);
    if (user != CKU_USER)
        RETURN(CKR_USER_TYPE_INVALID);
    if (!pin)
        RETURN(CKR_ARGUMENTS_BAD); /* no protected authentication path */
    slot *sl = &g_slots[s->slot];
    if (sl->logged_in)
        RETURN(CKR_USER_ALREADY_LOGGED_IN);
    if (pin_len < CL_KH_PIN_MIN || pin_len > CL_KH_PIN_MAX)
        RETURN(CKR_PIN_LEN_RANGE);
    cl_buf reply = CL_BUF_INIT;
    cl_cursor pl;
    cl_kh_request r = {.type = CL_KH_LOGIN, .slot = (uint32_t)s->slot, .pin = {pin, pin_len}};
    CK_RV rv = kh_call(&r, &reply, &pl);
    cl_buf_free(&reply);
    if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN) {
        sl->logged_in = true;
        memcpy(sl->pin, pin, pin_len);
        sl->pin_len = pin_len;
        rv = CKR_OK;
    }
    RETURN(rv);
}

EXPORT CK_RV C_Logout(CK_SESSION_HANDLE h)
{
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (!g_slots[s->slot].logged_in)
        RETURN(CKR_USER_NOT_LOGGED_IN);
    cl_buf reply = CL_BUF_INIT;
    cl_cursor pl;
    cl_kh_request r = {.type = CL_KH_LOGOUT, .slot = (uint32_t)s->slot};
    CK_RV rv = kh_call(&r, &reply, &pl);
    cl_buf_free(&reply);
    logout_local(s->slot);
    for (size_t i = 0; i < MAX_SESSIONS; i++)
        if (g_sessions[i].used && g_sessions[i].slot == s->slot) {
            sign_end(&g_sessions[i]);
            g_sessions[i].decrypting = false;
        }
    RETURN(rv == CKR_DEVICE_ERROR ? CKR_OK : rv); /* a lost connection logs out too */
}

/* ---- objects -------------------------------------------------------------------------- */

EXPORT CK_RV C_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tmpl,
                                 CK_ULONG count)
{
    if (!tmpl && count)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    object *o = find_object(s->slot, obj, g_slots[s->slot].logged_in);
    if (!o)
        RETURN(CKR_OBJECT_HANDLE_INVALID);
    CK_RV rv = CKR_OK;
    for (CK_ULONG i = 0; i < count; i++) {
        CK_ATTRIBUTE *t = &tmpl[i];
        if (attr_sensitive(o, t->type)) {
            t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = CKR_ATTRIBUTE_SENSITIVE;
            continue;
        }
        const attr *a = attr_find(o, t->type);
        if (!a) {
            t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            if (rv == CKR_OK)
                rv = CKR_ATTRIBUTE_TYPE_INVALID;
            continue;
        }
        if (!t->pValue) {
            t->ulValueLen = a->len;
        } else if (t->ulValueLen < a->len) {
            t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            if (rv == CKR_OK)
                rv = CKR_BUFFER_TOO_SMALL;
        } else {
            memcpy(t->pValue, a->value, a->len);
            t->ulValueLen = a->len;
        }
    }
    RETURN(rv);
}

static bool matches(const object *o, const CK_ATTRIBUTE *tmpl, CK_ULONG count)
{
    for (CK_ULONG i = 0; i < count; i++) {
        const attr *a = attr_find(o, tmpl[i].type);
        if (!a || a->len != tmpl[i].ulValueLen || (a->len && (!tmpl[i].pValue ||
                                                              memcmp(a->value, tmpl[i].pValue, a->len))))
            return false;
    }
    return true;
}

EXPORT CK_RV C_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count)
{
    if (!tmpl && count)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (s->finding)
        RETURN(CKR_OPERATION_ACTIVE);
    CK_RV rv = refresh_objects(s->slot);
    if (rv != CKR_OK)
        RETURN(rv);
    slot *sl = &g_slots[s->slot];
    s->nfound = s->pos = 0;
    for (size_t i = 0; i < sl->ncur; i++) {
        const object *o = &sl->cur[i];
        if (o->is_private && !sl->logged_in)
            continue;
        if (matches(o, tmpl, count))
            s->found[s->nfound++] = o->handle;
    }
    s->finding = true;
    RETURN(CKR_OK);
}

EXPORT CK_RV C_FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count)
{
    if (!out || !count)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (!s->finding)
        RETURN(CKR_OPERATION_NOT_INITIALIZED);
    CK_ULONG n = 0;
    while (n < max && s->pos < s->nfound)
        out[n++] = s->found[s->pos++];
    *count = n;
    RETURN(CKR_OK);
}

EXPORT CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE h)
{
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (!s->finding)
        RETURN(CKR_OPERATION_NOT_INITIALIZED);
    s->finding = false;
    RETURN(CKR_OK);
}

EXPORT CK_RV C_GetObjectSize(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ULONG_PTR size)
{
    (void)h;
    (void)obj;
    (void)size;
    return CKR_FUNCTION_NOT_SUPPORTED;
}

/* ---- signing ------------------------------------------------------------------------- */

/* What C_SignInit and C_DecryptInit both require, with g_lock held: a
 * logged-in session, a mechanism of this module that can do `need`, and a
 * private key of that mechanism's type. */
static CK_RV key_operation(const session *s, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key, CK_FLAGS need,
                           const mech **m_out, object **o_out)
{
    if (!g_slots[s->slot].logged_in)
        return CKR_USER_NOT_LOGGED_IN;
    const mech *m = mech_find(mechanism->mechanism);
    if (!m || !(m->flags & need))
        return CKR_MECHANISM_INVALID;
    object *o = find_object(s->slot, key, true);
    if (!o)
        return CKR_KEY_HANDLE_INVALID;
    if (o->klass != CKO_PRIVATE_KEY)
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    if (o->key_type != m->key_type)
        return CKR_KEY_TYPE_INCONSISTENT;
    *m_out = m;
    *o_out = o;
    return CKR_OK;
}

EXPORT CK_RV C_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key)
{
    if (!mechanism)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (s->sign_state != OP_NONE)
        RETURN(CKR_OPERATION_ACTIVE);
    const mech *m;
    object *o;
    CK_RV rv = key_operation(s, mechanism, key, CKF_SIGN, &m, &o);
    if (rv != CKR_OK)
        RETURN(rv);
    s->op = m->op;
    s->prehash = m->prehash;
    s->hash = s->mgf = 0;
    s->salt = 0;
    s->digest_info = m->op == CL_KH_OP_RSA_PKCS && m->prehash;
    if (m->pss) {
        if (!mechanism->pParameter || mechanism->ulParameterLen != sizeof(CK_RSA_PKCS_PSS_PARAMS))
            RETURN(CKR_MECHANISM_PARAM_INVALID);
        const CK_RSA_PKCS_PSS_PARAMS *p = mechanism->pParameter;
        s->hash = kh_hash_of_ckm(p->hashAlg);
        s->mgf = kh_hash_of_mgf(p->mgf);
        if (!s->hash || !s->mgf || (m->prehash && s->hash != m->prehash) || p->sLen > o->rsa_bytes)
            RETURN(CKR_MECHANISM_PARAM_INVALID);
        s->salt = (uint32_t)p->sLen;
    } else if (mechanism->ulParameterLen != 0) {
        RETURN(CKR_MECHANISM_PARAM_INVALID);
    }
    if (m->prehash) {
        s->md = EVP_MD_CTX_new();
        if (!s->md || !EVP_DigestInit_ex(s->md, md_of(m->prehash), NULL)) {
            sign_end(s);
            RETURN(CKR_HOST_MEMORY);
        }
    }
    s->sign_key = key;
    s->sig_len = o->sig_len;
    s->sign_state = OP_INIT;
    RETURN(CKR_OK);
}

/* Signs the accumulated input (or digest) and ends the operation, unless
 * only the length was asked for or the buffer is too small. */
static CK_RV sign_finish(session *s, const uint8_t *data, size_t len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    if (!sig) {
        *sig_len = s->sig_len;
        return CKR_OK;
    }
    if (*sig_len < s->sig_len) {
        *sig_len = s->sig_len;
        return CKR_BUFFER_TOO_SMALL;
    }
    uint8_t in[CL_KH_DATA_MAX];
    size_t in_len = 0;
    CK_RV rv = CKR_OK;
    if (s->prehash) {
        uint8_t d[EVP_MAX_MD_SIZE];
        unsigned dl = 0;
        if (data && !EVP_DigestUpdate(s->md, data, len))
            rv = CKR_FUNCTION_FAILED;
        if (rv == CKR_OK && !EVP_DigestFinal_ex(s->md, d, &dl))
            rv = CKR_FUNCTION_FAILED;
        if (rv == CKR_OK && s->digest_info) {
            size_t pl;
            const uint8_t *prefix = digest_info_prefix(s->prehash, &pl);
            memcpy(in, prefix, pl);
            in_len = pl;
        }
        if (rv == CKR_OK) {
            memcpy(in + in_len, d, dl);
            in_len += dl;
        }
    } else {
        const uint8_t *src = data ? data : s->acc.data;
        size_t n = data ? len : s->acc.len;
        if (n == 0 || n > sizeof in)
            rv = CKR_DATA_LEN_RANGE;
        else if (s->op == CL_KH_OP_RSA_PSS && (n != (size_t)EVP_MD_get_size(md_of(s->hash))))
            rv = CKR_DATA_LEN_RANGE;
        else if (s->op == CL_KH_OP_RSA_PKCS && n + 11 > s->sig_len)
            rv = CKR_DATA_LEN_RANGE;
        else if (s->op == CL_KH_OP_RSA_X509 && n > s->sig_len)
            rv = CKR_DATA_LEN_RANGE;
        else {
            memcpy(in, src, n);
            in_len = n;
        }
    }
    if (rv == CKR_OK) {
        cl_buf reply = CL_BUF_INIT;
        cl_cursor pl;
        cl_kh_request r = {.type = CL_KH_SIGN,
                           .slot = (uint32_t)s->slot,
                           .handle = (uint32_t)s->sign_key,
                           .op = s->op,
                           .hash = s->hash,
                           .mgf_hash = s->mgf,
                           .salt_len = s->salt,
                           .data = {in, in_len}};
        rv = kh_call(&r, &reply, &pl);
        cl_slice out;
        if (rv == CKR_OK) {
            if (cl_kh_get_blob(&pl, CL_KH_DATA_MAX, &out) < 0 || !cl_cursor_at_end(&pl) || out.len > *sig_len)
                rv = CKR_DEVICE_ERROR;
            else {
                memcpy(sig, out.data, out.len);
                *sig_len = out.len;
            }
        }
        cl_buf_free(&reply);
    }
    cl_wipe(in, sizeof in);
    sign_end(s);
    return rv;
}

EXPORT CK_RV C_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    if (!sig_len || (!data && len))
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (s->sign_state == OP_NONE)
        RETURN(CKR_OPERATION_NOT_INITIALIZED);
    if (s->sign_state == OP_UPDATE) {
        sign_end(s);
        RETURN(CKR_OPERATION_ACTIVE);
    }
    static const uint8_t empty[1];
    RETURN(sign_finish(s, data ? data : empty, len, sig, sig_len));
}

EXPORT CK_RV C_SignUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR part, CK_ULONG len)
{
    if (!part && len)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (s->sign_state == OP_NONE)
        RETURN(CKR_OPERATION_NOT_INITIALIZED);
    s->sign_state = OP_UPDATE;
    if (s->prehash) {
        if (len && !EVP_DigestUpdate(s->md, part, len)) {
            sign_end(s);
            RETURN(CKR_FUNCTION_FAILED);
        }
        RETURN(CKR_OK);
    }
    if (len > CL_KH_DATA_MAX - s->acc.len) {
        sign_end(s);
        RETURN(CKR_DATA_LEN_RANGE);
    }
    if (len && cl_buf_append(&s->acc, part, len) < 0) {
        sign_end(s);
        RETURN(CKR_HOST_MEMORY);
    }
    RETURN(CKR_OK);
}

EXPORT CK_RV C_SignFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    if (!sig_len)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (s->sign_state == OP_NONE)
        RETURN(CKR_OPERATION_NOT_INITIALIZED);
    RETURN(sign_finish(s, NULL, 0, sig, sig_len));
}

/* ---- decryption ----------------------------------------------------------------------- */

EXPORT CK_RV C_DecryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key)
{
    if (!mechanism)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (s->decrypting)
        RETURN(CKR_OPERATION_ACTIVE);
    const mech *m;
    object *o;
    CK_RV rv = key_operation(s, mechanism, key, CKF_DECRYPT, &m, &o);
    if (rv != CKR_OK)
        RETURN(rv);
    s->dec_op = m->op;
    s->dec_hash = s->dec_mgf = 0;
    s->dec_label_len = 0;
    if (m->op == CL_KH_OP_RSA_OAEP) {
        if (!mechanism->pParameter || mechanism->ulParameterLen != sizeof(CK_RSA_PKCS_OAEP_PARAMS))
            RETURN(CKR_MECHANISM_PARAM_INVALID);
        const CK_RSA_PKCS_OAEP_PARAMS *p = mechanism->pParameter;
        s->dec_hash = kh_hash_of_ckm(p->hashAlg);
        s->dec_mgf = kh_hash_of_mgf(p->mgf);
        if (!s->dec_hash || !s->dec_mgf)
            RETURN(CKR_MECHANISM_PARAM_INVALID);
        if (p->source == CKZ_DATA_SPECIFIED && p->ulSourceDataLen) {
            if (!p->pSourceData || p->ulSourceDataLen > sizeof s->dec_label)
                RETURN(CKR_MECHANISM_PARAM_INVALID);
            memcpy(s->dec_label, p->pSourceData, p->ulSourceDataLen);
            s->dec_label_len = p->ulSourceDataLen;
        } else if (p->source != 0 && p->source != CKZ_DATA_SPECIFIED) {
            RETURN(CKR_MECHANISM_PARAM_INVALID);
        }
    } else if (mechanism->ulParameterLen != 0) {
        RETURN(CKR_MECHANISM_PARAM_INVALID);
    }
    s->dec_key = key;
    s->dec_k = o->rsa_bytes;
    s->decrypting = true;
    RETURN(CKR_OK);
}

EXPORT CK_RV C_Decrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    if (!out_len || (!in && in_len))
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (!s->decrypting)
        RETURN(CKR_OPERATION_NOT_INITIALIZED);
    if (in_len != s->dec_k) {
        s->decrypting = false;
        RETURN(CKR_ENCRYPTED_DATA_LEN_RANGE);
    }
    if (!out) {
        *out_len = s->dec_k; /* an upper bound, as the standard allows */
        RETURN(CKR_OK);
    }
    cl_buf reply = CL_BUF_INIT;
    cl_cursor pl;
    cl_kh_request r = {.type = CL_KH_DECRYPT,
                       .slot = (uint32_t)s->slot,
                       .handle = (uint32_t)s->dec_key,
                       .op = s->dec_op,
                       .hash = s->dec_hash,
                       .mgf_hash = s->dec_mgf,
                       .oaep_label = {s->dec_label, s->dec_label_len},
                       .data = {in, in_len}};
    CK_RV rv = kh_call(&r, &reply, &pl);
    cl_slice plain;
    if (rv == CKR_OK) {
        if (cl_kh_get_blob(&pl, CL_KH_DATA_MAX, &plain) < 0 || !cl_cursor_at_end(&pl)) {
            rv = CKR_DEVICE_ERROR;
        } else if (plain.len > *out_len) {
            *out_len = plain.len;
            cl_buf_free(&reply);
            RETURN(CKR_BUFFER_TOO_SMALL); /* the operation stays active */
        } else {
            memcpy(out, plain.data, plain.len);
            *out_len = plain.len;
        }
    }
    cl_buf_free(&reply); /* wiped */
    s->decrypting = false;
    RETURN(rv);
}

/* ---- random ------------------------------------------------------------------------- */

EXPORT CK_RV C_GenerateRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG len)
{
    if (!out && len)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    if (!get_session(h))
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (len > (CK_ULONG)INT32_MAX)
        RETURN(CKR_ARGUMENTS_BAD);
    if (len && RAND_bytes(out, (int)len) != 1)
        RETURN(CKR_FUNCTION_FAILED);
    RETURN(CKR_OK);
}

EXPORT CK_RV C_SeedRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR seed, CK_ULONG len)
{
    (void)seed;
    (void)len;
    LOCK_INIT();
    if (!get_session(h))
        RETURN(CKR_SESSION_HANDLE_INVALID);
    RETURN(CKR_RANDOM_SEED_NOT_SUPPORTED);
}

/* ---- everything else: not supported ---------------------------------------------------- */

#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunused-parameter"
#define UNSUPPORTED(name, params)                                                                             \
    EXPORT CK_RV name params                                                                                  \
    {                                                                                                         \
        return CKR_FUNCTION_NOT_SUPPORTED;                                                                    \
    }

UNSUPPORTED(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved))
UNSUPPORTED(C_InitToken, (CK_SLOT_ID id, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR label))
UNSUPPORTED(C_InitPIN, (CK_SESSION_HANDLE h, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len))
UNSUPPORTED(C_SetPIN, (CK_SESSION_HANDLE h, CK_UTF8CHAR_PTR old_pin, CK_ULONG old_len, CK_UTF8CHAR_PTR new_pin,
                       CK_ULONG new_len))
UNSUPPORTED(C_GetOperationState, (CK_SESSION_HANDLE h, CK_BYTE_PTR state, CK_ULONG_PTR len))
UNSUPPORTED(C_SetOperationState, (CK_SESSION_HANDLE h, CK_BYTE_PTR state, CK_ULONG len, CK_OBJECT_HANDLE ek,
                                  CK_OBJECT_HANDLE ak))
UNSUPPORTED(C_CreateObject, (CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o))
UNSUPPORTED(C_CopyObject, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                           CK_OBJECT_HANDLE_PTR no))
UNSUPPORTED(C_DestroyObject, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o))
UNSUPPORTED(C_SetAttributeValue, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n))
UNSUPPORTED(C_EncryptInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k))
UNSUPPORTED(C_Encrypt, (CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR e, CK_ULONG_PTR el))
UNSUPPORTED(C_EncryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR e, CK_ULONG_PTR el))
UNSUPPORTED(C_EncryptFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR e, CK_ULONG_PTR el))
UNSUPPORTED(C_DecryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR e, CK_ULONG el, CK_BYTE_PTR d, CK_ULONG_PTR dl))
UNSUPPORTED(C_DecryptFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG_PTR dl))
UNSUPPORTED(C_DigestInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m))
UNSUPPORTED(C_Digest, (CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR o, CK_ULONG_PTR ol))
UNSUPPORTED(C_DigestUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG l))
UNSUPPORTED(C_DigestKey, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k))
UNSUPPORTED(C_DigestFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR ol))
UNSUPPORTED(C_SignRecoverInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k))
UNSUPPORTED(C_SignRecover, (CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR s, CK_ULONG_PTR sl))
UNSUPPORTED(C_VerifyInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k))
UNSUPPORTED(C_Verify, (CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG l, CK_BYTE_PTR s, CK_ULONG sl))
UNSUPPORTED(C_VerifyUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG l))
UNSUPPORTED(C_VerifyFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR s, CK_ULONG sl))
UNSUPPORTED(C_VerifyRecoverInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k))
UNSUPPORTED(C_VerifyRecover, (CK_SESSION_HANDLE h, CK_BYTE_PTR s, CK_ULONG sl, CK_BYTE_PTR d, CK_ULONG_PTR dl))
UNSUPPORTED(C_DigestEncryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_BYTE_PTR e, CK_ULONG_PTR el))
UNSUPPORTED(C_DecryptDigestUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR e, CK_ULONG el, CK_BYTE_PTR p, CK_ULONG_PTR l))
UNSUPPORTED(C_SignEncryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG l, CK_BYTE_PTR e, CK_ULONG_PTR el))
UNSUPPORTED(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR e, CK_ULONG el, CK_BYTE_PTR p, CK_ULONG_PTR l))
UNSUPPORTED(C_GenerateKey, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                            CK_OBJECT_HANDLE_PTR k))
UNSUPPORTED(C_GenerateKeyPair, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt, CK_ULONG pn,
                                CK_ATTRIBUTE_PTR st, CK_ULONG sn, CK_OBJECT_HANDLE_PTR pk, CK_OBJECT_HANDLE_PTR sk))
UNSUPPORTED(C_WrapKey, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE k,
                        CK_BYTE_PTR w, CK_ULONG_PTR wl))
UNSUPPORTED(C_UnwrapKey, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uk, CK_BYTE_PTR w, CK_ULONG wl,
                          CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k))
UNSUPPORTED(C_DeriveKey, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE bk, CK_ATTRIBUTE_PTR t,
                          CK_ULONG n, CK_OBJECT_HANDLE_PTR k))
#pragma clang diagnostic pop

/* legacy parallel functions: the standard's own answer */
EXPORT CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE h)
{
    (void)h;
    return CKR_FUNCTION_NOT_PARALLEL;
}

EXPORT CK_RV C_CancelFunction(CK_SESSION_HANDLE h)
{
    (void)h;
    return CKR_FUNCTION_NOT_PARALLEL;
}

static CK_FUNCTION_LIST function_list = {
    {2, 40},
    C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo,
    C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN, C_SetPIN, C_OpenSession, C_CloseSession,
    C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState, C_SetOperationState, C_Login, C_Logout,
    C_CreateObject, C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue, C_SetAttributeValue,
    C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal, C_EncryptInit, C_Encrypt, C_EncryptUpdate,
    C_EncryptFinal, C_DecryptInit, C_Decrypt, C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest,
    C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal, C_SignRecoverInit,
    C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal, C_VerifyRecoverInit, C_VerifyRecover,
    C_DigestEncryptUpdate, C_DecryptDigestUpdate, C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey,
    C_GenerateKeyPair, C_WrapKey, C_UnwrapKey, C_DeriveKey, C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus,
    C_CancelFunction, C_WaitForSlotEvent,
};
