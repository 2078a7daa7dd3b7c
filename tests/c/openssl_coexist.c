/* OpenSSL's BIGNUM API also lives in BN_* / BN_*(): both headers in one translation
 * unit must compile warning-free and both libraries must work side by side. */
#include <openssl/bn.h>
#include <batchnorm/batchnorm.h>

#include <stdio.h>
#include <string.h>

int main(void) {
  int failures = 0;
  BIGNUM* a = BN_new();
  BIGNUM* b = BN_new();
  BIGNUM* sum = BN_new();
  char* text = NULL;
  bn_config* cfg = NULL;
  bn_layer* layer = NULL;
  const int64_t shape[2] = {2, 1};
  const float x[2] = {-1.0f, 1.0f};
  float y[2] = {0, 0};

  if (!a || !b || !sum) return 1;
  failures += !BN_set_word(a, 40) || !BN_set_word(b, 2) || !BN_add(sum, a, b);
  text = BN_bn2dec(sum);
  failures += text == NULL || strcmp(text, "42") != 0;
  OPENSSL_free(text);

  failures += bn_config_create(&cfg) != BN_OK;
  failures += bn_config_set_epsilon(cfg, 0.0) != BN_OK;
  failures += bn_create(cfg, shape, 2, &layer) != BN_OK;
  failures += bn_set_training(layer, 1) != BN_OK;
  failures += bn_forward(layer, shape, 2, x, y) != BN_OK;
  failures += y[0] != -1.0f || y[1] != 1.0f; /* mean 0, variance 1, epsilon 0 */
  failures += strcmp(bn_status_string(BN_ERR_STATE), "BN_ERR_STATE") != 0;
  bn_destroy(layer);
  bn_config_destroy(cfg);
  BN_free(a);
  BN_free(b);
  BN_free(sum);
  if (failures) fprintf(stderr, "openssl: %d failures (last error: %s)\n", failures, bn_last_error());
  else printf("openssl: ok\n");
  return failures == 0 ? 0 : 1;
}
