#include "options.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keras' default momentum 0.99 averages the batch statistics over ~100 steps (1/(1-m)).
 * This run has ~45 steps per epoch and the weights, hence the statistics of the hidden
 * features, keep moving: with 0.99 the moving statistics would lag several epochs behind
 * (and in a 2-epoch CI run still weigh the initial mean 0 / variance 1 by 0.99^90 = 40 %).
 * 0.9 averages over ~10 recent batches: enough to smooth the batch noise, fresh enough to
 * match the current weights at every evaluation. */
#define DEFAULT_BN_MOMENTUM 0.9

static void usage(FILE* out, const char* prog) {
  fprintf(out,
          "usage: %s [options]\n"
          "Trains a 64-128-64-10 MLP on the UCI digits with and without batch norm.\n\n"
          "  --data PATH         digits CSV (.csv or .csv.gz; 64 pixels + label per line).\n"
          "                      Default: $BN_DIGITS_CSV, else scikit-learn's digits.csv.gz\n"
          "                      under /usr/lib/python3*/dist-packages. A path given here or\n"
          "                      in BN_DIGITS_CSV must exist.\n"
          "  --synthetic         use seeded synthetic data of the same shape (also the\n"
          "                      fallback when no digits.csv.gz is found)\n"
          "  --epochs N          training epochs (default 20)\n"
          "  --batch N           mini-batch size (default 32)\n"
          "  --lr X              SGD learning rate for both networks (default 0.01)\n"
          "  --seed N            seed of the split, init and shuffles (default 42)\n"
          "  --momentum X        batch norm moving-average momentum (default %.2g)\n"
          "  --threads N         bn_set_num_threads for the batch norm layers\n"
          "                      (0 = the caller's oneTBB arena, the default)\n"
          "  --min-accuracy P    exit 1 if the batch norm net ends below P %% held-out\n"
          "                      accuracy on the real data (default 85; 0 disables)\n"
          "  --help              this text\n",
          prog, DEFAULT_BN_MOMENTUM);
}

static void usage_error(const char* prog, const char* what, const char* arg) {
  fprintf(stderr, "error: %s %s\n\n", what, arg);
  usage(stderr, prog);
  exit(2);
}

static void bad(const char* prog, const char* name, const char* value) {
  fprintf(stderr, "error: %s: invalid value '%s'\n\n", name, value);
  usage(stderr, prog);
  exit(2);
}

static long parse_long(const char* prog, const char* what, const char* s, long lo, long hi) {
  char* end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\0' || errno != 0 || v < lo || v > hi) bad(prog, what, s);
  return v;
}

static double parse_double(const char* prog, const char* what, const char* s, double lo, double hi) {
  char* end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end != '\0' || errno != 0 || !(v >= lo && v <= hi)) bad(prog, what, s);
  return v;
}

static void set_defaults(Options* opt) {
  opt->data_path = NULL;
  opt->synthetic = 0;
  opt->epochs = 20;
  opt->batch = 32;
  opt->lr = 0.01;
  opt->seed = 42;
  opt->bn_momentum = DEFAULT_BN_MOMENTUM;
  opt->threads = 0;
  opt->min_accuracy = 85.0;
}

static const char* const kValueOptions[] = {"--data", "--epochs",   "--batch",   "--lr",
                                            "--seed", "--momentum", "--threads", "--min-accuracy"};

static int takes_value(const char* name) {
  for (size_t i = 0; i < sizeof kValueOptions / sizeof kValueOptions[0]; ++i)
    if (strcmp(name, kValueOptions[i]) == 0) return 1;
  return 0;
}

/* Applies one "--name value" option (name is one of kValueOptions). */
static void apply(Options* opt, const char* prog, const char* name, const char* value) {
  if (strcmp(name, "--data") == 0)
    opt->data_path = value;
  else if (strcmp(name, "--epochs") == 0)
    opt->epochs = (int)parse_long(prog, name, value, 1, 100000);
  else if (strcmp(name, "--batch") == 0)
    opt->batch = (int)parse_long(prog, name, value, 1, 4096);
  else if (strcmp(name, "--lr") == 0)
    opt->lr = parse_double(prog, name, value, 1e-9, 100.0);
  else if (strcmp(name, "--seed") == 0)
    opt->seed = (uint64_t)parse_long(prog, name, value, 0, 2147483647L);
  else if (strcmp(name, "--momentum") == 0)
    opt->bn_momentum = parse_double(prog, name, value, 0.0, 1.0);
  else if (strcmp(name, "--threads") == 0)
    opt->threads = (int32_t)parse_long(prog, name, value, 0, 1024);
  else if (strcmp(name, "--min-accuracy") == 0)
    opt->min_accuracy = parse_double(prog, name, value, 0.0, 100.0);
}

/* Splits "--name=value" into name and value; for "--name" the value stays NULL. */
static void split_arg(const char* prog, const char* arg, char* name, size_t size, const char** value) {
  const char* eq = strchr(arg, '=');
  size_t len = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
  if (len >= size) usage_error(prog, "unknown option", arg);
  memcpy(name, arg, len);
  name[len] = '\0';
  *value = eq != NULL ? eq + 1 : NULL;
}

void options_parse(int argc, char** argv, Options* opt) {
  const char* prog = argc > 0 ? argv[0] : "bn_digits_demo";
  set_defaults(opt);
  for (int i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      usage(stdout, prog);
      exit(0);
    }
    if (strcmp(arg, "--synthetic") == 0) {
      opt->synthetic = 1;
      continue;
    }
    char name[32];
    const char* value = NULL;
    split_arg(prog, arg, name, sizeof name, &value);
    if (!takes_value(name)) usage_error(prog, "unknown option", arg);
    if (value == NULL) {
      if (i + 1 >= argc) usage_error(prog, "missing value after", arg);
      value = argv[++i];
    }
    apply(opt, prog, name, value);
  }
}
