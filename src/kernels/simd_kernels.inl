// SIMD kernels, written once over a vector-traits type `V` and an element type E (float,
// bf16, f16), and compiled once per ISA (avx2.cpp, avx512.cpp include this inside their own
// namespace, so the instantiations never meet at link time). They compute in float vectors:
// V::load / V::loadn / V::store / V::storen are overloaded on the element pointer type, and
// widen 16-bit elements to float on load and round to nearest even on store, so a 16-bit
// kernel computes exactly what the float kernel computes on the same values.
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
template <class E>
void stats_planar(const StatsArgs<E>& args, const Block& block) {
  // Local copies: stores through the output pointers cannot alias them, so the pointers and
  // sizes stay in registers.
  const StatsArgs<E> a = args;
  const Block b = block;
  const int64_t span = a.geometry.span, inner = a.geometry.inner;
  const double count = static_cast<double>((b.o1 - b.o0) * inner);
  auto add = [](typename V::F r, typename V::F v) { return V::add(r, v); };
  auto add_sq = [](typename V::F r, typename V::F v) { return V::fma(v, v, r); };
  for (int64_t s = b.s0; s < b.s1; ++s) {
    // Pass 1: the mean, summing x - x0 (x0 = the block's first value of the feature).
    const float x0 = to_float(a.x[(b.o0 * span + s) * inner]);
    const typename V::F v0 = V::set1(x0);
    WideSum sum;
    for (int64_t o = b.o0; o < b.o1; ++o) {
      const E* row = a.x + (o * span + s) * inner;
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
      const E* row = a.x + (o * span + s) * inner;
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

template <class E>
void stats_interleaved(const StatsArgs<E>& args, const Block& block) {
  const StatsArgs<E> a = args;
  const Block b = block;
  const int64_t span = a.geometry.span;
  const double count = static_cast<double>(b.o1 - b.o0);
  alignas(64) float center[kSegment];
  for (int64_t s0 = b.s0; s0 < b.s1; s0 += kSegment) {
    const int64_t n = b.s1 - s0 < kSegment ? b.s1 - s0 : kSegment;
    const E* first = a.x + b.o0 * span + s0;
    double* mean = a.mean + s0;
    double* m2 = a.m2 + s0;
    auto width = [&](int64_t j) { return static_cast<int>(n - j < V::W ? n - j : V::W); };
    // Pass 1: sums of x - x0 (x0 = the block's first row) -> mean.
    sum_rows(b.o0, b.o1, n, mean, [&](int64_t o, int64_t j) {
      return V::sub(V::loadn(a.x + o * span + s0 + j, width(j)), V::loadn(first + j, width(j)));
    });
    for (int64_t f = 0; f < n; ++f) {
      mean[f] = static_cast<double>(to_float(first[f])) + mean[f] / count;
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

template <class E>
void stats_simd(const StatsArgs<E>& args, const Block& block) {
  // Local copies: stores through the output pointers cannot alias them, so the pointers and
  // sizes stay in registers.
  const StatsArgs<E> a = args;
  const Block b = block;
  if (is_planar(a.geometry)) return stats_planar(a, b);
  if (is_interleaved(a.geometry)) return stats_interleaved(a, b);
  reference<E>().stats(a, b);
}

// --- loaders: whole vectors, or the first n lanes (others 0) at a tail -----------------
// P is an element type (float, bf16, f16) or float for the per-feature constants.
struct Full {
  template <class P>
  typename V::F operator()(const P* p) const { return V::load(p); }
  template <class P>
  void store(P* p, typename V::F v) const { V::store(p, v); }
};
struct Tail {
  int n;
  template <class P>
  typename V::F operator()(const P* p) const { return V::loadn(p, n); }
  template <class P>
  void store(P* p, typename V::F v) const { V::storen(p, v, n); }
};

// Per-feature constants of one vector: N arrays indexed by feature, each as a vector.
template <int N>
struct Consts {
  typename V::F v[N];
};

// Walks the elements of a block one vector at a time, calling body(ld, at, k) with the loader
// for that vector, its element offset and the vectors k.v[i] of the per-feature constants
// tables[i]: broadcast once per row for planar rows, loaded per vector for interleaved ones.
// Null tables give zero vectors.
template <int N, class Body>
inline void walk(const Geometry& g, const Block& b, const float* const (&tables)[N], Body body) {
  Consts<N> k;
  if (is_planar(g)) {
    const int64_t full = g.inner / V::W * V::W;
    const Tail tail{static_cast<int>(g.inner - full)};
    for (int64_t o = b.o0; o < b.o1; ++o) {
      for (int64_t s = b.s0; s < b.s1; ++s) {
        for (int i = 0; i < N; ++i) k.v[i] = V::set1(tables[i] ? tables[i][s] : 0.0f);
        const int64_t base = (o * g.span + s) * g.inner;
        for (int64_t i = 0; i < full; i += V::W) body(Full{}, base + i, k);
        if (tail.n) body(tail, base + full, k);
      }
    }
    return;
  }
  const int64_t full = b.s0 + (b.s1 - b.s0) / V::W * V::W;
  const Tail tail{static_cast<int>(b.s1 - full)};
  auto vector_at = [&](auto ld, int64_t row, int64_t j) {
    for (int i = 0; i < N; ++i) k.v[i] = tables[i] ? ld(tables[i] + j) : V::set1(0.0f);
    body(ld, row + j, k);
  };
  for (int64_t o = b.o0; o < b.o1; ++o) {
    const int64_t row = o * g.span;
    for (int64_t j = b.s0; j < full; j += V::W) vector_at(Full{}, row, j);
    if (tail.n) vector_at(tail, row, full);
  }
}

// --- normalize: y = fma(x - c, k, t), then + residual, then ReLU ------------------------
template <class E, bool Residual, bool Relu>
void normalize_impl(const NormalizeArgs<E>& a, const Block& b) {
  const float* const tables[3] = {a.center, a.scale, a.shift};
  walk(a.geometry, b, tables, [&](auto ld, int64_t at, const Consts<3>& k) {
    typename V::F z = V::fma(V::sub(ld(a.x + at), k.v[0]), k.v[1], k.v[2]);
    if constexpr (Residual) z = V::add(z, ld(a.residual + at));
    if constexpr (Relu) z = V::max0(z);
    ld.store(a.y + at, z);
  });
}

template <class E>
void normalize_simd(const NormalizeArgs<E>& args, const Block& block) {
  // Local copies: stores through the output pointers cannot alias them, so the pointers and
  // sizes stay in registers.
  const NormalizeArgs<E> a = args;
  const Block b = block;
  if (!is_planar(a.geometry) && !is_interleaved(a.geometry)) return reference<E>().normalize(a, b);
  if (a.residual) return a.relu ? normalize_impl<E, true, true>(a, b) : normalize_impl<E, true, false>(a, b);
  return a.relu ? normalize_impl<E, false, true>(a, b) : normalize_impl<E, false, false>(a, b);
}

// --- the ReLU gate of the backward -------------------------------------------------------
enum GateMode { kNoGate = 0, kGateFromY = 1, kGateFromX = 2 };

template <class E>
inline int gate_mode(const Gate<E>& g) { return g.y ? kGateFromY : g.z_center ? kGateFromX : kNoGate; }

// dy where the forward's ReLU was open, for the vector at (ld, at); zc, zk, zt are the
// forward's folded transform for that vector (used by kGateFromX only): open where the
// forward's output, z rounded to E, is > 0, i.e. z > relu_threshold<E>().
template <int Mode, class E, class Ld>
inline typename V::F gated_dy(const Gate<E>& g, Ld ld, const E* x, const E* dy, int64_t at,
                              typename V::F zc, typename V::F zk, typename V::F zt) {
  const typename V::F d = ld(dy + at);
  if constexpr (Mode == kGateFromY) return V::gate(d, ld(g.y + at), V::set1(0.0f));
  if constexpr (Mode == kGateFromX) {
    return V::gate(d, V::fma(V::sub(ld(x + at), zc), zk, zt), V::set1(relu_threshold<E>()));
  }
  (void)g, (void)x, (void)zc, (void)zk, (void)zt;
  return d;
}

// --- backward sums: sum dy, sum dy*(x - c) ---------------------------------------------
template <class E, int Mode>
void backward_sums_impl(const BackwardSumsArgs<E>& a, const Block& b) {
  const Geometry& g = a.geometry;
  if (is_planar(g)) {
    const int64_t span = g.span, inner = g.inner;
    const int64_t full = inner / V::W * V::W;
    const Tail tail{static_cast<int>(inner - full)};
    const bool from_x = Mode == kGateFromX;
    for (int64_t s = b.s0; s < b.s1; ++s) {
      const typename V::F c = V::set1(a.center[s]);
      const typename V::F zc = V::set1(from_x ? a.gate.z_center[s] : 0.0f),
                          zk = V::set1(from_x ? a.gate.z_scale[s] : 0.0f),
                          zt = V::set1(from_x ? a.gate.z_shift[s] : 0.0f);
      WideSum ys, ps;
      // Masked tail lanes load dy = 0, so they add nothing to either sum.
      auto step = [&](auto ld, int64_t at, int k) {
        const typename V::F vy = gated_dy<Mode>(a.gate, ld, a.x, a.dy, at, zc, zk, zt);
        ys.run[k] = V::add(ys.run[k], vy);
        ps.run[k] = V::fma(vy, V::sub(ld(a.x + at), c), ps.run[k]);
      };
      for (int64_t o = b.o0; o < b.o1; ++o) {
        const int64_t base = (o * span + s) * inner;
        int64_t i = 0;
        for (; i + 4 * V::W <= inner; i += 4 * V::W) {
          for (int k = 0; k < 4; ++k) step(Full{}, base + i + k * V::W, k);
          if (++ys.steps == kRun) {
            ys.flush();
            ps.flush();
          }
        }
        for (; i < full; i += V::W) step(Full{}, base + i, 0);
        if (tail.n) step(tail, base + full, 0);
        ys.flush();
        ps.flush();
      }
      a.sum_dy[s] = ys.total();
      a.sum_dyxc[s] = ps.total();
    }
    return;
  }
  for (int64_t s0 = b.s0; s0 < b.s1; s0 += kSegment) {
    const int64_t n = b.s1 - s0 < kSegment ? b.s1 - s0 : kSegment;
    // The gated dy of the vector of features [s0 + j, ...) of row o.
    auto dy_at = [&](auto ld, int64_t o, int64_t j) {
      const int64_t f = s0 + j;
      if constexpr (Mode == kGateFromX) {
        return gated_dy<Mode>(a.gate, ld, a.x, a.dy, o * g.span + f, ld(a.gate.z_center + f), ld(a.gate.z_scale + f),
                              ld(a.gate.z_shift + f));
      } else {
        const typename V::F zero = V::set1(0.0f);
        return gated_dy<Mode>(a.gate, ld, a.x, a.dy, o * g.span + f, zero, zero, zero);
      }
    };
    auto with_loader = [&](int64_t j, auto use) {
      return n - j >= V::W ? use(Full{}) : use(Tail{static_cast<int>(n - j)});
    };
    sum_rows(b.o0, b.o1, n, a.sum_dy + s0, [&](int64_t o, int64_t j) {
      return with_loader(j, [&](auto ld) { return dy_at(ld, o, j); });
    });
    sum_rows(b.o0, b.o1, n, a.sum_dyxc + s0, [&](int64_t o, int64_t j) {
      return with_loader(j, [&](auto ld) {
        const int64_t f = s0 + j;
        return V::fma(dy_at(ld, o, j), V::sub(ld(a.x + o * g.span + f), ld(a.center + f)), V::set1(0.0f));
      });
    });
  }
}

template <class E>
void backward_sums_simd(const BackwardSumsArgs<E>& args, const Block& block) {
  const BackwardSumsArgs<E> a = args;
  const Block b = block;
  if (!is_planar(a.geometry) && !is_interleaved(a.geometry)) return reference<E>().backward_sums(a, b);
  switch (gate_mode(a.gate)) {
    case kGateFromY: return backward_sums_impl<E, kGateFromY>(a, b);
    case kGateFromX: return backward_sums_impl<E, kGateFromX>(a, b);
    default: return backward_sums_impl<E, kNoGate>(a, b);
  }
}

// --- backward dx = fma(k_dy, dy, fma(k_x, x - c, k_c)); dresidual = dy (gated) ---------
template <class E, int Mode, bool Dx, bool Dres>
void backward_dx_impl(const BackwardDxArgs<E>& a, const Block& b) {
  const bool from_x = Mode == kGateFromX;
  const float* const tables[7] = {a.center,
                                  a.k_dy,
                                  a.k_x,
                                  a.k_c,
                                  from_x ? a.gate.z_center : nullptr,
                                  from_x ? a.gate.z_scale : nullptr,
                                  from_x ? a.gate.z_shift : nullptr};
  walk(a.geometry, b, tables, [&](auto ld, int64_t at, const Consts<7>& k) {
    const typename V::F dy = gated_dy<Mode>(a.gate, ld, a.x, a.dy, at, k.v[4], k.v[5], k.v[6]);
    if constexpr (Dx) ld.store(a.dx + at, V::fma(k.v[1], dy, V::fma(k.v[2], V::sub(ld(a.x + at), k.v[0]), k.v[3])));
    if constexpr (Dres) ld.store(a.dresidual + at, dy);
  });
}

template <class E, int Mode>
void backward_dx_mode(const BackwardDxArgs<E>& a, const Block& b) {
  if (a.dx) {
    return a.dresidual ? backward_dx_impl<E, Mode, true, true>(a, b) : backward_dx_impl<E, Mode, true, false>(a, b);
  }
  if (a.dresidual) backward_dx_impl<E, Mode, false, true>(a, b);
}

template <class E>
void backward_dx_simd(const BackwardDxArgs<E>& args, const Block& block) {
  const BackwardDxArgs<E> a = args;
  const Block b = block;
  if (!is_planar(a.geometry) && !is_interleaved(a.geometry)) return reference<E>().backward_dx(a, b);
  switch (gate_mode(a.gate)) {
    case kGateFromY: return backward_dx_mode<E, kGateFromY>(a, b);
    case kGateFromX: return backward_dx_mode<E, kGateFromX>(a, b);
    default: return backward_dx_mode<E, kNoGate>(a, b);
  }
}

template <class E>
constexpr KernelTable<E> make_table() {
  return {kIsaName, &stats_simd<E>, &normalize_simd<E>, &backward_sums_simd<E>, &backward_dx_simd<E>};
}

}  // namespace

const KernelTable<float> kTableF32 = make_table<float>();
const KernelTable<bf16> kTableBF16 = make_table<bf16>();
const KernelTable<f16> kTableF16 = make_table<f16>();
