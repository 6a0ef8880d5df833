#include "cloister/core/clock.h"

#include <time.h>

uint64_t cl_monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t cl_monotonic_ms(void)
{
    return cl_monotonic_us() / 1000u;
}
