/* The PKCS#11 objects the module shows: a key-holder object (public key,
 * certificate, or the private key's public attributes) as CK_ATTRIBUTEs. */
#include "p11_state.h"

void p11_pad(CK_UTF8CHAR *dst, size_t n, const char *src)
{
    size_t l = strlen(src);
    memset(dst, ' ', n);
    memcpy(dst, src, l < n ? l : n);
}

void p11_object_clear(object *o)
{
    for (size_t i = 0; i < o->nattrs; i++)
        free(o->attrs[i].value);
    memset(o, 0, sizeof *o);
}

void p11_slot_objects_clear(slot *s)
{
    for (size_t i = 0; i < s->ncur; i++)
        p11_object_clear(&s->cur[i]);
    for (size_t i = 0; i < s->nold; i++)
        p11_object_clear(&s->old[i]);
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
int p11_object_build(object *o, const cl_kh_object_info *in, cl_slice subject)
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

bool p11_attr_sensitive(const object *o, CK_ATTRIBUTE_TYPE t)
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

const attr *p11_attr_find(const object *o, CK_ATTRIBUTE_TYPE t)
{
    for (size_t i = 0; i < o->nattrs; i++)
        if (o->attrs[i].type == t)
            return &o->attrs[i];
    return NULL;
}
