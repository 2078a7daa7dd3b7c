#define _POSIX_C_SOURCE 200809L
#include "dataset.h"

#include <errno.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rng.h"
#include "util.h"

#define DIGITS_COLUMNS (DIGITS_FEATURES + 1)
#define DEBIAN_DIGITS_PATH "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz"
#define DIGITS_GLOB "/usr/lib/python3*/dist-packages/sklearn/datasets/data/digits.csv.gz"
#define MAX_LINE 4096

/* ---- locating the file ---------------------------------------------------------------- */

static const char* keep_path(const char* path, char* buf, size_t buf_size) {
  if (strlen(path) >= buf_size) die("data path too long: %s", path);
  strcpy(buf, path);
  return buf;
}

static const char* require_readable(const char* path, const char* origin, char* buf, size_t buf_size) {
  if (access(path, R_OK) != 0) die("%s %s: cannot read it: %s", origin, path, strerror(errno));
  return keep_path(path, buf, buf_size);
}

const char* digits_locate(const char* cli_path, char* buf, size_t buf_size) {
  if (cli_path != NULL) return require_readable(cli_path, "--data", buf, buf_size);
  const char* env = getenv("BN_DIGITS_CSV");
  if (env != NULL && env[0] != '\0') return require_readable(env, "BN_DIGITS_CSV=", buf, buf_size);
  if (access(DEBIAN_DIGITS_PATH, R_OK) == 0) return keep_path(DEBIAN_DIGITS_PATH, buf, buf_size);

  const char* found = NULL;
  glob_t g;
  if (glob(DIGITS_GLOB, 0, NULL, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc && found == NULL; ++i)
      if (access(g.gl_pathv[i], R_OK) == 0) found = keep_path(g.gl_pathv[i], buf, buf_size);
  }
  globfree(&g);
  return found;
}

/* ---- parsing -------------------------------------------------------------------------- */

/* Wraps path in single quotes for /bin/sh: ' becomes '\'' . */
static char* shell_command(const char* path) {
  const char* prefix = "gzip -dcf -- '";
  size_t len = strlen(prefix) + 4 * strlen(path) + 2;
  char* cmd = xcalloc(len + 1, 1);
  char* out = cmd + strlen(strcpy(cmd, prefix));
  for (const char* p = path; *p != '\0'; ++p) {
    if (*p == '\'') {
      memcpy(out, "'\\''", 4);
      out += 4;
    } else {
      *out++ = *p;
    }
  }
  *out++ = '\'';
  *out = '\0';
  return cmd;
}

static int is_blank(const char* s) {
  for (; *s != '\0'; ++s)
    if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return 0;
  return 1;
}

static int count_columns(const char* line) {
  int n = 1;
  for (; *line != '\0'; ++line) n += (*line == ',');
  return n;
}

/* Parses one number that must be followed by `sep` (after optional blanks). */
static double parse_field(const char** cursor, char sep, const char* path, long line_no, int col) {
  char* end = NULL;
  errno = 0;
  double v = strtod(*cursor, &end);
  if (end == *cursor || errno == ERANGE || !isfinite(v))
    die("%s:%ld: column %d is not a finite number", path, line_no, col + 1);
  while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n') ++end;
  if (*end != sep) die("%s:%ld: unexpected text after column %d", path, line_no, col + 1);
  *cursor = end + (sep != '\0');
  return v;
}

static void parse_row(const char* line, const char* path, long line_no, float* x, int* y) {
  int cols = count_columns(line);
  if (cols != DIGITS_COLUMNS)
    die("%s:%ld: expected %d comma-separated columns (64 pixels + label), found %d", path, line_no, DIGITS_COLUMNS,
        cols);
  const char* cursor = line;
  for (int c = 0; c < DIGITS_FEATURES; ++c) {
    double v = parse_field(&cursor, ',', path, line_no, c);
    if (v < 0.0 || v > DIGITS_MAX_PIXEL)
      die("%s:%ld: pixel %d = %g is outside [0, %d]", path, line_no, c + 1, v, DIGITS_MAX_PIXEL);
    x[c] = (float)v;
  }
  double label = parse_field(&cursor, '\0', path, line_no, DIGITS_FEATURES);
  if (label != floor(label) || label < 0 || label >= DIGITS_CLASSES)
    die("%s:%ld: label %g is not an integer in [0, %d]", path, line_no, label, DIGITS_CLASSES - 1);
  *y = (int)label;
}

