// Cross-replica statistics (synchronized batch normalization): the collectives of a layer
// with an allreduce callback.
#include <cmath>
#include <string>

#include "layer/error.hpp"
#include "layer/layer.hpp"
#include "layer/layer_internal.hpp"

namespace bn {

// ---------------------------------------------------------------------------
// With an allreduce callback a training forward computes its statistics, and the backward its
// reductions, over the global batch: the concatenation of every replica's batch. The callback
// sums doubles in place across the replicas and must leave the same values on every replica;
// every decision below is taken from those sums, so all replicas take it alike and call the
// callback the same number of times with the same counts.
//
// Forward. Each replica r computes per feature its local count n_r, mean m_r and
// M2_r = sum (x - m_r)^2 as without a callback (two-pass blocks merged with Chan's formula).
// The global moments are
//   N = sum_r n_r,   mean = sum_r n_r m_r / N,   M2 = sum_r [M2_r + n_r (m_r - mean)^2].
// Round 1 (always one collective of 2 + 2F doubles, F features): around a shift K per feature
// that is bitwise the same on every replica (the global mean of the previous synchronized
// training forward, 0 before the first), with d_r = m_r - K, the replica sends
//   [ n_r,  1,  n_r d_r (F values),  M2_r + n_r d_r^2 (F values) ]
// whose sums are N, the replica count R, S1 = sum_r n_r d_r and S2 = sum_r (M2_r + n_r d_r^2)
// (= sum (x - K)^2 over the global batch). Then
//   mean = K + S1/N,   M2 = S2 - S1^2/N.
// Never E[x^2] - E[x]^2 around 0: the subtraction only cancels as far as K is off the mean,
// with a relative error of about (S2/M2) * (R + 2) * 2^-53. When S2 > 2^12 * M2 for some
// feature (K more than 64 standard deviations away: more than 12 of the 53 bits would be
// lost), round 2 (one collective of P <= F doubles) sends for those P features the exactly
// centred
//   M2_r + n_r (m_r - mean)^2
// around the global mean now known (from the local moments: no second pass over the data);
// its sum is M2 with a relative error of about R * 2^-53. Batch means move little from step
// to step, so round 2 happens on the first step (K = 0) or after a jump of the data.
// With R = 1 the local moments are the global ones and are used as they are (bitwise the
// layer without a callback). An empty replica (n_r = 0) sends zeros and receives the global
// statistics. Non-finite sums (NaN or infinity in the data) skip round 2: the statistics are
// not finite either way.
//
// Backward of a forward that normalized with the batch statistics: one collective of 2F
// doubles, the local sum(dy) and sum(dy*(x - mean)) per feature; dx uses the global sums and
// count. dgamma and dbeta are the replica's share, from its local sums (their sum over the
// replicas is the gradient of the global batch).
//
// Ghost batches follow Keras' SyncBatchNormalization: each replica views its batch as
// (vbs, G, ...) and the statistics of ghost j are those of the union of every replica's ghost
// j, so F = G*C above (the same local batch size on every replica).
namespace {

constexpr double kShiftLimit = 4096.0;  // 2^12: round 2 when S2 > kShiftLimit * M2

}  // namespace

void Layer::SyncScratch::resize(size_t features) {
  buffer.assign(2 + 2 * features, 0.0);
  mean.assign(features, 0.0);
  m2.assign(features, 0.0);
  poor.assign(features, 0);
}

void Layer::allreduce(double* buffer, int64_t count, const char* what) {
  if (!config_.allreduce(buffer, count)) {
    fail(Status::callback, std::string("the allreduce callback reported failure (") + what + ", count " +
                               std::to_string(count) + "); nothing changed");
  }
}

double Layer::reduce_moments(SyncScratch& s, int64_t features, double count, double* mean, double* m2,
                             double& replicas) {
  const int64_t c = axes_.features;
  double* buf = s.buffer.data();
  buf[0] = count;
  buf[1] = 1.0;
  for (int64_t v = 0; v < features; ++v) {
    s.mean[v] = mean[v];
    s.m2[v] = m2[v];
    const double d = mean[v] - sync_shift_[v % c];
    buf[2 + v] = count * d;
    buf[2 + features + v] = m2[v] + count * d * d;
  }
  allreduce(buf, 2 + 2 * features, "round 1 of the forward's statistics");
  const double n = buf[0];
  replicas = buf[1];
  if (replicas == 1.0) return count;  // mean and m2 still hold the local moments
  int64_t poor = 0;
  for (int64_t v = 0; v < features; ++v) {
    if (!(n > 0)) {
      mean[v] = 0.0;
      m2[v] = 0.0;
      continue;
    }
    const double s1 = buf[2 + v], s2 = buf[2 + features + v];
    mean[v] = sync_shift_[v % c] + s1 / n;
    m2[v] = s2 - s1 * s1 / n;
    if (std::isfinite(s1) && std::isfinite(s2) && s2 > kShiftLimit * m2[v]) s.poor[poor++] = v;
  }
  if (poor > 0) {
    for (int64_t i = 0; i < poor; ++i) {
      const int64_t v = s.poor[i];
      const double e = s.mean[v] - mean[v];
      buf[i] = s.m2[v] + count * e * e;
    }
    allreduce(buf, poor, "round 2 of the forward's statistics");
    for (int64_t i = 0; i < poor; ++i) m2[s.poor[i]] = buf[i];
  }
  return n;
}

}  // namespace bn
