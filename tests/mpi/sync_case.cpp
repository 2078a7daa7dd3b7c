#include "sync_case.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "batchnorm/batchnorm_mpi.h"
#include "compare.hpp"
#include "data_gen.hpp"
#include "half_ref.hpp"
#include "harness.hpp"
#include "reference.hpp"

namespace bn_mpi_test {
namespace {

// Tolerances, relative to the magnitude of the terms behind each result (see run_step): f64
// layers get f64 rounding (1e-12, a few thousand ulps for sums over tens of elements in
// another order), f32 layers 8 float ulps.
constexpr double kRelF64 = 1e-12;
constexpr double kRelF32 = 8.0 / 16777216.0;
constexpr double kLearningRate = 0.1;
constexpr double kEpsilon = 1e-3;  // Keras' default, left as it is by make_config

size_t element_size(bn_dtype dtype) {
  return dtype == BN_F64 ? sizeof(double) : dtype == BN_F32 ? sizeof(float) : sizeof(uint16_t);
}

bool is_half(bn_dtype dtype) {
  return dtype == BN_BF16 || dtype == BN_F16;
}
bn_test::HalfFormat half_format(bn_dtype dtype) {
  return dtype == BN_BF16 ? bn_test::kBfloat16 : bn_test::kBinary16;
}

std::vector<bool> kept_dims(const std::vector<int64_t>& shape, const std::vector<int32_t>& axes) {
  std::vector<bool> kept(shape.size(), false);
  for (int32_t a : axes) kept[static_cast<size_t>(a < 0 ? a + static_cast<int32_t>(shape.size()) : a)] = true;
  return kept;
}

std::vector<int64_t> with_batch(int64_t batch, const std::vector<int64_t>& sample) {
  std::vector<int64_t> shape{batch};
  shape.insert(shape.end(), sample.begin(), sample.end());
  return shape;
}

double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double e : v) m = std::max(m, std::fabs(e));
  return m;
}

// A byte buffer never empty, so that an empty shard still passes a non-NULL pointer.
struct Bytes {
  std::vector<unsigned char> b;
  explicit Bytes(size_t n = 0) : b(std::max<size_t>(n, 16), 0xA5) {}
  void* data() { return b.data(); }
};

Bytes slice(const std::vector<unsigned char>& all, size_t first, size_t count) {
  Bytes out(count);
  if (count > 0) std::memcpy(out.data(), all.data() + first, count);
  return out;
}

std::vector<double> bytes_to_doubles(const Bytes& bytes, size_t count, bn_dtype dtype) {
  std::vector<unsigned char> b(bytes.b.begin(),
                               bytes.b.begin() + static_cast<std::ptrdiff_t>(count * element_size(dtype)));
  return from_bytes(b, dtype);
}

bool all_ranks(bool ok, MPI_Comm comm) {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, comm);
  return all == 1;
}

struct Layers {
  bn_layer* ref = nullptr;
  bn_layer* sync = nullptr;
  ~Layers() {
    bn_destroy(ref);
    bn_destroy(sync);
  }
};

bn_layer* create_layer(bn_config* cfg, const std::vector<int64_t>& shape, const std::string& what) {
  bn_layer* layer = nullptr;
  if (cfg == nullptr) return nullptr;
  if (!check_status(bn_create(cfg, shape.data(), static_cast<int32_t>(shape.size()), &layer), BN_OK,
                    "bn_create (" + what + ")"))
    return nullptr;
  check_status(bn_set_training(layer, 1), BN_OK, "bn_set_training");
  check_status(bn_set_num_threads(layer, 1), BN_OK, "bn_set_num_threads");
  return layer;
}

