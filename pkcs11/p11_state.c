/* The module's process-wide state, declared in p11_state.h: defined here,
 * below every file that uses it, so that module.c (the function list) can
 * call into the others without any of them needing module.c. */
#include "p11_state.h"

pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
bool g_init;
pid_t g_pid;
int g_fd = -1;
char g_addr[512];
slot g_slots[CL_KH_MAX_TOKENS];
session g_sessions[MAX_SESSIONS];
