#include "toy.h"
#include <stdlib.h>
struct toy {
  double value;
#ifdef TOY_PRIVATE_FIELD
  int extra[4]; /* a private layout change: invisible to callers */
#endif
};
toy_status toy_create(toy** out) { *out = calloc(1, sizeof(toy)); return *out ? 0 : 1; }
#ifdef TOY_SET_FLOAT
toy_status toy_set(toy* t, float value) { t->value = value; return 0; }
#else
toy_status toy_set(toy* t, double value) { t->value = value; return 0; }
#endif
#ifndef TOY_NO_GET
double toy_get(const toy* t) { return t->value; }
#endif
#ifdef TOY_ADDED
toy_status toy_reset(toy* t) { t->value = 0; return 0; }
#endif
