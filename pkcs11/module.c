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
#include "p11_state.h"

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
            p11_session_close(&g_sessions[i]);
    for (size_t i = 0; i < CL_KH_MAX_TOKENS; i++) {
        p11_slot_objects_clear(&g_slots[i]);
        cl_wipe(&g_slots[i], sizeof g_slots[i]);
    }
    p11_disconnect();
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
    p11_pad(info->manufacturerID, sizeof info->manufacturerID, "cloister");
    p11_pad(info->libraryDescription, sizeof info->libraryDescription, "cloister enclave key-holder");
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
    CK_RV rv = p11_refresh_slots();
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
    if (!p11_slot_valid(id))
        RETURN(CKR_SLOT_ID_INVALID);
    memset(info, 0, sizeof *info);
    char desc[64];
    snprintf(desc, sizeof desc, "cloister key-holder slot %lu", (unsigned long)id);
    p11_pad(info->slotDescription, sizeof info->slotDescription, desc);
    p11_pad(info->manufacturerID, sizeof info->manufacturerID, "cloister");
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
    CK_RV rv = p11_refresh_slots();
    if (rv != CKR_OK)
        RETURN(rv);
    if (id >= CL_KH_MAX_TOKENS)
        RETURN(CKR_SLOT_ID_INVALID);
    slot *s = &g_slots[id];
    if (!s->present)
        RETURN(CKR_SLOT_ID_INVALID);
    memset(info, 0, sizeof *info);
    p11_pad(info->label, sizeof info->label, s->label);
    p11_pad(info->manufacturerID, sizeof info->manufacturerID, "cloister");
    p11_pad(info->model, sizeof info->model, "enclave token");
    p11_pad(info->serialNumber, sizeof info->serialNumber, s->serial);
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


/* ---- random ------------------------------------------------------------------------- */

EXPORT CK_RV C_GenerateRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG len)
{
    if (!out && len)
        return CKR_ARGUMENTS_BAD;
    LOCK_INIT();
    if (!p11_get_session(h))
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
    if (!p11_get_session(h))
        RETURN(CKR_SESSION_HANDLE_INVALID);
    RETURN(CKR_RANDOM_SEED_NOT_SUPPORTED);
}

/* ---- everything else: not supported ---------------------------------------------------- */

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
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
#pragma GCC diagnostic pop

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
