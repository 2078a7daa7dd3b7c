// SIMD kernels for float32, written once over a vector-traits type `V` and compiled once
// per ISA (avx2.cpp, avx512.cpp include this inside their own namespace, so the two
// instantiations never meet at link time).
//
// Two layouts get vector code; every other geometry goes to the reference kernels:
//  - planar:      a single kept group with inner >= V::W (NCHW, NCDHW, NCL): each (o, s) row is
//                 `inner` contiguous values of one feature; vectors run along the row.
//  - interleaved: a single kept group with inner == 1 (NHWC, NDHWC, NLC, dense 2D): each row
//                 holds the block's features contiguously; vectors run across features. The
//                 elementwise passes stream row by row; the reductions walk down the rows
//                 of one strip of features at a time.
// Tails are handled with masked loads and stores.
//
// Statistics, accumulated in double:
//  - planar: two passes over a cache-resident block (float runs flushed to double, WideSum):
//      pass 1: s = sum (x - x0), x0 a value of the block -> mean = x0 + s / n
//      pass 2: with m = float(mean), d = x - m (exact near the mean, Sterbenz), delta = mean - m:
//              M2 = sum (x - mean)^2 = sum d^2 - 2*delta*sum d + n*delta^2 = sum d^2 - n*delta^2
//  - interleaved: the same two passes per strip of features, back to back while the strip
//    is in L1, x0 being the block's first row.
// The backward sums are sum dy and sum dy*(x - c) with c in float, as the reference does.

