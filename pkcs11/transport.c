/* The key-holder connection: one unix socket per process, frames, replies
 * mapped to CK_RV, reconnect with the cached PIN, and the slot and object
 * caches refreshed from the key-holder. */
#include "p11_state.h"

/* ---- the key-holder connection ----------------------------------------------------- */

void p11_disconnect(void)
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
            p11_disconnect();
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
CK_RV p11_kh_call(const cl_kh_request *r, cl_buf *reply, cl_cursor *payload)
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
            p11_disconnect();
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
CK_RV p11_refresh_slots(void)
{
    cl_buf reply = CL_BUF_INIT;
    cl_cursor pl;
    cl_kh_request r = {.type = CL_KH_LIST_TOKENS};
    CK_RV rv = p11_kh_call(&r, &reply, &pl);
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
                    p11_slot_objects_clear(s);
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
                    p11_slot_objects_clear(&g_slots[i]);
                }
        }
    }
    cl_buf_free(&reply);
    return rv;
}

/* Refreshes a slot's objects; the previous generation's stay findable by
 * handle so that operations started before a rotation can finish. */
CK_RV p11_refresh_objects(CK_SLOT_ID id)
{
    slot *s = &g_slots[id];
    cl_buf reply = CL_BUF_INIT;
    cl_cursor pl;
    cl_kh_request r = {.type = CL_KH_LIST_OBJECTS, .slot = (uint32_t)id};
    CK_RV rv = p11_kh_call(&r, &reply, &pl);
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
        if (p11_object_build(&fresh[built], &in[built], (cl_slice){subj, subj_len > 0 ? (size_t)subj_len : 0}) < 0) {
            p11_object_clear(&fresh[built]);
            break;
        }
    }
    OPENSSL_free(subj);
    if (built < n) {
        for (size_t i = 0; i < built; i++)
            p11_object_clear(&fresh[i]);
        ERR_clear_error();
        rv = CKR_DEVICE_ERROR;
        goto out;
    }
    for (size_t i = 0; i < s->nold; i++)
        p11_object_clear(&s->old[i]);
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
    if (p11_kh_call(&r, &reply, &pl) != CKR_OK || cl_kh_decode_objects(&pl, in, 1, &n) < 0 || n != 1 ||
        in[0].handle != h)
        goto out;
    if (s->nold == CL_KH_MAX_OBJECTS) {
        p11_object_clear(&s->old[0]);
        memmove(&s->old[0], &s->old[1], (CL_KH_MAX_OBJECTS - 1) * sizeof s->old[0]);
        s->nold--;
    }
    o = &s->old[s->nold];
    if (p11_object_build(o, &in[0], (cl_slice){NULL, 0}) < 0) {
        p11_object_clear(o);
        ERR_clear_error();
        o = NULL;
        goto out;
    }
    s->nold++;
out:
    cl_buf_free(&reply);
    return o;
}

object *p11_find_object(CK_SLOT_ID id, CK_OBJECT_HANDLE h, bool logged_in)
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
        if (pass == 0 && p11_refresh_objects(id) != CKR_OK)
            return NULL;
        if (pass == 1)
            o = fetch_object(id, h);
    }
    return o && o->is_private && !logged_in ? NULL : o;
}

