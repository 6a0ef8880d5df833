/* The mechanisms: the table, their parameters, signing (hashed here,
 * signed raw by the key-holder) and decryption. */
#include "p11_state.h"

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


EXPORT CK_RV C_GetMechanismList(CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
    if (!count)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    if (!p11_slot_valid(id))
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
    if (!p11_slot_valid(id))
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
    object *o = p11_find_object(s->slot, key, true);
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
    session *s = p11_get_session(h);
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
            p11_sign_end(s);
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
        rv = p11_kh_call(&r, &reply, &pl);
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
    p11_sign_end(s);
    return rv;
}

EXPORT CK_RV C_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    if (!sig_len || (!data && len))
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = p11_get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (s->sign_state == OP_NONE)
        RETURN(CKR_OPERATION_NOT_INITIALIZED);
    if (s->sign_state == OP_UPDATE) {
        p11_sign_end(s);
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
    session *s = p11_get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (s->sign_state == OP_NONE)
        RETURN(CKR_OPERATION_NOT_INITIALIZED);
    s->sign_state = OP_UPDATE;
    if (s->prehash) {
        if (len && !EVP_DigestUpdate(s->md, part, len)) {
            p11_sign_end(s);
            RETURN(CKR_FUNCTION_FAILED);
        }
        RETURN(CKR_OK);
    }
    if (len > CL_KH_DATA_MAX - s->acc.len) {
        p11_sign_end(s);
        RETURN(CKR_DATA_LEN_RANGE);
    }
    if (len && cl_buf_append(&s->acc, part, len) < 0) {
        p11_sign_end(s);
        RETURN(CKR_HOST_MEMORY);
    }
    RETURN(CKR_OK);
}

EXPORT CK_RV C_SignFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    if (!sig_len)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    session *s = p11_get_session(h);
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
    session *s = p11_get_session(h);
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
    session *s = p11_get_session(h);
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
    CK_RV rv = p11_kh_call(&r, &reply, &pl);
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

