/* Command-line options of bn_digits_demo. */
#ifndef BN_DEMO_OPTIONS_H
#define BN_DEMO_OPTIONS_H

#include <stdint.h>

typedef struct {
  const char* data_path; /* --data, or NULL */
  int synthetic;         /* --synthetic */
  int epochs;            /* --epochs */
  int batch;             /* --batch */
  double lr;             /* --lr: the same for both networks */
  uint64_t seed;         /* --seed: split, init, shuffles, synthetic data */
  double bn_momentum;    /* --momentum */
  int32_t threads;       /* --threads: bn_set_num_threads */
  double min_accuracy;   /* --min-accuracy: percent, checked on the real data */
} Options;

/* Fills opt from argv; prints the usage and exits on --help (status 0) or on a bad
 * option (status 2). */
void options_parse(int argc, char** argv, Options* opt);

#endif
