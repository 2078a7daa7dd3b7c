/* A toy C library in versions that differ the ways a release can: the ABI check's self-test. */
#include <stdint.h>
typedef struct toy toy; /* opaque: its layout is private */
typedef int32_t toy_status;
toy_status toy_create(toy** out);
#ifdef TOY_SET_FLOAT
toy_status toy_set(toy* t, float value); /* breaks callers passing a double */
#else
toy_status toy_set(toy* t, double value);
#endif
#ifndef TOY_NO_GET
double toy_get(const toy* t);
#endif
#ifdef TOY_ADDED
toy_status toy_reset(toy* t); /* a compatible addition */
#endif
