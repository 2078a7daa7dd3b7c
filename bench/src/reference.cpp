#include "reference.hpp"

#include <cmath>
#include <cstdio>
#include <vector>

namespace bn::bench {
namespace {

struct Worst {
  double excess = 0;  // |got - want| / tolerance; > 1 fails
  std::string text;
  void see(const char* what, int64_t i, double got, double want, double tol) {
    const double e = std::isfinite(got) ? std::fabs(got - want) / tol : INFINITY;
    if (!(e <= excess)) {
      excess = e;
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s[%lld] = %.7g, expected %.7g (tolerance %.2g)", what,
                    static_cast<long long>(i), got, want, tol);
      text = buf;
    }
  }
};

}  // namespace

std::string check_outputs(const Tensors& t, Mode mode) {
  const Case& k = t.shape;
  const int64_t total = k.elements();
  const double m = static_cast<double>(k.n * k.s);
  // y and dx of 16-bit cases are rounded once to their type (8 or 11 significant bits).
  const double out_rel = k.dtype == "bf16" ? 8e-3 : k.dtype == "f16" ? 1e-3 : 1e-4;
  // Per-channel batch statistics: mean, then the centred second moment.
  std::vector<double> mean(k.c, 0.0), var(k.c, 0.0);
  for (int64_t i = 0; i < total; ++i) mean[t.channel_of(i)] += t.x[i];
  for (auto& v : mean) v /= m;
  for (int64_t i = 0; i < total; ++i) {
    const double d = t.x[i] - mean[t.channel_of(i)];
    var[t.channel_of(i)] += d * d;
  }
  for (auto& v : var) v /= m;

  Worst worst;
  if (mode != Mode::kBackward) {
    const bool batch = mode == Mode::kTraining;
    for (int64_t i = 0; i < total; ++i) {
      const int64_t c = t.channel_of(i);
      const double mu = batch ? mean[c] : t.moving_mean[c];
      const double v = batch ? var[c] : t.moving_var[c];
      const double want = t.gamma[c] * (t.x[i] - mu) / std::sqrt(v + kEpsilon) + t.beta[c];
      worst.see("y", i, t.y[i], want, out_rel * (1 + std::fabs(want)));
    }
    return worst.excess > 1 ? worst.text : "";
  }
  // Backward of the training forward: xhat = (x - mean)*inv_std,
  // dbeta = sum(dy), dgamma = sum(dy*xhat),
  // dx = gamma*inv_std*(dy - dbeta/m - xhat*dgamma/m).
  std::vector<double> dbeta(k.c, 0.0), dgamma(k.c, 0.0), abs_db(k.c, 0.0), abs_dg(k.c, 0.0);
  auto xhat = [&](int64_t i) {
    const int64_t c = t.channel_of(i);
    return (t.x[i] - mean[c]) / std::sqrt(var[c] + kEpsilon);
  };
  for (int64_t i = 0; i < total; ++i) {
    const int64_t c = t.channel_of(i);
    dbeta[c] += t.dy[i];
    dgamma[c] += t.dy[i] * xhat(i);
    abs_db[c] += std::fabs(t.dy[i]);
    abs_dg[c] += std::fabs(t.dy[i] * xhat(i));
  }
  // Sums of m float terms: tolerance relative to the sum of magnitudes.
  for (int64_t c = 0; c < k.c; ++c) {
    worst.see("dbeta", c, t.dbeta[c], dbeta[c], 1e-4 * (1 + abs_db[c]));
    worst.see("dgamma", c, t.dgamma[c], dgamma[c], 1e-4 * (1 + abs_dg[c]));
  }
  for (int64_t i = 0; i < total; ++i) {
    const int64_t c = t.channel_of(i);
    const double g = t.gamma[c] / std::sqrt(var[c] + kEpsilon);
    const double want = g * (t.dy[i] - dbeta[c] / m - xhat(i) * dgamma[c] / m);
    worst.see("dx", i, t.dx[i], want, out_rel * (1 + std::fabs(g) * (1 + std::fabs(xhat(i)))));
  }
  return worst.excess > 1 ? worst.text : "";
}

}  // namespace bn::bench
