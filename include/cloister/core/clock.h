/* The one monotonic clock: what every timeout, backoff and deadline in
 * cloister is measured on (never the wall clock, which the parent can set
 * on a real instance and NTP can step). */
#ifndef CLOISTER_CLOCK_H
#define CLOISTER_CLOCK_H

#pragma GCC visibility push(default)

#include <stdint.h>

uint64_t cl_monotonic_ms(void);
uint64_t cl_monotonic_us(void);

#pragma GCC visibility pop

#endif
