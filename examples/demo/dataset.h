/* The UCI handwritten digits (8x8 images, pixel values 0..16, 10 classes) as shipped by
 * scikit-learn, or a synthetic stand-in of the same shape. */
#ifndef BN_DEMO_DATASET_H
#define BN_DEMO_DATASET_H

#include <stddef.h>
#include <stdint.h>

#define DIGITS_ROWS 1797
#define DIGITS_FEATURES 64
#define DIGITS_CLASSES 10
#define DIGITS_MAX_PIXEL 16

typedef struct {
  int rows;
  float* x; /* rows x DIGITS_FEATURES, row-major */
  int* y;   /* rows labels in [0, DIGITS_CLASSES) */
} Dataset;

/* Finds the CSV: cli_path (--data), else $BN_DIGITS_CSV, else the Debian path, else the
 * first match of DIGITS_GLOB in dataset.c (any python3.X). Writes the path into buf and
 * returns buf, or returns NULL when nothing was found. A path given explicitly (option or
 * environment) that cannot be read is an error, not a reason to fall back. */
const char* digits_locate(const char* cli_path, char* buf, size_t buf_size);

/* Reads the (gzip-compressed or plain) CSV through `gzip -dcf`; 65 columns per line (64
 * pixels then the label). Dies with a clear message on any malformed input. */
void digits_load_csv(const char* path, Dataset* out);

/* A seeded synthetic 10-class set of the same shape: noisy copies of 10 random prototypes
 * (a stand-in when the real file is missing; it says nothing about real digits). */
void digits_synthetic(uint64_t seed, Dataset* out);

/* Seeded shuffle, then the first test_rows rows go to test and the rest to train. Pixels
 * are scaled to [0, 1] (x / 16) but deliberately not standardized. */
void digits_split(const Dataset* all, int test_rows, uint64_t seed, Dataset* train, Dataset* test);

void dataset_free(Dataset* d);

#endif