// gamma -= lr*dgamma, beta -= lr*dbeta, stored in the layer's parameter type.
void sgd(bn_layer* layer, bn_dtype dtype, const std::vector<double>& dgamma, const std::vector<double>& dbeta) {
  const bn_param which[2] = {BN_PARAM_GAMMA, BN_PARAM_BETA};
  const std::vector<double>* grads[2] = {&dgamma, &dbeta};
  const bn_dtype param_dtype = dtype == BN_F64 ? BN_F64 : BN_F32;
  for (int k = 0; k < 2; ++k) {
    std::vector<double> p = get_param(layer, which[k], dtype);
    for (size_t f = 0; f < p.size(); ++f) p[f] -= kLearningRate * (*grads[k])[f];
    const std::vector<unsigned char> bytes = to_bytes(p, param_dtype);
    check_status(bn_set_param(layer, which[k], bytes.data(), static_cast<int64_t>(p.size())), BN_OK, "bn_set_param");
  }
}

struct Context {
  const SyncCase& c;
  MPI_Comm comm;
  int rank, ranks;
  std::vector<int64_t> global, local;
  int64_t row_elems, first_row, features;
  std::vector<int64_t> fmap;  // feature of each element of the global batch
};

void compare(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
             const std::vector<double>& mag, double rel) {
  const bn_test::Comparison cmp = bn_test::compare_scaled(what, got, want, mag, rel);
  check(cmp.ok, cmp.message);
}

