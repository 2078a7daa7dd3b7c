/* glibc exports its allocator under __libc_* names: forward to them and count. free()
 * is not interposed (glibc's own free releases what these return). */
#include "alloc_hook.h"

#include <errno.h>
#include <stddef.h>

extern void* __libc_malloc(size_t size);
extern void* __libc_calloc(size_t count, size_t size);
extern void* __libc_realloc(void* ptr, size_t size);
extern void* __libc_memalign(size_t alignment, size_t size);

static int counting;
static uint64_t count;

static void note(void) {
  if (__atomic_load_n(&counting, __ATOMIC_RELAXED))
    __atomic_fetch_add(&count, 1, __ATOMIC_RELAXED);
}

void bench_alloc_counting(int enabled) {
  __atomic_store_n(&counting, enabled, __ATOMIC_SEQ_CST);
  if (enabled) __atomic_store_n(&count, 0, __ATOMIC_SEQ_CST);
}

uint64_t bench_alloc_count(void) { return __atomic_load_n(&count, __ATOMIC_SEQ_CST); }

void* malloc(size_t size) {
  note();
  return __libc_malloc(size);
}

void* calloc(size_t n, size_t size) {
  note();
  return __libc_calloc(n, size);
}

void* realloc(void* ptr, size_t size) {
  note();
  return __libc_realloc(ptr, size);
}

void* memalign(size_t alignment, size_t size) {
  note();
  return __libc_memalign(alignment, size);
}

void* aligned_alloc(size_t alignment, size_t size) {
  note();
  return __libc_memalign(alignment, size);
}

int posix_memalign(void** out, size_t alignment, size_t size) {
  void* p;
  note();
  if (alignment % sizeof(void*) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
  p = __libc_memalign(alignment, size);
  if (p == NULL && size != 0) return ENOMEM;
  *out = p;
  return 0;
}
