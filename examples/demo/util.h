/* Small helpers shared by the demo: fatal errors, checked allocation, bn_* status checks. */
#ifndef BN_DEMO_UTIL_H
#define BN_DEMO_UTIL_H

#include <batchnorm/batchnorm.h>
#include <stddef.h>

/* Prints "error: <message>" to stderr and exits with status 1. */
void die(const char* fmt, ...);

/* calloc that never returns NULL (dies instead). */
void* xcalloc(size_t count, size_t size);

/* Dies with the call, bn_status_string(status) and bn_last_error() unless status is BN_OK. */
void bn_check(bn_status status, const char* call, const char* file, int line);

/* Every bn_* call in the demo goes through BN_TRY: any failure ends the program. */
#define BN_TRY(call) bn_check((call), #call, __FILE__, __LINE__)

/* Seconds on a monotonic clock. */
double now_seconds(void);

#endif