// One training step on both layers; compares the shard's y and dx with the reference's rows,
// the summed dgamma/dbeta and the statistics with the reference's, and the shared parameters'
// bits across ranks; then applies the same SGD step to both.
void run_step(const Context& k, Layers& layers, int step) {
  const SyncCase& c = k.c;
  const bn_dtype pdt = c.dtype == BN_F64 ? BN_F64 : BN_F32;
  const size_t es = element_size(c.dtype), ps = element_size(pdt);
  const size_t n_global = static_cast<size_t>(bn_test::element_count(k.global));
  const size_t n_local = static_cast<size_t>(bn_test::element_count(k.local));
  const size_t first = static_cast<size_t>(k.first_row * k.row_elems);
  const size_t nf = static_cast<size_t>(k.features);
  const std::string at = c.name + " step " + std::to_string(step);

  const std::vector<double> x = case_x(c, k.global, step), dy = case_dy(c, k.global, step);
  const std::vector<unsigned char> xb = to_bytes(x, c.dtype), dyb = to_bytes(dy, c.dtype);
  const std::vector<double> gamma = get_param(layers.ref, BN_PARAM_GAMMA, c.dtype);
  const std::vector<double> beta = get_param(layers.ref, BN_PARAM_BETA, c.dtype);

  // The reference: one process, the whole batch (with a residual: the epilogue's calls).
  const std::vector<double> r = c.residual ? case_residual(c, k.global, step) : std::vector<double>();
  const std::vector<unsigned char> rb = to_bytes(r, c.dtype);
  Bytes y_ref(n_global * es), dx_ref(n_global * es), dr_ref(n_global * es), dg_ref(nf * ps), db_ref(nf * ps);
  const int32_t gd = static_cast<int32_t>(k.global.size());
  if (c.residual) {
    check_status(bn_forward_residual(layers.ref, k.global.data(), gd, xb.data(), rb.data(), y_ref.data()), BN_OK,
                 at + ": reference forward");
    check_status(bn_backward_residual(layers.ref, k.global.data(), gd, xb.data(), y_ref.data(), dyb.data(),
                                      dx_ref.data(), dr_ref.data(), dg_ref.data(), db_ref.data()),
                 BN_OK, at + ": reference backward");
  } else {
    check_status(bn_forward(layers.ref, k.global.data(), gd, xb.data(), y_ref.data()), BN_OK,
                 at + ": reference forward");
    check_status(bn_backward(layers.ref, k.global.data(), gd, xb.data(), dyb.data(), dx_ref.data(), dg_ref.data(),
                             db_ref.data()),
                 BN_OK, at + ": reference backward");
  }

  // This rank's shard through the synchronized layer.
  Bytes xl = slice(xb, first * es, n_local * es), dyl = slice(dyb, first * es, n_local * es);
  Bytes y(n_local * es), dx(n_local * es), dr(n_local * es), dg(nf * ps), db(nf * ps);
  const int32_t ld = static_cast<int32_t>(k.local.size());
  if (c.residual) {
    Bytes rl = slice(rb, first * es, n_local * es);
    check_status(bn_forward_residual(layers.sync, k.local.data(), ld, xl.data(), rl.data(), y.data()), BN_OK,
                 at + ": synchronized forward");
    check_status(bn_backward_residual(layers.sync, k.local.data(), ld, xl.data(), y.data(), dyl.data(), dx.data(),
                                      dr.data(), dg.data(), db.data()),
                 BN_OK, at + ": synchronized backward");
  } else {
    check_status(bn_forward(layers.sync, k.local.data(), ld, xl.data(), y.data()), BN_OK,
                 at + ": synchronized forward");
    check_status(bn_backward(layers.sync, k.local.data(), ld, xl.data(), dyl.data(), dx.data(), dg.data(), db.data()),
                 BN_OK, at + ": synchronized backward");
  }

  // dgamma/dbeta: each replica's share; their sum is the global gradient.
  std::vector<double> dg_sum = bytes_to_doubles(dg, nf, pdt), db_sum = bytes_to_doubles(db, nf, pdt);
  MPI_Allreduce(MPI_IN_PLACE, dg_sum.data(), static_cast<int>(nf), MPI_DOUBLE, MPI_SUM, k.comm);
  MPI_Allreduce(MPI_IN_PLACE, db_sum.data(), static_cast<int>(nf), MPI_DOUBLE, MPI_SUM, k.comm);

  // Magnitudes of the terms behind each result. C = (|x| + |mean|) / sqrt(var + eps) bounds how
  // much the rounding of the statistics is amplified (with ghost batches a ghost's variance may
  // be below the batch's: 4x margin).
  const std::vector<double> batch_var = get_param(layers.ref, BN_PARAM_BATCH_VARIANCE, c.dtype);
  const double min_var = batch_var.empty() ? 0.0 : *std::min_element(batch_var.begin(), batch_var.end());
  const double inv_std = (c.ghost > 0 ? 4.0 : 1.0) / std::sqrt(std::max(min_var, 0.0) + kEpsilon);
  const double xmax = max_abs(x), dymax = max_abs(dy), gmax = max_abs(gamma), bmax = max_abs(beta);
  const double cond = 1.0 + 2.0 * xmax * inv_std;
  const double rel = c.dtype == BN_F64 ? kRelF64 : kRelF32;
  std::vector<double> sum_dy(nf, 0.0);
  for (size_t i = 0; i < n_global; ++i) sum_dy[static_cast<size_t>(k.fmap[i])] += std::fabs(dy[i]);
  std::vector<double> mag_dg(nf), mag_db(nf);
  for (size_t f = 0; f < nf; ++f) {
    mag_dg[f] = 4.0 * cond * sum_dy[f] + 1.0;  // + 1: the regularizer's share
    mag_db[f] = 4.0 * sum_dy[f] + 1.0;
  }

  const std::vector<double> y_want = bytes_to_doubles(y_ref, n_global, c.dtype);
  const std::vector<double> dx_want = bytes_to_doubles(dx_ref, n_global, c.dtype);
  auto rows = [&](const std::vector<double>& v) {
    return std::vector<double>(v.begin() + static_cast<std::ptrdiff_t>(first),
                               v.begin() + static_cast<std::ptrdiff_t>(first + n_local));
  };
  // Outputs: as the parameters, plus (16-bit layers) one ulp of the 16-bit result.
  auto compare_out = [&](const std::string& what, const Bytes& got, const std::vector<double>& want, double mag) {
    std::vector<double> tol(n_local, rel * mag);
    if (is_half(c.dtype))
      for (size_t i = 0; i < n_local; ++i) tol[i] += half_format(c.dtype).ulp(want[i]);
    compare(at + ": " + what, bytes_to_doubles(got, n_local, c.dtype), want, tol, 1.0);
  };
  compare_out("y", y, rows(y_want), cond * gmax + bmax + max_abs(r));
  compare_out("dx", dx, rows(dx_want), 4.0 * cond * gmax * inv_std * dymax);
  if (c.residual) compare_out("dresidual", dr, rows(bytes_to_doubles(dr_ref, n_global, c.dtype)), dymax);
  compare(at + ": dgamma summed over ranks", dg_sum, bytes_to_doubles(dg_ref, nf, pdt), mag_dg, rel);
  compare(at + ": dbeta summed over ranks", db_sum, bytes_to_doubles(db_ref, nf, pdt), mag_db, rel);

  // Statistics against the reference, and the same bits on every rank.
  std::vector<unsigned char> shared;
  for (bn_param p : shared_params(c)) {
    const std::vector<double> got = get_param(layers.sync, p, c.dtype);
    const std::vector<unsigned char> bytes = to_bytes(got, pdt);
    shared.insert(shared.end(), bytes.begin(), bytes.end());
    if (p == BN_PARAM_GAMMA || p == BN_PARAM_BETA) continue;  // equal so far by construction
    const bool variance = p == BN_PARAM_MOVING_VARIANCE || p == BN_PARAM_BATCH_VARIANCE;
    const double scale = variance ? 4.0 * cond * xmax * xmax + 1.0 : 4.0 * cond * (xmax + 1.0);
    compare(at + ": param " + std::to_string(p), got, get_param(layers.ref, p, c.dtype), std::vector<double>(nf, scale),
            rel);
  }
  check(same_on_all_ranks(shared, k.comm), at + ": parameters and statistics differ between ranks");

  sgd(layers.ref, c.dtype, bytes_to_doubles(dg_ref, nf, pdt), bytes_to_doubles(db_ref, nf, pdt));
  sgd(layers.sync, c.dtype, dg_sum, db_sum);
}

}  // namespace

