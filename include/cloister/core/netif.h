/* Network interfaces of the namespace we run in.  AWS's enclave init
 * leaves lo down; cloister enclave (and later cloister tap) bring it up
 * themselves because the internal listener and the app use 127.0.0.1. */
#ifndef CLOISTER_NETIF_H
#define CLOISTER_NETIF_H

#pragma GCC visibility push(default)

#include "cloister/core/error.h"

#include <stdbool.h>

/* Sets IFF_UP on interface name if it is not set; *was_down says whether
 * it had to.  Linux gives lo its 127.0.0.1/8 and ::1 as it comes up.
 * Needs CAP_NET_ADMIN only when the interface is down. */
CL_MUST_CHECK int cl_netif_up(const char *name, bool *was_down);

#pragma GCC visibility pop

#endif