static void read_rows(FILE* in, const char* path, Dataset* out) {
  char line[MAX_LINE];
  long line_no = 0;
  int rows = 0;
  while (fgets(line, sizeof line, in) != NULL) {
    ++line_no;
    size_t len = strlen(line);
    if (len == sizeof line - 1 && line[len - 1] != '\n')
      die("%s:%ld: line longer than %d characters: not the digits CSV", path, line_no, MAX_LINE - 2);
    if (is_blank(line)) continue;
    if (rows == DIGITS_ROWS) die("%s: more than the expected %d rows (line %ld)", path, DIGITS_ROWS, line_no);
    parse_row(line, path, line_no, out->x + (size_t)rows * DIGITS_FEATURES, out->y + rows);
    ++rows;
  }
  if (ferror(in)) die("%s: read error", path);
  if (rows != DIGITS_ROWS) die("%s: expected %d rows, read %d", path, DIGITS_ROWS, rows);
  out->rows = rows;
}

void digits_load_csv(const char* path, Dataset* out) {
  out->x = xcalloc((size_t)DIGITS_ROWS * DIGITS_FEATURES, sizeof(float));
  out->y = xcalloc(DIGITS_ROWS, sizeof(int));
  char* cmd = shell_command(path);
  FILE* in = popen(cmd, "r");
  if (in == NULL) die("cannot run `%s`: %s", cmd, strerror(errno));
  read_rows(in, path, out);
  int status = pclose(in);
  if (status != 0) die("`%s` failed (wait status %d): is the file a valid gzip/CSV?", cmd, status);
  free(cmd);
}

/* ---- synthetic stand-in --------------------------------------------------------------- */

void digits_synthetic(uint64_t seed, Dataset* out) {
  Rng rng;
  rng_seed(&rng, seed, 7);
  /* Ten prototypes that share a common background shape (as digits share a centred blob of
   * ink) and differ from it on ~30 % of the pixels; ink is 8..16, blank is 0. */
  float base[DIGITS_FEATURES], proto[DIGITS_CLASSES][DIGITS_FEATURES];
  for (int j = 0; j < DIGITS_FEATURES; ++j) base[j] = rng_uniform(&rng) < 0.4 ? 12.0f : 0.0f;
  for (int k = 0; k < DIGITS_CLASSES; ++k)
    for (int j = 0; j < DIGITS_FEATURES; ++j) {
      int flip = rng_uniform(&rng) < 0.3;
      int ink = flip ? base[j] == 0.0f : base[j] != 0.0f;
      proto[k][j] = ink ? (float)(8.0 + 8.0 * rng_uniform(&rng)) : 0.0f;
    }

  /* Samples: a prototype plus N(0, 6^2) noise, rounded and clipped to the real range. */
  out->rows = DIGITS_ROWS;
  out->x = xcalloc((size_t)DIGITS_ROWS * DIGITS_FEATURES, sizeof(float));
  out->y = xcalloc(DIGITS_ROWS, sizeof(int));
  for (int i = 0; i < DIGITS_ROWS; ++i) {
    int k = (int)rng_below(&rng, DIGITS_CLASSES);
    out->y[i] = k;
    for (int j = 0; j < DIGITS_FEATURES; ++j) {
      double v = round(proto[k][j] + 6.0 * rng_normal(&rng));
      out->x[(size_t)i * DIGITS_FEATURES + j] = (float)fmin(fmax(v, 0.0), DIGITS_MAX_PIXEL);
    }
  }
}

/* ---- split ---------------------------------------------------------------------------- */

static void take_rows(const Dataset* all, const int* idx, int n, Dataset* out) {
  out->rows = n;
  out->x = xcalloc((size_t)n * DIGITS_FEATURES, sizeof(float));
  out->y = xcalloc((size_t)n, sizeof(int));
  for (int i = 0; i < n; ++i) {
    const float* src = all->x + (size_t)idx[i] * DIGITS_FEATURES;
    float* dst = out->x + (size_t)i * DIGITS_FEATURES;
    for (int j = 0; j < DIGITS_FEATURES; ++j) dst[j] = src[j] / (float)DIGITS_MAX_PIXEL;
    out->y[i] = all->y[idx[i]];
  }
}

void digits_split(const Dataset* all, int test_rows, uint64_t seed, Dataset* train, Dataset* test) {
  if (test_rows <= 0 || test_rows >= all->rows) die("bad test split size %d", test_rows);
  int* idx = xcalloc((size_t)all->rows, sizeof(int));
  for (int i = 0; i < all->rows; ++i) idx[i] = i;
  Rng rng;
  rng_seed(&rng, seed, 3);
  rng_shuffle(&rng, idx, all->rows);
  take_rows(all, idx, test_rows, test);
  take_rows(all, idx + test_rows, all->rows - test_rows, train);
  free(idx);
}

void dataset_free(Dataset* d) {
  free(d->x);
  free(d->y);
  d->x = NULL;
  d->y = NULL;
  d->rows = 0;
}
