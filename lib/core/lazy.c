#include "core/lazy.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

static pthread_mutex_t lazy_lock = PTHREAD_MUTEX_INITIALIZER;

/* state: 0 not tried, 1 loaded, -1 failed (the message is kept) */
int cl_lazy_load(const char *soname, const char *const *names, void **table, size_t count, int *state)
{
    static char failure[512];
    pthread_mutex_lock(&lazy_lock);
    if (*state == 0) {
        void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
        *state = 1;
        if (!h) {
            snprintf(failure, sizeof failure, "cannot load %s: %s", soname, dlerror());
            *state = -1;
        }
        for (size_t i = 0; h && i < count; i++) {
            table[i] = dlsym(h, names[i]);
            if (!table[i]) {
                snprintf(failure, sizeof failure, "%s has no %s", soname, names[i]);
                *state = -1;
                break;
            }
        }
    }
    int ok = *state == 1;
    pthread_mutex_unlock(&lazy_lock);
    return ok ? CL_OK : cl_error_set(CL_EIO, "%s", failure);
}