namespace {

inline bool is_planar(const Geometry& g) { return g.identity() && g.inner >= V::W; }
inline bool is_interleaved(const Geometry& g) { return g.identity() && g.inner == 1; }


// Runs body(v, slot) over the contiguous run p[0, n), where v is (load(p + i)) and slot in
// 0..3 names one of four independent accumulator sets (four vectors per step, so that the
// additions of different slots overlap instead of waiting on one dependency chain). The
// masked tail goes to slot 0 with lanes past the end filled by `load_tail`.
template <class Load, class LoadTail, class Body>
inline void over_run(int64_t n, Load load, LoadTail load_tail, Body body) {
  int64_t i = 0;
  for (; i + 4 * V::W <= n; i += 4 * V::W) {
    body(load(i), 0);
    body(load(i + V::W), 1);
    body(load(i + 2 * V::W), 2);
    body(load(i + 3 * V::W), 3);
  }
  for (; i + V::W <= n; i += V::W) body(load(i), 0);
  if (i < n) body(load_tail(i, static_cast<int>(n - i)), 0);
}

// Adds widened float lanes into two double accumulators.
inline void add_wide(typename V::D* acc, typename V::F v) {
  acc[0] = V::dadd(acc[0], V::lo(v));
  acc[1] = V::dadd(acc[1], V::hi(v));
}
inline void add_wide_sq(typename V::D* acc, typename V::F v) {
  const typename V::D l = V::lo(v), h = V::hi(v);
  acc[0] = V::dfma(l, l, acc[0]);
  acc[1] = V::dfma(h, h, acc[1]);
}
// Fixed-order total of n accumulators.
inline double total(const typename V::D* acc, int n) {
  typename V::D t = acc[0];
  for (int k = 1; k < n; ++k) t = V::dadd(t, acc[k]);
  return V::dsum(t);
}

// Sums of float vectors in double, cheaply: each of four slots adds up to kRun vectors in
// float (pairwise-like: a lane sums at most kRun values), then the slot is widened and added
// to its double accumulators. The float runs only ever hold values near zero (data minus
// a point of the data, or squared deviations), so a run loses at most ~kRun ulps of values
// of the size of a deviation; every larger sum is in double.
constexpr int kRun = 8;

struct WideSum {
  typename V::F run[4];
  typename V::D acc[8];
  int steps = 0;  // steps of four vectors since the last flush
  WideSum() {
    for (auto& r : run) r = V::set1(0.0f);
    for (auto& d : acc) d = V::dzero();
  }
  void flush() {
    for (int k = 0; k < 4; ++k) {
      acc[2 * k] = V::dadd(acc[2 * k], V::lo(run[k]));
      acc[2 * k + 1] = V::dadd(acc[2 * k + 1], V::hi(run[k]));
      run[k] = V::set1(0.0f);
    }
    steps = 0;
  }
  double total() {
    flush();
    typename V::D t = acc[0];
    for (int k = 1; k < 8; ++k) t = V::dadd(t, acc[k]);
    return V::dsum(t);
  }
};

// Feeds value(i) (a vector of the run p[0, n) transformed) into `sum` via op(run, v), four
// vectors per step; the masked tail (lanes past the end must come out 0) goes to slot 0.
template <class Value, class ValueTail, class Op>
inline void sum_run(WideSum& sum, int64_t n, Value value, ValueTail value_tail, Op op) {
  int64_t i = 0;
  for (; i + 4 * V::W <= n; i += 4 * V::W) {
    for (int k = 0; k < 4; ++k) sum.run[k] = op(sum.run[k], value(i + k * V::W));
    if (++sum.steps == kRun) sum.flush();
  }
  for (; i + V::W <= n; i += V::W) sum.run[0] = op(sum.run[0], value(i));
  if (i < n) sum.run[0] = op(sum.run[0], value_tail(i, static_cast<int>(n - i)));
  sum.flush();  // the single-vector steps above bypass the step count
}

// --- statistics -----------------------------------------------------------------------
void stats_planar(const StatsArgs<float>& args, const Block& block) {
  // Local copies: stores through the output pointers cannot alias them, so the pointers and
  // sizes stay in registers.
  const StatsArgs<float> a = args;
  const Block b = block;
  const int64_t span = a.geometry.span, inner = a.geometry.inner;
  const double count = static_cast<double>((b.o1 - b.o0) * inner);
  auto add = [](typename V::F r, typename V::F v) { return V::add(r, v); };
  auto add_sq = [](typename V::F r, typename V::F v) { return V::fma(v, v, r); };
  for (int64_t s = b.s0; s < b.s1; ++s) {
    // Pass 1: the mean, summing x - x0 (x0 = the block's first value of the feature).
    const float x0 = a.x[(b.o0 * span + s) * inner];
    const typename V::F v0 = V::set1(x0);
    WideSum sum;
    for (int64_t o = b.o0; o < b.o1; ++o) {
      const float* row = a.x + (o * span + s) * inner;
      sum_run(
          sum, inner, [&](int64_t i) { return V::sub(V::load(row + i), v0); },
          [&](int64_t i, int n) { return V::subn(row + i, v0, n); }, add);
    }
    const double mean = static_cast<double>(x0) + sum.total() / count;
    // Pass 2 (the block is in cache): squared deviations from m = float(mean).
    const float mf = static_cast<float>(mean);
    const typename V::F vm = V::set1(mf);
    WideSum sq;
    for (int64_t o = b.o0; o < b.o1; ++o) {
      const float* row = a.x + (o * span + s) * inner;
      sum_run(
          sq, inner, [&](int64_t i) { return V::sub(V::load(row + i), vm); },
          [&](int64_t i, int n) { return V::subn(row + i, vm, n); }, add_sq);
    }
    // sum (x - mean)^2 = sum d^2 - n*delta^2, since sum d = n*delta exactly.
    const double delta = mean - static_cast<double>(mf);
    a.mean[s] = mean;
    a.m2[s] = sq.total() - count * delta * delta;
  }
}

// Features last: rows are walked in memory order (walking down a column of features would
// hit one cache set again and again when the row stride is a power of two). The running
// sums of a segment of at most kSegment features live in small arrays (L1): float runs of
// kRun rows, flushed to double.
constexpr int64_t kSegment = 512;

// acc[f] += sum over rows [o0, o1) of value(row, f) for f in [0, n), in float runs of kRun
// rows flushed to double; value(o, j) returns the vector of features [j, j + V::W) of row o
// with lanes past n zeroed.
template <class Value>
inline void sum_rows(int64_t o0, int64_t o1, int64_t n, double* acc, Value value) {
  alignas(64) float run[kSegment];
  for (int64_t f = 0; f < n; ++f) acc[f] = 0.0;
  for (int64_t r = o0; r < o1; r += kRun) {
    const int64_t r1 = r + kRun < o1 ? r + kRun : o1;
    for (int64_t j = 0; j < n; j += V::W) V::store(run + j, V::set1(0.0f));
    for (int64_t o = r; o < r1; ++o) {
      for (int64_t j = 0; j < n; j += V::W) V::store(run + j, V::add(V::load(run + j), value(o, j)));
    }
    for (int64_t j = 0; j < n; j += V::W) {
      const int m = static_cast<int>(n - j < V::W ? n - j : V::W);
      V::dadd_to(acc + j, V::lo(V::load(run + j)), V::hi(V::load(run + j)), m);
    }
  }
}

void stats_interleaved(const StatsArgs<float>& args, const Block& block) {
  const StatsArgs<float> a = args;
  const Block b = block;
  const int64_t span = a.geometry.span;
  const double count = static_cast<double>(b.o1 - b.o0);
  alignas(64) float center[kSegment];
  for (int64_t s0 = b.s0; s0 < b.s1; s0 += kSegment) {
    const int64_t n = b.s1 - s0 < kSegment ? b.s1 - s0 : kSegment;
    const float* first = a.x + b.o0 * span + s0;
    double* mean = a.mean + s0;
    double* m2 = a.m2 + s0;
    auto width = [&](int64_t j) { return static_cast<int>(n - j < V::W ? n - j : V::W); };
    // Pass 1: sums of x - x0 (x0 = the block's first row) -> mean.
    sum_rows(b.o0, b.o1, n, mean, [&](int64_t o, int64_t j) {
      return V::sub(V::loadn(a.x + o * span + s0 + j, width(j)), V::loadn(first + j, width(j)));
    });
    for (int64_t f = 0; f < n; ++f) {
      mean[f] = static_cast<double>(first[f]) + mean[f] / count;
      center[f] = static_cast<float>(mean[f]);
    }
    // Pass 2 (the block is in cache): squared deviations from float(mean);
    // sum (x - mean)^2 = sum d^2 - n*delta^2.
    sum_rows(b.o0, b.o1, n, m2, [&](int64_t o, int64_t j) {
      const typename V::F d = V::subn(a.x + o * span + s0 + j, V::load(center + j), width(j));
      return V::fma(d, d, V::set1(0.0f));
    });
    for (int64_t f = 0; f < n; ++f) {
      const double delta = mean[f] - static_cast<double>(center[f]);
      m2[f] -= count * delta * delta;
    }
  }
}

void stats_simd(const StatsArgs<float>& args, const Block& block) {
  // Local copies: stores through the output pointers cannot alias them, so the pointers and
  // sizes stay in registers.
  const StatsArgs<float> a = args;
  const Block b = block;
  if (is_planar(a.geometry)) return stats_planar(a, b);
  if (is_interleaved(a.geometry)) return stats_interleaved(a, b);
  reference_f32().stats(a, b);
}

// --- normalize: y = fma(x - c, k, t) -------------------------------------------------
void normalize_simd(const NormalizeArgs<float>& args, const Block& block) {
  // Local copies: stores through the output pointers cannot alias them, so the pointers and
  // sizes stay in registers.
  const NormalizeArgs<float> a = args;
  const Block b = block;
  const Geometry& g = a.geometry;
  if (is_planar(g)) {
    const int64_t full = g.inner / V::W * V::W;
    const int tail = static_cast<int>(g.inner - full);
    for (int64_t o = b.o0; o < b.o1; ++o) {
      for (int64_t s = b.s0; s < b.s1; ++s) {
        const int64_t base = (o * g.span + s) * g.inner;
        const typename V::F c = V::set1(a.center[s]), k = V::set1(a.scale[s]), t = V::set1(a.shift[s]);
        for (int64_t i = 0; i < full; i += V::W) {
          V::store(a.y + base + i, V::fma(V::sub(V::load(a.x + base + i), c), k, t));
        }
        if (tail) V::storen(a.y + base + full, V::fma(V::sub(V::loadn(a.x + base + full, tail), c), k, t), tail);
      }
    }
    return;
  }
  if (is_interleaved(g)) {
    const int64_t full = b.s0 + (b.s1 - b.s0) / V::W * V::W;
    const int tail = static_cast<int>(b.s1 - full);
    for (int64_t o = b.o0; o < b.o1; ++o) {
      const float* x = a.x + o * g.span;
      float* y = a.y + o * g.span;
      for (int64_t j = b.s0; j < full; j += V::W) {
        V::store(y + j, V::fma(V::sub(V::load(x + j), V::load(a.center + j)), V::load(a.scale + j), V::load(a.shift + j)));
      }
      if (tail) {
        V::storen(y + full, V::fma(V::sub(V::loadn(x + full, tail), V::loadn(a.center + full, tail)),
                                   V::loadn(a.scale + full, tail), V::loadn(a.shift + full, tail)), tail);
      }
    }
    return;
  }
  reference_f32().normalize(a, b);
}

// --- backward sums: sum dy, sum dy*(x - c) ---------------------------------------------
void backward_sums_simd(const BackwardSumsArgs<float>& args, const Block& block) {
  // Local copies: stores through the output pointers cannot alias them, so the pointers and
  // sizes stay in registers.
  const BackwardSumsArgs<float> a = args;
  const Block b = block;
  const Geometry& g = a.geometry;
  if (is_planar(g)) {
    const int64_t span = g.span, inner = g.inner;
    for (int64_t s = b.s0; s < b.s1; ++s) {
      const typename V::F c = V::set1(a.center[s]);
      WideSum ys, ps;
      auto step = [&](typename V::F vy, typename V::F d, int k) {
        ys.run[k] = V::add(ys.run[k], vy);
        ps.run[k] = V::fma(vy, d, ps.run[k]);
      };
      for (int64_t o = b.o0; o < b.o1; ++o) {
        const int64_t base = (o * span + s) * inner;
        const float* x = a.x + base;
        const float* dy = a.dy + base;
        int64_t i = 0;
        for (; i + 4 * V::W <= inner; i += 4 * V::W) {
          for (int k = 0; k < 4; ++k) step(V::load(dy + i + k * V::W), V::sub(V::load(x + i + k * V::W), c), k);
          if (++ys.steps == kRun) {
            ys.flush();
            ps.flush();
          }
        }
        for (; i + V::W <= inner; i += V::W) step(V::load(dy + i), V::sub(V::load(x + i), c), 0);
        if (i < inner) {
          const int n = static_cast<int>(inner - i);
          step(V::loadn(dy + i, n), V::subn(x + i, c, n), 0);
        }
        ys.flush();
        ps.flush();
      }
      a.sum_dy[s] = ys.total();
      a.sum_dyxc[s] = ps.total();
    }
    return;
  }
  if (is_interleaved(g)) {
    for (int64_t s0 = b.s0; s0 < b.s1; s0 += kSegment) {
      const int64_t n = b.s1 - s0 < kSegment ? b.s1 - s0 : kSegment;
      auto width = [&](int64_t j) { return static_cast<int>(n - j < V::W ? n - j : V::W); };
      sum_rows(b.o0, b.o1, n, a.sum_dy + s0,
               [&](int64_t o, int64_t j) { return V::loadn(a.dy + o * g.span + s0 + j, width(j)); });
      sum_rows(b.o0, b.o1, n, a.sum_dyxc + s0, [&](int64_t o, int64_t j) {
        const int64_t at = o * g.span + s0 + j;
        return V::fma(V::loadn(a.dy + at, width(j)), V::subn(a.x + at, V::loadn(a.center + s0 + j, width(j)), width(j)),
                      V::set1(0.0f));
      });
    }
    return;
  }
  reference_f32().backward_sums(a, b);
}

// --- backward dx = fma(k_dy, dy, fma(k_x, x - c, k_c)) ---------------------------------
void backward_dx_simd(const BackwardDxArgs<float>& args, const Block& block) {
  // Local copies: stores through the output pointers cannot alias them, so the pointers and
  // sizes stay in registers.
  const BackwardDxArgs<float> a = args;
  const Block b = block;
  const Geometry& g = a.geometry;
  auto dx_of = [](typename V::F x, typename V::F dy, typename V::F c, typename V::F kdy, typename V::F kx,
                  typename V::F kc) { return V::fma(kdy, dy, V::fma(kx, V::sub(x, c), kc)); };
  if (is_planar(g)) {
    const int64_t full = g.inner / V::W * V::W;
    const int tail = static_cast<int>(g.inner - full);
    for (int64_t o = b.o0; o < b.o1; ++o) {
      for (int64_t s = b.s0; s < b.s1; ++s) {
        const int64_t base = (o * g.span + s) * g.inner;
        const typename V::F c = V::set1(a.center[s]), kdy = V::set1(a.k_dy[s]), kx = V::set1(a.k_x[s]),
                            kc = V::set1(a.k_c[s]);
        for (int64_t i = 0; i < full; i += V::W) {
          V::store(a.dx + base + i, dx_of(V::load(a.x + base + i), V::load(a.dy + base + i), c, kdy, kx, kc));
        }
        if (tail) {
          V::storen(a.dx + base + full,
                    dx_of(V::loadn(a.x + base + full, tail), V::loadn(a.dy + base + full, tail), c, kdy, kx, kc),
                    tail);
        }
      }
    }
    return;
  }
  if (is_interleaved(g)) {
    const int64_t full = b.s0 + (b.s1 - b.s0) / V::W * V::W;
    const int tail = static_cast<int>(b.s1 - full);
    for (int64_t o = b.o0; o < b.o1; ++o) {
      const int64_t row = o * g.span;
      for (int64_t j = b.s0; j < full; j += V::W) {
        V::store(a.dx + row + j, dx_of(V::load(a.x + row + j), V::load(a.dy + row + j), V::load(a.center + j),
                                       V::load(a.k_dy + j), V::load(a.k_x + j), V::load(a.k_c + j)));
      }
      if (tail) {
        V::storen(a.dx + row + full,
                  dx_of(V::loadn(a.x + row + full, tail), V::loadn(a.dy + row + full, tail),
                        V::loadn(a.center + full, tail), V::loadn(a.k_dy + full, tail),
                        V::loadn(a.k_x + full, tail), V::loadn(a.k_c + full, tail)),
                  tail);
      }
    }
    return;
  }
  reference_f32().backward_dx(a, b);
}

}  // namespace

const KernelTable<float> kTableF32{kIsaName, &stats_simd, &normalize_simd, &backward_sums_simd, &backward_dx_simd};