std::vector<int64_t> even_shards(int ranks, int64_t per) {
  return std::vector<int64_t>(static_cast<size_t>(ranks), per);
}

std::vector<int64_t> uneven_shards(int ranks) {
  std::vector<int64_t> s;
  for (int r = 0; r < ranks; ++r) s.push_back(2 + (r * 5) % 7);
  return s;
}

std::vector<int64_t> empty_shards(int ranks) {
  std::vector<int64_t> s;
  for (int r = 0; r < ranks; ++r) s.push_back(r == 1 ? 0 : 3 + r);
  return s;
}

static size_t param_count_guard(int64_t n) {
  return static_cast<size_t>(n < 0 ? 0 : n);
}

std::vector<double> get_param(const bn_layer* layer, bn_param which, bn_dtype dtype) {
  const size_t n = param_count_guard(bn_num_features(layer));
  const bn_dtype pdt = dtype == BN_F64 ? BN_F64 : BN_F32;
  std::vector<unsigned char> bytes(std::max<size_t>(n, 1) * element_size(pdt));
  if (!check_status(bn_get_param(layer, which, bytes.data(), static_cast<int64_t>(n)), BN_OK,
                    "bn_get_param(" + std::to_string(which) + ")"))
    return std::vector<double>(n, 0.0);
  bytes.resize(n * element_size(pdt));
  return from_bytes(bytes, pdt);
}

std::vector<unsigned char> to_bytes(const std::vector<double>& v, bn_dtype dtype) {
  std::vector<unsigned char> b(v.size() * element_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == BN_F64) {
      std::memcpy(b.data() + i * sizeof(double), &v[i], sizeof(double));
    } else if (is_half(dtype)) {
      const uint16_t h = bn_test::half_encode(half_format(dtype), v[i]);
      std::memcpy(b.data() + i * sizeof(uint16_t), &h, sizeof(uint16_t));
    } else {
      const float f = static_cast<float>(v[i]);
      std::memcpy(b.data() + i * sizeof(float), &f, sizeof(float));
    }
  }
  return b;
}

