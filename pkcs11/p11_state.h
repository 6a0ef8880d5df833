/* What the files of libcloister-pkcs11.so share: the module's state (one
 * process, one key-holder connection, the slot and session tables) and
 * the functions one file calls in another.  Not installed. */
#ifndef CLOISTER_PKCS11_P11_STATE_H
#define CLOISTER_PKCS11_P11_STATE_H

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

extern pthread_mutex_t g_lock;
extern bool g_init;
extern pid_t g_pid;
extern int g_fd;
extern char g_addr[512];
extern slot g_slots[CL_KH_MAX_TOKENS];
extern session g_sessions[MAX_SESSIONS];

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

/* objects.c */
void p11_pad(CK_UTF8CHAR *dst, size_t n, const char *src);
void p11_object_clear(object *o);
void p11_slot_objects_clear(slot *s);
int p11_object_build(object *o, const cl_kh_object_info *in, cl_slice subject);
bool p11_attr_sensitive(const object *o, CK_ATTRIBUTE_TYPE t);
const attr *p11_attr_find(const object *o, CK_ATTRIBUTE_TYPE t);

/* transport.c */
void p11_disconnect(void);
CK_RV p11_kh_call(const cl_kh_request *r, cl_buf *reply, cl_cursor *payload);
CK_RV p11_refresh_slots(void);
CK_RV p11_refresh_objects(CK_SLOT_ID id);
object *p11_find_object(CK_SLOT_ID id, CK_OBJECT_HANDLE h, bool logged_in);

/* session.c */
session *p11_get_session(CK_SESSION_HANDLE h);
void p11_sign_end(session *s);
void p11_session_close(session *s);
bool p11_slot_valid(CK_SLOT_ID id);

#endif
