/* Sessions, login and logout, object attributes and find. */
#include "p11_state.h"

session *p11_get_session(CK_SESSION_HANDLE h)
{
    if (h == 0 || h > MAX_SESSIONS || !g_sessions[h - 1].used)
        return NULL;
    return &g_sessions[h - 1];
}

void p11_sign_end(session *s)
{
    EVP_MD_CTX_free(s->md);
    s->md = NULL;
    cl_buf_free(&s->acc);
    s->sign_state = OP_NONE;
}

void p11_session_close(session *s)
{
    p11_sign_end(s);
    cl_wipe(s, sizeof *s);
}

bool p11_slot_valid(CK_SLOT_ID id)
{
    return id < CL_KH_MAX_TOKENS && g_slots[id].present;
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
    if (!p11_slot_valid(id))
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
    session *s = p11_get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    CK_SLOT_ID id = s->slot;
    p11_session_close(s);
    /* the login ends with the application's last session on the token */
    bool any = false;
    for (size_t i = 0; i < MAX_SESSIONS; i++)
        any |= g_sessions[i].used && g_sessions[i].slot == id;
    if (!any && g_slots[id].logged_in) {
        cl_buf reply = CL_BUF_INIT;
        cl_cursor pl;
        cl_kh_request r = {.type = CL_KH_LOGOUT, .slot = (uint32_t)id};
        (void)p11_kh_call(&r, &reply, &pl);
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
            p11_session_close(&g_sessions[i]);
    if (g_slots[id].logged_in) {
        cl_buf reply = CL_BUF_INIT;
        cl_cursor pl;
        cl_kh_request r = {.type = CL_KH_LOGOUT, .slot = (uint32_t)id};
        (void)p11_kh_call(&r, &reply, &pl);
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
    session *s = p11_get_session(h);
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
    session *s = p11_get_session(h);
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
    CK_RV rv = p11_kh_call(&r, &reply, &pl);
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
    session *s = p11_get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (!g_slots[s->slot].logged_in)
        RETURN(CKR_USER_NOT_LOGGED_IN);
    cl_buf reply = CL_BUF_INIT;
    cl_cursor pl;
    cl_kh_request r = {.type = CL_KH_LOGOUT, .slot = (uint32_t)s->slot};
    CK_RV rv = p11_kh_call(&r, &reply, &pl);
    cl_buf_free(&reply);
    logout_local(s->slot);
    for (size_t i = 0; i < MAX_SESSIONS; i++)
        if (g_sessions[i].used && g_sessions[i].slot == s->slot) {
            p11_sign_end(&g_sessions[i]);
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
    session *s = p11_get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    object *o = p11_find_object(s->slot, obj, g_slots[s->slot].logged_in);
    if (!o)
        RETURN(CKR_OBJECT_HANDLE_INVALID);
    CK_RV rv = CKR_OK;
    for (CK_ULONG i = 0; i < count; i++) {
        CK_ATTRIBUTE *t = &tmpl[i];
        if (p11_attr_sensitive(o, t->type)) {
            t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = CKR_ATTRIBUTE_SENSITIVE;
            continue;
        }
        const attr *a = p11_attr_find(o, t->type);
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
        const attr *a = p11_attr_find(o, tmpl[i].type);
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
    session *s = p11_get_session(h);
    if (!s)
        RETURN(CKR_SESSION_HANDLE_INVALID);
    if (s->finding)
        RETURN(CKR_OPERATION_ACTIVE);
    CK_RV rv = p11_refresh_objects(s->slot);
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
    session *s = p11_get_session(h);
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
    session *s = p11_get_session(h);
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