std::vector<double> from_bytes(const std::vector<unsigned char>& b, bn_dtype dtype) {
  std::vector<double> v(b.size() / element_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == BN_F64) {
      std::memcpy(&v[i], b.data() + i * sizeof(double), sizeof(double));
    } else if (is_half(dtype)) {
      uint16_t h = 0;
      std::memcpy(&h, b.data() + i * sizeof(uint16_t), sizeof(uint16_t));
      v[i] = bn_test::half_decode(half_format(dtype), h);
    } else {
      float f = 0.0f;
      std::memcpy(&f, b.data() + i * sizeof(float), sizeof(float));
      v[i] = f;
    }
  }
  return v;
}

// Values exactly representable in the case's dtype.
static std::vector<double> representable(std::vector<double> v, bn_dtype dtype) {
  if (is_half(dtype))
    for (double& e : v) e = bn_test::half_round(half_format(dtype), e);
  return v;
}

std::vector<double> case_x(const SyncCase& c, const std::vector<int64_t>& shape, int step) {
  bn_test::DataGen gen(c.seed * 1000 + static_cast<uint64_t>(step) * 3);
  const bn_test::RefDtype rd = c.dtype == BN_F64 ? bn_test::RefDtype::f64 : bn_test::RefDtype::f32;
  return representable(gen.per_feature(shape, kept_dims(shape, c.axes), c.offset, c.spread_lo, c.spread_hi, rd),
                       c.dtype);
}

std::vector<double> case_dy(const SyncCase& c, const std::vector<int64_t>& shape, int step) {
  bn_test::DataGen gen(c.seed * 1000 + static_cast<uint64_t>(step) * 3 + 1);
  const bn_test::RefDtype rd = c.dtype == BN_F64 ? bn_test::RefDtype::f64 : bn_test::RefDtype::f32;
  return representable(gen.normal(static_cast<size_t>(bn_test::element_count(shape)), 0.1, 1.0, rd), c.dtype);
}

std::vector<double> case_residual(const SyncCase& c, const std::vector<int64_t>& shape, int step) {
  bn_test::DataGen gen(c.seed * 1000 + static_cast<uint64_t>(step) * 3 + 2);
  const bn_test::RefDtype rd = c.dtype == BN_F64 ? bn_test::RefDtype::f64 : bn_test::RefDtype::f32;
  return representable(gen.normal(static_cast<size_t>(bn_test::element_count(shape)), 0.0, 0.5, rd), c.dtype);
}

std::vector<bn_param> shared_params(const SyncCase& c) {
  std::vector<bn_param> p{BN_PARAM_GAMMA,           BN_PARAM_BETA,       BN_PARAM_MOVING_MEAN,
                          BN_PARAM_MOVING_VARIANCE, BN_PARAM_BATCH_MEAN, BN_PARAM_BATCH_VARIANCE};
  if (c.renorm) {
    p.push_back(BN_PARAM_RENORM_MEAN);
    p.push_back(BN_PARAM_RENORM_STDDEV);
    p.push_back(BN_PARAM_MOVING_STDDEV);
  }
  return p;
}

bool same_on_all_ranks(const std::vector<unsigned char>& bytes, MPI_Comm comm) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  long long n = static_cast<long long>(bytes.size());
  MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, comm);
  std::vector<unsigned char> root(bytes);
  root.resize(static_cast<size_t>(n));
  MPI_Bcast(root.data(), static_cast<int>(n), MPI_UNSIGNED_CHAR, 0, comm);
  const bool same = root == bytes;
  return all_ranks(same, comm);
}

