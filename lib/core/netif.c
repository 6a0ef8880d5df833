#include "cloister/core/netif.h"

#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int cl_netif_up(const char *name, bool *was_down)
{
    *was_down = false;
    CL_ENSURE(name && *name && strlen(name) < IFNAMSIZ, CL_EINVAL, "bad interface name");
    /* any socket will do for the interface ioctls; AF_UNIX needs no
     * network stack beyond the namespace itself */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CL_ENSURE(fd >= 0, CL_EIO, "socket for the interface ioctls: %s", strerror(errno));
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, name, strlen(name));
    int rc = CL_OK;
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
        rc = cl_error_set(errno == ENODEV ? CL_ENOTFOUND : CL_EIO, "interface %s: %s", name, strerror(errno));
        goto out;
    }
    if (ifr.ifr_flags & IFF_UP)
        goto out;
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) {
        rc = cl_error_set(CL_EIO, "interface %s is down and cannot be brought up: %s%s", name, strerror(errno),
                          errno == EPERM ? " (needs CAP_NET_ADMIN)" : "");
        goto out;
    }
    *was_down = true;
out:
    close(fd);
    return rc;
}
