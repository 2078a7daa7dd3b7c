#define _POSIX_C_SOURCE 200809L
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void die(const char* fmt, ...) {
  va_list args;
  fflush(stdout);
  fputs("error: ", stderr);
  va_start(args, fmt);
  vfprintf(stderr, fmt, args);
  va_end(args);
  fputc('\n', stderr);
  exit(EXIT_FAILURE);
}

void* xcalloc(size_t count, size_t size) {
  void* p = calloc(count, size);
  if (p == NULL) die("out of memory (%zu x %zu bytes)", count, size);
  return p;
}

void bn_check(bn_status status, const char* call, const char* file, int line) {
  if (status == BN_OK) return;
  die("%s:%d: %s failed: %s: %s", file, line, call, bn_status_string(status), bn_last_error());
}

double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