bn_config* make_config(const SyncCase& c, int64_t virtual_batch) {
  bn_config* cfg = nullptr;
  if (!check_status(bn_config_create(&cfg), BN_OK, "bn_config_create")) return nullptr;
  bool ok = check_status(bn_config_set_axes(cfg, c.axes.data(), static_cast<int32_t>(c.axes.size())), BN_OK,
                         "bn_config_set_axes");
  ok &= check_status(bn_config_set_dtype(cfg, c.dtype), BN_OK, "bn_config_set_dtype");
  ok &= check_status(bn_config_set_momentum(cfg, 0.9), BN_OK, "bn_config_set_momentum");
  ok &= check_status(bn_config_set_fused(cfg, c.fused), BN_OK, "bn_config_set_fused");
  if (c.renorm) ok &= check_status(bn_config_set_renorm(cfg, 1, 1.2, 0.8, 0.3, 0.9), BN_OK, "bn_config_set_renorm");
  if (virtual_batch > 0)
    ok &= check_status(bn_config_set_virtual_batch_size(cfg, virtual_batch), BN_OK, "bn_config_set_virtual_batch_size");
  if (c.regularized) {
    ok &= check_status(bn_config_set_regularizer(cfg, BN_PARAM_GAMMA, 0.01, 0.02), BN_OK, "bn_config_set_regularizer");
    ok &= check_status(bn_config_set_regularizer(cfg, BN_PARAM_BETA, 0.03, 0.01), BN_OK, "bn_config_set_regularizer");
  }
  if (c.relu) ok &= check_status(bn_config_set_relu(cfg, 1), BN_OK, "bn_config_set_relu");
  if (c.moving_variance != BN_MOVING_VARIANCE_AUTO)
    ok &= check_status(bn_config_set_moving_variance(cfg, c.moving_variance), BN_OK, "bn_config_set_moving_variance");
  if (!ok) {
    bn_config_destroy(cfg);
    return nullptr;
  }
  return cfg;
}

void run_sync_case(const SyncCase& c, const Sync& sync) {
  Context k{c, sync.comm, 0, 0, {}, {}, 1, 0, 0, {}};
  MPI_Comm_rank(sync.comm, &k.rank);
  MPI_Comm_size(sync.comm, &k.ranks);
  if (!check(c.shards.size() == static_cast<size_t>(k.ranks), c.name + ": one shard per rank")) return;
  int64_t total = 0;
  for (int r = 0; r < k.ranks; ++r) {
    if (r == k.rank) k.first_row = total;
    total += c.shards[static_cast<size_t>(r)];
  }
  k.global = with_batch(total, c.sample);
  k.local = with_batch(c.shards[static_cast<size_t>(k.rank)], c.sample);
  k.row_elems = bn_test::element_count(c.sample);
  k.fmap = bn_test::feature_index_map(k.global, kept_dims(k.global, c.axes));

  // Keras SyncBatchNormalization's ghost batches: each replica's ghost g joins the others'
  // ghost g, which is one process's ghost g of the concatenated batch with P times the size.
  // With a callback, fused AUTO means OFF (Keras: synchronized forces the non-fused path), so
  // the one-process reference of an AUTO case runs with fused OFF.
  SyncCase ref_case = c;
  if (c.fused == BN_FUSED_AUTO) ref_case.fused = BN_FUSED_OFF;
  bn_config* ref_cfg = make_config(ref_case, c.ghost * k.ranks);
  bn_config* sync_cfg = make_config(c, c.ghost);
  if (sync_cfg != nullptr) {
    const bn_status st = sync.fn != nullptr ? bn_config_set_allreduce(sync_cfg, sync.fn, sync.user_data)
                                            : bn_config_set_mpi(sync_cfg, sync.comm);
    if (!check_status(
            st, BN_OK,
            c.name + ": attaching the callback (bn_mpi_last_error: " + std::string(bn_mpi_last_error()) + ")")) {
      bn_config_destroy(sync_cfg);
      sync_cfg = nullptr;
    }
  }
  Layers layers;
  layers.ref = create_layer(ref_cfg, k.global, c.name + " reference");
  layers.sync = create_layer(sync_cfg, k.local, c.name + " synchronized");
  bn_config_destroy(ref_cfg);
  bn_config_destroy(sync_cfg);
  if (!all_ranks(layers.ref != nullptr && layers.sync != nullptr, k.comm)) {
    check(false, c.name + ": a layer could not be built on some rank; the case is not run");
    return;
  }
  k.features = bn_num_features(layers.ref);
  for (int step = 0; step < c.steps; ++step) run_step(k, layers, step);
}

}  // namespace bn_mpi_test
