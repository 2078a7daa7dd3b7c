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
//                 elementwise passes stream row by row, or four rows side by side
//                 (walk_batched); the reductions walk down the rows of one strip of
//                 features at a time.
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
// vectors per step; the rest of the run (up to three whole vectors and the masked tail, whose
// lanes past the end must come out 0) is one more step, a vector per slot. Runs follow one
// another without a flush (each slot still adds at most kRun vectors before it is widened).
// Flushed at every run's end (as before), short rows paid for a flush per row and put the
// rest in one slot: measured against that, 32x2048x7x7 (rows of 49) training forward 1.3x and
// backward 1.1x faster, 8x32x16x16 (rows of 256) training forward 1.1x, 1 and 2 threads.
template <class Value, class ValueTail, class Op>
inline void sum_run(WideSum& sum, int64_t n, Value value, ValueTail value_tail, Op op) {
  int64_t i = 0;
  for (; i + 4 * V::W <= n; i += 4 * V::W) {
    for (int k = 0; k < 4; ++k) sum.run[k] = op(sum.run[k], value(i + k * V::W));
    if (++sum.steps == kRun) sum.flush();
  }
  if (i == n) return;
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {  // unrolled: the slots stay in registers
    const int64_t at = i + k * V::W;
    if (at + V::W <= n) {
      sum.run[k] = op(sum.run[k], value(at));
    } else if (at < n) {
      sum.run[k] = op(sum.run[k], value_tail(at, static_cast<int>(n - at)));
    }
  }
  if (++sum.steps == kRun) sum.flush();
}

// --- loaders: whole vectors, or the first n lanes (others 0) at a tail -----------------
// Stream: non-temporal stores where aligned to the vector (outputs too large to cache). The
// callers stream rows that start on a 64-byte line (after a masked head) and span whole lines,
// so every line is written by non-temporal stores only: with 32-byte vectors, both halves
// (streaming one half and storing the other, as a 64-byte test did, made AVX2's streamed
// backward 5-7x slower than AVX-512's).
template <bool Stream>
struct FullT {
  int lanes() const { return V::W; }
  template <class P>
  typename V::F operator()(const P* p) const { return V::load(p); }
  template <class P>
  void store(P* p, typename V::F v) const {
    if constexpr (Stream && std::is_same_v<P, float>) {
      if ((reinterpret_cast<uintptr_t>(p) & (sizeof(typename V::F) - 1)) == 0) return V::stream(p, v);
    }
    V::store(p, v);
  }
};
using Full = FullT<false>;
struct Tail {
  int n;
  int lanes() const { return n; }
  template <class P>
  typename V::F operator()(const P* p) const { return V::loadn(p, n); }
  template <class P>
  void store(P* p, typename V::F v) const { V::storen(p, v, n); }
};

// --- statistics -----------------------------------------------------------------------
constexpr double kNoPivot = std::numeric_limits<double>::quiet_NaN();

// One feature of a planar block, exactly: a pass for the mean (sums of x - x0, x0 the pivot:
// a rough mean where the caller has a finite one, else the block's first value of the
// feature), then one for the squared deviations from m = float(mean) while the block is in
// cache. (With the first value as pivot, data with a few far values measured means off by
// 2e-5 relative: x - x0 rounds in float for every value when x0 is one of the far ones.)
// (Inlined: out of line, the training forward of 32x512x28x28 measured 7 % slower.)
template <class E>
__attribute__((always_inline)) inline void stats_planar_two_pass(const StatsArgs<E>& a, const Block& b, int64_t s,
                                                                  double count, double pivot) {
  const int64_t span = a.geometry.span, inner = a.geometry.inner;
  auto add = [](typename V::F r, typename V::F v) { return V::add(r, v); };
  auto add_sq = [](typename V::F r, typename V::F v) { return V::fma(v, v, r); };
  const float x0 = std::isfinite(static_cast<float>(pivot)) ? static_cast<float>(pivot)
                                                             : to_float(a.x[(b.o0 * span + s) * inner]);
  const typename V::F v0 = V::set1(x0);
  WideSum sum;
  for (int64_t o = b.o0; o < b.o1; ++o) {
    const E* row = a.x + (o * span + s) * inner;
    sum_run(
        sum, inner, [&](int64_t i) { return V::sub(V::load(row + i), v0); },
        [&](int64_t i, int n) { return V::subn(row + i, v0, n); }, add);
  }
  const double mean = static_cast<double>(x0) + sum.total() / count;
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

// With the hint `cached` (else the two passes above for every feature), shifted sums (see
// stats_interleaved): a pass per feature, so that a block is read once per feature: K = the
// float mean of kShiftSamples values spread over the feature's values in the block, S =
// sum (x - K), Q = sum (x - K)^2 (float runs widened to double, as every sum here), mean =
// K + S/n, M2 = Q - S*(S/n). Where Q > kShiftSlack*M2 (K more than sqrt(3) standard
// deviations off the mean, or data that is not finite) the feature is computed again with the
// exact two passes while it is in cache, around the rough mean K + S/n. Measured against the
// two passes for every feature (1 thread, training forward, in-process alternation):
// 8x32x16x16 0.88, 1x64x56x56 0.93, 32x2048x7x7 0.96 of the time, 16x128x1024 (in the L3)
// the same; on tensors read from memory, 32x512x28x28 1.04x as long: hence the hint.
constexpr int kShiftSamples = 8;
constexpr double kShiftSlack = 4.0;

template <class E>
void stats_planar(const StatsArgs<E>& args, const Block& block) {
  // Local copies: stores through the output pointers cannot alias them, so the pointers and
  // sizes stay in registers.
  const StatsArgs<E> a = args;
  const Block b = block;
  const int64_t span = a.geometry.span, inner = a.geometry.inner;
  const int64_t values = (b.o1 - b.o0) * inner;
  const double count = static_cast<double>(values);
  const int samples = static_cast<int>(values < kShiftSamples ? values : kShiftSamples);
  if (!a.cached) {
    for (int64_t s = b.s0; s < b.s1; ++s) stats_planar_two_pass(a, b, s, count, kNoPivot);
    return;
  }
  // The sampled values' offsets from a feature's first value in the block: value indices
  // i*(values/samples), row-major over the block's rows; the same for every feature.
  int64_t offset[kShiftSamples] = {};
  for (int i = 1; i < samples; ++i) {
    const int64_t e = values / samples * i;
    offset[i] = e / inner * span * inner + e % inner;
  }
  for (int64_t s = b.s0; s < b.s1; ++s) {
    const E* first = a.x + (b.o0 * span + s) * inner;
    const double x0 = static_cast<double>(to_float(first[0]));
    double spread = 0.0;
    for (int i = 1; i < samples; ++i) spread += static_cast<double>(to_float(first[offset[i]])) - x0;
    const float k = static_cast<float>(x0 + spread / samples);
    const typename V::F vk = V::set1(k);
    WideSum sum, sq;
    for (int64_t o = b.o0; o < b.o1; ++o) {
      const E* row = a.x + (o * span + s) * inner;
      // As sum_run, with both sums fed from each loaded vector (masked tail lanes are 0).
      auto step = [&](typename V::F d, int slot) {
        sum.run[slot] = V::add(sum.run[slot], d);
        sq.run[slot] = V::fma(d, d, sq.run[slot]);
      };
      int64_t i = 0;
      for (; i + 4 * V::W <= inner; i += 4 * V::W) {
        for (int slot = 0; slot < 4; ++slot) step(V::sub(V::load(row + i + slot * V::W), vk), slot);
        if (++sum.steps == kRun) {
          sum.flush();
          sq.flush();
        }
      }
      if (i == inner) continue;
#pragma GCC unroll 4
      for (int slot = 0; slot < 4; ++slot) {  // unrolled: the slots stay in registers
        const int64_t at = i + slot * V::W;
        if (at + V::W <= inner) {
          step(V::sub(V::load(row + at), vk), slot);
        } else if (at < inner) {
          step(V::subn(row + at, vk, static_cast<int>(inner - at)), slot);
        }
      }
      if (++sum.steps == kRun) {
        sum.flush();
        sq.flush();
      }
    }
    const double sx = sum.total(), qx = sq.total();
    const double t = sx / count;
    const double m2 = qx - sx * t;
    if (qx <= kShiftSlack * m2) {
      a.mean[s] = static_cast<double>(k) + t;
      a.m2[s] = m2;
    } else {
      stats_planar_two_pass(a, b, s, count, static_cast<double>(k) + t);
    }
  }
}

// Features last: the block is read once, in groups of kGroup rows. For each strip of V::W
// features, the group's vectors stay in registers for an exact two-pass of their own (sums
// of x - x0, x0 the group's first row, then squared deviations from the group mean, in
// float on values near zero), and the group's (mean, M2) is merged into the block's running
// (mean, M2) in double with Chan's formula. The strips of a group walk kGroup rows side by
// side, which the hardware prefetchers follow as kGroup sequential streams.
// Rows per register group (16 measured slower on AVX-512: more spills than saved merges).
constexpr int kGroup = 8;

// Calls f(std::integral_constant<int, rows>) for a runtime rows in [1, R].
template <int R, class F>
inline void with_rows(int rows, F&& f) {
  if constexpr (R == 1) {
    f(std::integral_constant<int, 1>{});
  } else if (rows == R) {
    f(std::integral_constant<int, R>{});
  } else {
    with_rows<R - 1>(rows, f);
  }
}

// Both halves of a strip of V::W doubles at p (n valid lanes), through an aligned copy at a tail.
struct DoubleStrip {
  typename V::D lo, hi;
  static DoubleStrip load(const double* p, int n) {
    if (n == V::W) return {V::dload(p), V::dload(p + V::W / 2)};
    alignas(64) double t[V::W] = {};
    for (int l = 0; l < n; ++l) t[l] = p[l];
    return {V::dload(t), V::dload(t + V::W / 2)};
  }
  void store(double* p, int n) const {
    if (n == V::W) {
      V::dstore(p, lo);
      V::dstore(p + V::W / 2, hi);
      return;
    }
    alignas(64) double t[V::W];
    V::dstore(t, lo);
    V::dstore(t + V::W / 2, hi);
    for (int l = 0; l < n; ++l) p[l] = t[l];
  }
};

// Rows is a compile-time count, so that the group's vectors stay in registers.
template <int Rows, class E, class Ld>
inline void stats_group(const E* x, int64_t stride, Ld ld, double* mean, double* m2, double n_before) {
  constexpr int rows = Rows;
  typename V::F v[Rows];
  for (int r = 0; r < rows; ++r) v[r] = ld(x + r * stride);
  // Group mean: x0 + sum(x - x0)/rows.
  typename V::F s = V::set1(0.0f);
  for (int r = 1; r < rows; ++r) s = V::add(s, V::sub(v[r], v[0]));
  const typename V::D inv = V::dset1(1.0 / rows);
  const typename V::D mlo = V::dfma(V::lo(s), inv, V::lo(v[0])), mhi = V::dfma(V::hi(s), inv, V::hi(v[0]));
  // Group M2 around m = float(mean): sum (x - m)^2 - rows*delta^2, delta = mean - m.
  const typename V::F m = V::narrow(mlo, mhi);
  typename V::F q = V::set1(0.0f);
  for (int r = 0; r < rows; ++r) {
    const typename V::F d = V::sub(v[r], m);
    q = V::fma(d, d, q);
  }
  const typename V::D dlo = V::dsub(mlo, V::lo(m)), dhi = V::dsub(mhi, V::hi(m));
  const typename V::D nr = V::dset1(static_cast<double>(rows));
  const typename V::D qlo = V::dfnma(V::dmul(dlo, dlo), nr, V::lo(q)), qhi = V::dfnma(V::dmul(dhi, dhi), nr, V::hi(q));
  const int n = ld.lanes();
  if (n_before == 0) {
    DoubleStrip{mlo, mhi}.store(mean, n);
    DoubleStrip{qlo, qhi}.store(m2, n);
    return;
  }
  // Chan: n = na + nb; delta = mb - ma; ma += delta*nb/n; M2a += M2b + delta^2*na*nb/n.
  DoubleStrip ma = DoubleStrip::load(mean, n), qa = DoubleStrip::load(m2, n);
  const double total = n_before + rows;
  const typename V::D wb = V::dset1(rows / total), wab = V::dset1(n_before * rows / total);
  const typename V::D elo = V::dsub(mlo, ma.lo), ehi = V::dsub(mhi, ma.hi);
  ma.lo = V::dfma(elo, wb, ma.lo);
  ma.hi = V::dfma(ehi, wb, ma.hi);
  qa.lo = V::dadd(qa.lo, V::dfma(V::dmul(elo, elo), wab, qlo));
  qa.hi = V::dadd(qa.hi, V::dfma(V::dmul(ehi, ehi), wab, qhi));
  ma.store(mean, n);
  qa.store(m2, n);
}

// Prefetch into L2 of the memory a group of whole rows reads next, in memory order: the
// strips of a group walk its rows side by side, a pattern the hardware prefetchers follow
// badly when rows are short (measured: the features-last statistics of 64 and 512 features
// ran ~1.5x slower than a sequential read of the same tensor, and at read speed with this).
// Each strip asks for its share of the bytes `ahead` past its group's start.
struct Ahead {
  const char* base = nullptr;  // null: no prefetch (rows not whole, or long enough to stream)
  int64_t share = 0;           // bytes per strip, a multiple of 64
  template <class E>
  static Ahead of(const Geometry& g, const Block& b, int rows) {
    const int64_t row_bytes = g.span * static_cast<int64_t>(sizeof(E));
    if (b.s0 != 0 || b.s1 != g.span || row_bytes >= kAheadRowLimit) return {};
    const int64_t strips = (g.span + V::W - 1) / V::W;
    const int64_t group = rows * row_bytes;
    return {nullptr, ((group + strips - 1) / strips + 63) / 64 * 64};
  }
  // At the start of a group at p (bytes of the group: `group`).
  void start(const void* p, int64_t group) {
    if (share) base = static_cast<const char*>(p) + (group > kAheadBytes ? group : kAheadBytes);
  }
  void strip() {
    if (!base) return;
    for (int64_t k = 0; k < share; k += 64) _mm_prefetch(base + k, _MM_HINT_T1);
    base += share;
  }
  static constexpr int64_t kAheadBytes = 16384;
  static constexpr int64_t kAheadRowLimit = 4096;
};

// The exact statistics of the strip of features at j (ld: its loader) over the block's rows:
// the group two-passes of stats_group merged in row order.
template <class E, class Ld>
inline void stats_strip_exact(const StatsArgs<E>& a, const Block& b, int64_t j, Ld ld) {
  const int64_t span = a.geometry.span;
  for (int64_t g0 = b.o0; g0 < b.o1; g0 += kGroup) {
    const int rows = static_cast<int>(b.o1 - g0 < kGroup ? b.o1 - g0 : kGroup);
    with_rows<kGroup>(rows, [&](auto rows_c) {
      constexpr int r = decltype(rows_c)::value;
      stats_group<r>(a.x + g0 * span + j, span, ld, a.mean + j, a.m2 + j, static_cast<double>(g0 - b.o0));
    });
  }
}

// Features last, one pass over whole rows in memory order, with shifted sums: per feature a
// shift K, the mean of kShiftSamples rows spread evenly over the block (rows o0 + i*step,
// step = rows / samples; spread, since neighbouring rows of an image are alike), rounded to
// float; per run of kRun rows and strip s = sum (x - K), q = sum (x - K)^2 in float
// registers, added to double sums S and Q; then mean = K + S/n and M2 = Q - S^2/n. Since
// Q = M2 + n*(mean - K)^2, the subtraction loses a factor Q/M2 of the float runs' accuracy:
// where Q > kShiftSlack*M2 (a shift more than sqrt(3) standard deviations off the mean, or
// non-finite data), the strip is computed again with the exact group two-passes while it is
// in cache. Features are taken in chunks of kChunk (the shift and the sums on the stack).
// Measured against the group two-passes merged with Chan's formula for every run (1 thread):
// 64 features 22 %, 512 features 10-15 % faster per training forward.
constexpr int64_t kChunk = 1024;

template <class E>
void stats_interleaved(const StatsArgs<E>& args, const Block& block) {
  const StatsArgs<E> a = args;
  const Block b = block;
  const int64_t span = a.geometry.span;
  const double count = static_cast<double>(b.o1 - b.o0);
  const int samples = static_cast<int>(b.o1 - b.o0 < kShiftSamples ? b.o1 - b.o0 : kShiftSamples);
  const int64_t step = (b.o1 - b.o0) / samples;
  alignas(64) float shift[kChunk];
  alignas(64) double sum[kChunk], sq[kChunk];
  for (int64_t c0 = b.s0; c0 < b.s1; c0 += kChunk) {
    const int64_t c1 = b.s1 - c0 < kChunk ? b.s1 : c0 + kChunk;
    const int64_t full = c0 + (c1 - c0) / V::W * V::W;
    const Tail tail{static_cast<int>(c1 - full)};
    // Shifts: K = x0 + sum(x - x0)/samples over the sample rows (x0 the first).
    auto shift_strip = [&](auto ld, int64_t j) {
      const E* x = a.x + b.o0 * span + j;
      const typename V::F v0 = ld(x);
      typename V::F s = V::set1(0.0f);
      for (int r = 1; r < samples; ++r) s = V::add(s, V::sub(ld(x + r * step * span), v0));
      const typename V::D inv = V::dset1(1.0 / samples);
      V::store(shift + (j - c0), V::narrow(V::dfma(V::lo(s), inv, V::lo(v0)), V::dfma(V::hi(s), inv, V::hi(v0))));
      for (int l = 0; l < V::W; ++l) sum[j - c0 + l] = sq[j - c0 + l] = 0.0;
    };
    for (int64_t j = c0; j < full; j += V::W) shift_strip(Full{}, j);
    if (tail.n) shift_strip(tail, full);
    // The runs of kRun rows.
    const bool whole = c0 == 0 && c1 == span;
    Ahead ahead = whole ? Ahead::of<E>(a.geometry, b, kRun) : Ahead{};
    const int64_t group_bytes = kRun * span * static_cast<int64_t>(sizeof(E));
    for (int64_t g0 = b.o0; g0 < b.o1; g0 += kRun) {
      const int rows = static_cast<int>(b.o1 - g0 < kRun ? b.o1 - g0 : kRun);
      const E* x = a.x + g0 * span;
      ahead.start(x, group_bytes);
      auto run = [&](auto ld, int64_t j, auto sub) {
        ahead.strip();
        const typename V::F k = V::load(shift + (j - c0));
        typename V::F s = V::set1(0.0f), q = s;
        for (int r = 0; r < rows; ++r) {
          const typename V::F d = sub(x + r * span + j, k);
          s = V::add(s, d);
          q = V::fma(d, d, q);
        }
        double* ps = sum + (j - c0);
        double* pq = sq + (j - c0);
        V::dstore(ps, V::dadd(V::dload(ps), V::lo(s)));
        V::dstore(ps + V::W / 2, V::dadd(V::dload(ps + V::W / 2), V::hi(s)));
        V::dstore(pq, V::dadd(V::dload(pq), V::lo(q)));
        V::dstore(pq + V::W / 2, V::dadd(V::dload(pq + V::W / 2), V::hi(q)));
        (void)ld;
      };
      for (int64_t j = c0; j < full; j += V::W) {
        run(Full{}, j, [](const E* p, typename V::F k) { return V::sub(V::load(p), k); });
      }
      if (tail.n) {
        const int n = tail.n;
        run(tail, full, [n](const E* p, typename V::F k) { return V::subn(p, k, n); });
      }
    }
    // mean and M2 per feature, a strip at a time in double vectors (per lane: t = s/n,
    // mean = K + t, M2 = q - s*t rounded once; scalar per lane, the divisions measured a fifth
    // of this kernel on 64x1024); strips where the shift was too far off (or the data is not
    // finite: the comparison fails for NaN), again exactly. Lanes past a tail hold s = q = 0.
    const typename V::D n_vec = V::dset1(count), slack = V::dset1(kShiftSlack);
    auto finish = [&](auto ld, int64_t j) {
      const int64_t i = j - c0;
      const typename V::F kv = V::load(shift + i);
      const typename V::D s_lo = V::dload(sum + i), s_hi = V::dload(sum + i + V::W / 2);
      const typename V::D q_lo = V::dload(sq + i), q_hi = V::dload(sq + i + V::W / 2);
      const typename V::D t_lo = V::ddiv(s_lo, n_vec), t_hi = V::ddiv(s_hi, n_vec);
      const typename V::D m2_lo = V::dfnma(s_lo, t_lo, q_lo), m2_hi = V::dfnma(s_hi, t_hi, q_hi);
      const int n = ld.lanes();
      DoubleStrip{V::dadd(V::lo(kv), t_lo), V::dadd(V::hi(kv), t_hi)}.store(a.mean + j, n);
      DoubleStrip{m2_lo, m2_hi}.store(a.m2 + j, n);
      const bool exact = V::dall_le(q_lo, V::dmul(slack, m2_lo)) && V::dall_le(q_hi, V::dmul(slack, m2_hi));
      if (!exact) stats_strip_exact(a, b, j, ld);
    };
    for (int64_t j = c0; j < full; j += V::W) finish(Full{}, j);
    if (tail.n) finish(tail, full);
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

// Per-feature constants of one vector: N arrays indexed by feature, each as a vector.
template <int N>
struct Consts {
  typename V::F v[N];
};

// The N inputs of an elementwise pass, asked into L2 kAhead bytes past each vector of a wide
// features-last row (more than four vectors). Measured with 512 features, 1 thread: inference
// forward 10 % and the backward 8 % faster, although that walk is in memory order; on planar
// rows and narrow rows the same prefetches measured 10-15 % slower, so they have none.
template <class E, int N>
struct Inputs {
  static constexpr uintptr_t kAhead = 4096;
  const E* p[3];  // the first N are used
  // Ahead in the walk's direction: past `at` ascending, before it descending.
  template <bool Desc>
  void fetch(int64_t at) const {
    for (int i = 0; i < N; ++i) {
      const uintptr_t a = reinterpret_cast<uintptr_t>(p[i] + at);
      _mm_prefetch(reinterpret_cast<const char*>(Desc ? a - kAhead : a + kAhead), _MM_HINT_T1);
    }
  }
};

// Direction of an elementwise walk. A load whose address matches a pending store's in bits
// 0-11 (4 KiB aliasing) waits for that store: when an output's offset within a page lies a
// little past an input's (buffers allocated one after the other: 16 bytes apart from malloc,
// 64 from 64-byte aligned allocators, for blocks of a whole number of pages), an ascending
// walk loads, a vector after each store, the input element that aliases it. Walked
// descending, every aliasing input element is loaded before the store it aliases. Measured on
// 32x28x28x512 features-last (medians of 7 runs, 1 thread, y 64 bytes past x vs y at x's
// offset): ascending, inference 1.28x, training forward 1.18x, backward 1.16x slower;
// descending, as fast as the unaliased call. y 16-112 bytes past x (x then off y's lines; the
// walk flat, see walk_flat): descending 8-20 % faster than ascending (1024x4096 inference 1.17x).
// 128 bytes and more: no difference. Planar and narrow rows: no gain measured, so they always
// ascend. The walk descends when an output is just past an input and no input is just past an
// output (which would alias the other way).
constexpr uintptr_t kAliasWindow = 128;

// Bytes from b's offset within a page to a's (0..4095).
inline uintptr_t page_distance(const void* a, const void* b) {
  return (reinterpret_cast<uintptr_t>(a) - reinterpret_cast<uintptr_t>(b)) & 4095;
}

template <int NO, int NI>
inline bool descending(const void* const (&outs)[NO], const void* const (&ins)[NI]) {
  bool down = false, up = false;
  for (const void* o : outs) {
    for (const void* i : ins) {
      if (!o || !i) continue;
      const uintptr_t past = page_distance(o, i), before = page_distance(i, o);
      down = down || (past != 0 && past < kAliasWindow);
      up = up || (before != 0 && before < kAliasWindow);
    }
  }
  return down && !up;
}

// Features-last rows of more than four vectors: walked vector by vector, constants loaded per
// vector (narrower rows keep their constants in registers).
inline bool wide_rows(const Geometry& g, const Block& b) {
  return is_interleaved(g) && (b.s1 - b.s0 + V::W - 1) / V::W > 4;
}

// Walks the elements of a block one vector at a time, calling body(ld, at, k) with the loader
// for that vector, its element offset and the vectors k.v[i] of the per-feature constants
// tables[i]: broadcast once per row for planar rows, loaded per vector for interleaved ones.
// Interleaved rows of exactly Strips vectors (the last possibly a tail): the constants of
// every strip stay in registers for all rows, and the strip loop is unrolled.
template <int Strips, int N, class Whole, class Body>
inline void walk_narrow(const Geometry& g, const Block& b, const float* const (&tables)[N], Whole whole, Body body) {
  const int64_t full = b.s0 + (b.s1 - b.s0) / V::W * V::W;
  const Tail tail{static_cast<int>(b.s1 - full)};
  Consts<N> ks[Strips];
  for (int t = 0; t < Strips; ++t) {
    const int64_t j = b.s0 + t * V::W;
    for (int i = 0; i < N; ++i) ks[t].v[i] = j < full ? V::load(tables[i] + j) : tail(tables[i] + j);
  }
  for (int64_t o = b.o0; o < b.o1; ++o) {
    const int64_t row = o * g.span + b.s0;
    for (int t = 0; t < Strips - 1; ++t) body(whole, row + t * V::W, ks[t]);
    if (tail.n) {
      body(tail, row + (Strips - 1) * V::W, ks[Strips - 1]);
    } else {
      body(whole, row + (Strips - 1) * V::W, ks[Strips - 1]);
    }
  }
}

// Walks the elements of a block one vector at a time, calling body(ld, at, k) with the loader
// for that vector, its element offset and the vectors k.v[i] of the per-feature constants
// tables[i]: broadcast once per row for planar rows, loaded per vector for interleaved ones.
// Elements of 4 bytes before the streamed output at element `at` reaches a 64-byte boundary:
// the walk starts each row with that many elements (masked vectors) so that the row's other
// vectors are stored whole lines at a time, non-temporally, whatever the buffer's alignment
// (a malloc'ed output is 16-byte aligned: measured 1.6x slower without). 0 without an output
// or when it is not 4-byte aligned.
inline int64_t head_to_line(const float* out, int64_t at) {
  if (!out) return 0;
  const uintptr_t a = reinterpret_cast<uintptr_t>(out) + static_cast<uintptr_t>(at) * sizeof(float);
  return a % sizeof(float) ? 0 : static_cast<int64_t>((0 - a) % 64 / sizeof(float));
}

// Features-last blocks of whole rows whose streamed output starts `h` elements before a
// 64-byte line (a malloc'ed buffer: 16 bytes past one), rows of whole lines (span % 16 == 0):
// walked as one flat run, not row by row. Row by row, every row starts and ends with a
// masked vector, normal stores that share a line with the neighbouring row, between the
// non-temporal ones (measured, 1 thread, x and y 16 bytes past a line vs on one: 32x56x56x64
// inference 1.5x, 32x28x28x512 1.2-1.35x slower). Flat: a masked head of h elements (features
// 0..h-1 of the first row), whole vectors at h + k*W, each of the features f..f+W-1 of one
// row but one per row, the seam, whose features wrap from the row's last ones to the next
// row's first (its constants gathered once), and a masked tail ending the last row. Rows of up
// to four vectors keep the constants of every position of the cycle in registers. Not for
// outputs that are not streamed (tensors in cache): measured no faster flat (64x1024 and
// 16x128x1024 features last).
template <int N>
inline Consts<N> wrapped_consts(const float* const (&tables)[N], int64_t f, int64_t span) {
  alignas(64) float t[V::W];
  Consts<N> k;
  for (int i = 0; i < N; ++i) {
    for (int l = 0; l < V::W; ++l) t[l] = tables[i][(f + l) % span];
    k.v[i] = V::load(t);
  }
  return k;
}

template <int Strips, bool Desc, int N, class Whole, class In, class Body>
inline void walk_flat(const Geometry& g, const Block& b, const float* const (&table_refs)[N], Whole whole,
                      const In& inputs, int64_t h, Body body) {
  // Local copies of the tables' and inputs' pointers: through the references, every store
  // (which may alias anything) would make the loop reload them.
  const float* tables[N];
  for (int i = 0; i < N; ++i) tables[i] = table_refs[i];
  const In in = inputs;
  const int64_t span = g.span, base = b.o0 * span, total = (b.o1 - b.o0) * span;
  const int64_t count = (total - h) / V::W;  // whole vectors
  const int64_t end = h + count * V::W;      // the tail [end, total) ends the last row
  const int64_t seam = h % V::W ? span - V::W + h % V::W : -1;  // the feature where a vector wraps
  auto masked = [&](int64_t at, int n) {
    Consts<N> k;
    const Tail ld{n};
    const int64_t f = at % span;
    for (int i = 0; i < N; ++i) k.v[i] = ld(tables[i] + f);
    body(ld, base + at, k);
  };
  auto heads = [&] {
    if constexpr (Desc) {
      for (int64_t j = (h - 1) / V::W * V::W; j >= 0; j -= V::W) masked(j, static_cast<int>(h - j < V::W ? h - j : V::W));
    } else {
      for (int64_t j = 0; j < h; j += V::W) masked(j, static_cast<int>(h - j < V::W ? h - j : V::W));
    }
  };
  if constexpr (Strips > 0) {
    // The cycle of Strips vectors: position t holds the W features from (h + t*W) % span on,
    // wrapping at the row's end.
    Consts<N> ks[Strips];
    for (int t = 0; t < Strips; ++t) ks[t] = wrapped_consts(tables, (h + t * V::W) % span, span);
    heads();
    int64_t k = 0;
    for (; k + Strips <= count; k += Strips) {
      for (int t = 0; t < Strips; ++t) body(whole, base + h + (k + t) * V::W, ks[t]);
    }
    for (int t = 0; k < count; ++k, ++t) {
      for (int u = 0; u < Strips; ++u) {
        if (u == t) body(whole, base + h + k * V::W, ks[u]);  // unrolled: ks stays in registers
      }
    }
  } else {
    const Consts<N> wrap = seam >= 0 ? wrapped_consts(tables, seam, span) : Consts<N>{};
    Consts<N> k;
    auto vector_at = [&](int64_t kk, int64_t f) {
      const int64_t at = base + h + kk * V::W;
      in.template fetch<Desc>(at);
      if (f == seam) return body(whole, at, wrap);
      for (int i = 0; i < N; ++i) k.v[i] = V::load(tables[i] + f);
      body(whole, at, k);
    };
    if constexpr (Desc) {
      if (end < total) masked(end, static_cast<int>(total - end));
      for (int64_t kk = count - 1, f = (h + kk * V::W) % span; kk >= 0; --kk) {
        vector_at(kk, f);
        f -= V::W;
        if (f < 0) f += span;
      }
      heads();
      return;
    }
    heads();
    for (int64_t kk = 0, f = h % span; kk < count; ++kk) {
      vector_at(kk, f);
      f += V::W;
      if (f >= span) f -= span;
    }
  }
  if (end < total) masked(end, static_cast<int>(total - end));
}

// An elementwise pass's body in two halves: compute(ld, at, k) loads what the vector at `at`
// needs and returns what it stores; store(ld, at, v) stores it. body(ld, at, k) does both.
// kArrays: the tensors one vector touches (inputs and outputs), of kElementBytes each.
template <int Arrays, int ElementBytes, class Compute, class Store>
struct SplitBody {
  static constexpr int kArrays = Arrays;
  static constexpr int kElementBytes = ElementBytes;
  Compute compute;
  Store store;
  template <class Ld, class K>
  void operator()(Ld ld, int64_t at, const K& k) const {
    store(ld, at, compute(ld, at, k));
  }
};
template <int Arrays, class E, class Compute, class Store>
SplitBody<Arrays, static_cast<int>(sizeof(E)), Compute, Store> split_body(Compute compute, Store store) {
  return {compute, store};
}

// Wide features-last rows in batches of kBatchRows rows: per vector of features, its
// constants are loaded once and serve the batch's rows, whose vectors are all loaded and
// computed before any is stored (a store in between keeps the next row's loads behind it:
// the compiler must allow for in-place calls, and the CPU for 4 KiB aliasing when rows are a
// multiple of 4 KiB). Row by row, every vector costs a load per table (3 to 7) besides its
// data, which bounds a pass over data in L1/L2. Measured against the row walk (1 thread and
// 2, medians of calls of both builds interleaved in one process, both load orders):
//  - in cache: 128x512, 256x256, 4x1024x128 (2 MB): inference 1.3-1.7x, training forward
//    1.1-1.25x, backward 1.05-1.2x faster; 64x4096 inference 1.45x. Tensors of more than
//    kBatchCachedBytes (read from L3: 12x1024x128, 16x1024x128, 4096x512) were up to 1.3x
//    slower batched, so they walk row by row.
//  - rows of a multiple of 4 KiB put the lines of a tensor's four rows in one L1 set (4 KiB
//    per way of 8): with three tensors (backward of 64x1024 and 64x4096: x, dy, dx) that
//    measured up to 1.16x slower; with two (x, y) the batch fills the set's 8 ways, and the
//    per-feature tables conflict wherever they lie at the tensors' page offsets (64x1024
//    inference 6.8-9.6 us depending on where the layer's tables were allocated, row by row
//    6.9-8.4). So rows in cache batch only when fewer than 8 lines share a set.
//  - streamed (beyond the cache): rows of at least kBatchStreamRowBytes starting on a line:
//    1024x4096 1.05-1.3x, 32x7x7x2048 1.0-1.15x faster; rows of 1-2 KiB (32x28x28x512,
//    32x56x56x256) measured 1.1-1.4x slower batched.
constexpr int kBatchRows = 4;
constexpr int64_t kBatchStreamRowBytes = 8192;
constexpr int64_t kBatchCachedBytes = int64_t{4} << 20;
constexpr int64_t kL1Way = 4096;
constexpr int kL1Ways = 8;

template <bool Stream, class B>
inline bool batched(const Geometry& g, const Block& b, const float* out) {
  if (b.o1 - b.o0 < kBatchRows) return false;
  const int64_t row_bytes = g.span * B::kElementBytes;
  // Streamed: every row of the block starts on a line (else the row walk's masked heads).
  if (Stream) {
    return row_bytes >= kBatchStreamRowBytes && row_bytes % 64 == 0 && head_to_line(out, b.o0 * g.span + b.s0) == 0;
  }
  if (g.outer * row_bytes > kBatchCachedBytes) return false;
  int same_set = 0;  // rows of a batch whose lines fall in the first row's L1 sets
  for (int r = 0; r < kBatchRows; ++r) same_set += (r * row_bytes) % kL1Way == 0;
  return B::kArrays * same_set < kL1Ways;
}

template <bool Stream, bool Desc, int N, class In, class B>
inline void walk_batched(const Geometry& g, const Block& b, const float* const (&table_refs)[N], const In& inputs,
                         const B& body) {
  // Local copies of the tables' and inputs' pointers: through the references, every store
  // (which may alias anything) would make the loop reload them.
  const float* tables[N];
  for (int i = 0; i < N; ++i) tables[i] = table_refs[i];
  const In in = inputs;
  const int64_t span = g.span;
  const int64_t full = b.s0 + (b.s1 - b.s0) / V::W * V::W;
  const Tail tail{static_cast<int>(b.s1 - full)};
  const FullT<Stream> whole;
  Consts<N> k;
  const int64_t batches = (b.o1 - b.o0) / kBatchRows;  // the caller passes whole batches
  constexpr int kPerLine = Stream && sizeof(typename V::F) < 64 ? static_cast<int>(64 / sizeof(typename V::F)) : 1;
  auto batch = [&](int64_t o) {
    const int64_t first = o * span;
    auto columns = [&](auto ld, int64_t j) {
      for (int i = 0; i < N; ++i) k.v[i] = ld(tables[i] + j);
      decltype(body.compute(ld, first + j, k)) v[kBatchRows];
      for (int r = 0; r < kBatchRows; ++r) v[r] = body.compute(ld, first + r * span + j, k);
      for (int r = 0; r < kBatchRows; ++r) body.store(ld, first + r * span + j, v[r]);
    };
    // Streamed with vectors narrower than a line (AVX2): a row's whole line, kPerLine vectors
    // at j, stored back to back, so that each write-combining buffer fills at once (the
    // halves of a line a batch of stores apart measured 1.3x slower than ordinary stores).
    auto line = [&](int64_t j) {
      decltype(body.compute(whole, first + j, k)) v[kPerLine][kBatchRows];
      for (int l = 0; l < kPerLine; ++l) {
        for (int i = 0; i < N; ++i) k.v[i] = whole(tables[i] + j + l * V::W);
        for (int r = 0; r < kBatchRows; ++r) v[l][r] = body.compute(whole, first + r * span + j + l * V::W, k);
      }
      for (int r = 0; r < kBatchRows; ++r) {
        for (int l = 0; l < kPerLine; ++l) body.store(whole, first + r * span + j + l * V::W, v[l][r]);
      }
    };
    if constexpr (Desc) {
      if (tail.n) columns(tail, full);
      int64_t j = full - V::W;
      if constexpr (kPerLine > 1) {
        for (; j - (kPerLine - 1) * V::W >= b.s0; j -= kPerLine * V::W) {
          for (int l = 0; l < kPerLine; ++l) in.template fetch<true>(first + j - l * V::W);
          line(j - (kPerLine - 1) * V::W);
        }
      }
      for (; j >= b.s0; j -= V::W) {
        in.template fetch<true>(first + j);
        columns(whole, j);
      }
    } else {
      int64_t j = b.s0;
      if constexpr (kPerLine > 1) {
        for (; j + kPerLine * V::W <= full; j += kPerLine * V::W) {
          for (int l = 0; l < kPerLine; ++l) in.template fetch<false>(first + j + l * V::W);
          line(j);
        }
      }
      for (; j < full; j += V::W) {
        in.template fetch<false>(first + j);
        columns(whole, j);
      }
      if (tail.n) columns(tail, full);
    }
  };
  if constexpr (Desc) {
    for (int64_t t = batches - 1; t >= 0; --t) batch(b.o0 + t * kBatchRows);
  } else {
    for (int64_t t = 0; t < batches; ++t) batch(b.o0 + t * kBatchRows);
  }
}

// Planar rows of at most kFlatPlanarInner values (7x7 feature maps: rows of 49): the rows of a
// block's features are contiguous for each o, and are walked as one flat run, a vector
// holding the end of one row and the start of the next where they meet (constants blended
// per lane), so that a row's end and the next row's start are not two masked vectors (and,
// streamed, the run is stored whole lines at a time after one masked head). Measured on
// 32x2048x7x7 features first (both builds interleaved in one process, 1 and 2 threads):
// inference 3-9 %, training forward 0-4 %, backward 1-2 % faster than row by row.
constexpr int64_t kFlatPlanarInner = 8 * V::W;

template <int N, class Whole, class Head, class Body>
inline void walk_planar_flat(const Geometry& g, const Block& b, const float* const (&tables)[N], Whole whole,
                             Head head, Body body) {
  const int64_t inner = g.inner, len = (b.s1 - b.s0) * inner;
  Consts<N> k;
  for (int64_t o = b.o0; o < b.o1; ++o) {
    const int64_t base = (o * g.span + b.s0) * inner;
    const int64_t h = head(base, len);
    // The vector at p (relative to the run) starts `r` values into feature f's row: its lanes
    // before the row's end take f's constants, the others the next feature's.
    int64_t p = 0, f = b.s0, r = 0;
    auto step = [&](auto ld, int64_t lanes) {
      const int64_t in_row = inner - r;
      for (int i = 0; i < N; ++i) {
        const typename V::F a = V::set1(tables[i][f]);
        k.v[i] = in_row >= lanes ? a : V::first(static_cast<int>(in_row), a, V::set1(tables[i][f + 1]));
      }
      body(ld, base + p, k);
      p += lanes;
      r += lanes;
      if (r >= inner) {
        r -= inner;
        ++f;
      }
    };
    while (p < h) step(Tail{static_cast<int>(h - p < V::W ? h - p : V::W)}, h - p < V::W ? h - p : V::W);
    while (p + V::W <= len) step(whole, V::W);
    if (p < len) step(Tail{static_cast<int>(len - p)}, len - p);
  }
}

template <bool Stream, bool Desc, int N, class In, class Body>
inline void walk_stream(const Geometry& g, const Block& b, const float* const (&table_refs)[N], const In& inputs,
                        const float* out, Body body) {
  // Local copies of the tables' and inputs' pointers: through the references, every store
  // (which may alias anything) would make the loop reload them.
  const float* tables[N];
  for (int i = 0; i < N; ++i) tables[i] = table_refs[i];
  const In in = inputs;
  Consts<N> k;
  const FullT<Stream> whole;
  auto head = [&](int64_t at, int64_t len) -> int64_t {
    if constexpr (!Stream) return 0;
    const int64_t h = head_to_line(out, at);
    return h < len ? h : len;
  };
  if (is_planar(g)) {
    if (g.inner <= kFlatPlanarInner && b.s1 - b.s0 > 1) {
      return walk_planar_flat(g, b, tables, whole, [&](int64_t at, int64_t len) { return head(at, len); }, body);
    }
    for (int64_t o = b.o0; o < b.o1; ++o) {
      for (int64_t s = b.s0; s < b.s1; ++s) {
        for (int i = 0; i < N; ++i) k.v[i] = V::set1(tables[i][s]);
        const int64_t base = (o * g.span + s) * g.inner;
        const int64_t h = head(base, g.inner);
        int64_t i = 0;
        for (; i < h; i += V::W) body(Tail{static_cast<int>(h - i < V::W ? h - i : V::W)}, base + i, k);
        i = h;
        for (; i + V::W <= g.inner; i += V::W) body(whole, base + i, k);
        if (i < g.inner) body(Tail{static_cast<int>(g.inner - i)}, base + i, k);
      }
    }
    return;
  }
  if constexpr (Stream) {
    const int64_t h = head(b.o0 * g.span, g.span);
    if (h > 0 && b.s0 == 0 && b.s1 == g.span && g.span % V::W == 0) {
      switch (g.span / V::W) {
        case 1: return walk_flat<1, false>(g, b, tables, whole, in, h, body);
        case 2: return walk_flat<2, false>(g, b, tables, whole, in, h, body);
        case 3: return walk_flat<3, false>(g, b, tables, whole, in, h, body);
        case 4: return walk_flat<4, false>(g, b, tables, whole, in, h, body);
        default: return walk_flat<0, Desc>(g, b, tables, whole, in, h, body);
      }
    }
  }
  switch ((b.s1 - b.s0 + V::W - 1) / V::W) {
    case 1: return walk_narrow<1>(g, b, tables, whole, body);
    case 2: return walk_narrow<2>(g, b, tables, whole, body);
    case 3: return walk_narrow<3>(g, b, tables, whole, body);
    case 4: return walk_narrow<4>(g, b, tables, whole, body);
    default: break;
  }
  // Batches of kBatchRows rows where that measured faster (walk_batched), the rows left over
  // one at a time below.
  const bool batch = batched<Stream, Body>(g, b, out);
  const Block batches{b.o0, batch ? b.o0 + (b.o1 - b.o0) / kBatchRows * kBatchRows : b.o0, b.s0, b.s1};
  if (!Desc && batches.o1 > batches.o0) walk_batched<Stream, Desc>(g, batches, tables, in, body);
  // Wide rows one at a time, in memory order (segments of features walked over all rows
  // measured slower), or its reverse (kAliasWindow).
  auto vector_at = [&](auto ld, int64_t row, int64_t j) {
    in.template fetch<Desc>(row + j);
    for (int i = 0; i < N; ++i) k.v[i] = ld(tables[i] + j);
    body(ld, row + j, k);
  };
  // Rows of one phase: the first row's head for all (rows keep their phase when the caller
  // streams), so the vectors of every row fall at the same offsets.
  const int64_t h = head(b.o0 * g.span + b.s0, b.s1 - b.s0);
  const int64_t j0 = b.s0 + h;
  const int64_t full = j0 + (b.s1 - j0) / V::W * V::W;
  const Tail tail{static_cast<int>(b.s1 - full)};
  auto head_at = [&](int64_t row, int64_t j) { vector_at(Tail{static_cast<int>(j0 - j < V::W ? j0 - j : V::W)}, row, j); };
  if constexpr (Desc) {
    const int64_t last_head = h ? b.s0 + (h - 1) / V::W * V::W : b.s0 - 1;
    for (int64_t o = b.o1 - 1; o >= batches.o1; --o) {
      const int64_t row = o * g.span;
      if (tail.n) vector_at(tail, row, full);
      for (int64_t j = full - V::W; j >= j0; j -= V::W) vector_at(whole, row, j);
      for (int64_t j = last_head; j >= b.s0; j -= V::W) head_at(row, j);
    }
    if (batches.o1 > batches.o0) walk_batched<Stream, Desc>(g, batches, tables, in, body);
  } else {
    for (int64_t o = batches.o1; o < b.o1; ++o) {
      const int64_t row = o * g.span;
      for (int64_t j = b.s0; j < j0; j += V::W) head_at(row, j);
      for (int64_t j = j0; j < full; j += V::W) vector_at(whole, row, j);
      if (tail.n) vector_at(tail, row, full);
    }
  }
}

template <int N, class In, class Body>
inline void walk(const Geometry& g, const Block& b, const float* const (&tables)[N], bool stream, bool desc,
                 const In& in, const float* out, Body body) {
  desc = desc && wide_rows(g, b);  // only the wide rows measured faster descending (kAliasWindow)
  if (stream) {
    if (desc) {
      walk_stream<true, true>(g, b, tables, in, out, body);
    } else {
      walk_stream<true, false>(g, b, tables, in, out, body);
    }
    V::fence();  // order the non-temporal stores before the task completes
  } else if (desc) {
    walk_stream<false, true>(g, b, tables, in, out, body);
  } else {
    walk_stream<false, false>(g, b, tables, in, out, body);
  }
}

// The output a walk streams: float ones only (16-bit outputs are stored as usual).
template <class E>
inline const float* float_output(const E* p) {
  if constexpr (std::is_same_v<E, float>) {
    return p;
  } else {
    (void)p;
    return nullptr;
  }
}

// --- normalize: y = fma(x - c, k, t), then + residual, then ReLU ------------------------
template <class E, bool Residual, bool Relu>
void normalize_impl(const NormalizeArgs<E>& a, const Block& b) {
  const float* const tables[3] = {a.center, a.scale, a.shift};
  const E* x = a.x;
  const E* residual = a.residual;
  E* y = a.y;
  const Inputs<E, Residual ? 2 : 1> in{{x, residual}};
  const bool desc = descending<1, 2>({y}, {x, residual});
  const auto body = split_body<Residual ? 3 : 2, E>(
      [=](auto ld, int64_t at, const Consts<3>& k) {
        typename V::F z = V::fma(V::sub(ld(x + at), k.v[0]), k.v[1], k.v[2]);
        if constexpr (Residual) z = V::add(z, ld(residual + at));
        if constexpr (Relu) z = V::max0(z);
        return z;
      },
      [y](auto ld, int64_t at, typename V::F z) { ld.store(y + at, z); });
  walk(a.geometry, b, tables, a.stream, desc, in, float_output(y), body);
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
        if (i == inner) continue;
        // The rest of the row as one more step, a vector per slot (see sum_run).
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {  // unrolled: the slots stay in registers
          const int64_t at = i + k * V::W;
          if (at < full) {
            step(Full{}, base + at, k);
          } else if (at == full && tail.n) {
            step(tail, base + full, k);
          }
        }
        if (++ys.steps == kRun) {
          ys.flush();
          ps.flush();
        }
      }
      a.sum_dy[s] = ys.total();
      a.sum_dyxc[s] = ps.total();
    }
    return;
  }
  // Features last: groups of kRun rows (float runs, as the planar sums); per strip, the group's
  // sums in float registers are
  // widened and added to the block's double sums.
  for (int64_t f = b.s0; f < b.s1; ++f) a.sum_dy[f] = a.sum_dyxc[f] = 0.0;
  const int64_t span = g.span;
  auto strip = [&](auto ld, int64_t g0, int rows, int64_t j) {
    const typename V::F c = ld(a.center + j);
    typename V::F zc = V::set1(0.0f), zk = zc, zt = zc;
    if constexpr (Mode == kGateFromX) {
      zc = ld(a.gate.z_center + j);
      zk = ld(a.gate.z_scale + j);
      zt = ld(a.gate.z_shift + j);
    }
    typename V::F sy = V::set1(0.0f), sp = sy;
    for (int r = 0; r < rows; ++r) {
      const int64_t at = (g0 + r) * span + j;
      const typename V::F dy = gated_dy<Mode>(a.gate, ld, a.x, a.dy, at, zc, zk, zt);
      sy = V::add(sy, dy);
      sp = V::fma(dy, V::sub(ld(a.x + at), c), sp);
    }
    V::dadd_to(a.sum_dy + j, V::lo(sy), V::hi(sy), ld.lanes());
    V::dadd_to(a.sum_dyxc + j, V::lo(sp), V::hi(sp), ld.lanes());
  };
  const int64_t full = b.s0 + (b.s1 - b.s0) / V::W * V::W;
  Ahead ahead_x = Ahead::of<E>(g, b, kRun), ahead_dy = ahead_x;
  const int64_t group_bytes = kRun * span * static_cast<int64_t>(sizeof(E));
  for (int64_t g0 = b.o0; g0 < b.o1; g0 += kRun) {
    const int rows = static_cast<int>(b.o1 - g0 < kRun ? b.o1 - g0 : kRun);
    ahead_x.start(a.x + g0 * span, group_bytes);
    ahead_dy.start(a.dy + g0 * span, group_bytes);
    auto prefetch = [&] {
      ahead_x.strip();
      ahead_dy.strip();
    };
    for (int64_t j = b.s0; j < full; j += V::W) {
      prefetch();
      strip(Full{}, g0, rows, j);
    }
    if (full < b.s1) {
      prefetch();
      strip(Tail{static_cast<int>(b.s1 - full)}, g0, rows, full);
    }
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
  const E* x = a.x;
  const E* dy = a.dy;
  E* dx = a.dx;
  E* dres = a.dresidual;
  const Gate<E> gate = a.gate;
  // k.v: center, k_dy, k_x, k_c, and for kGateFromX the forward's transform.
  struct Out {
    typename V::F dx, dres;
  };
  const auto body = split_body<2 + (Mode == kGateFromY) + Dx + Dres, E>(
      [=](auto ld, int64_t at, const auto& k) {
        typename V::F zc = V::set1(0.0f), zk = zc, zt = zc;
        if constexpr (Mode == kGateFromX) {
          zc = k.v[4];
          zk = k.v[5];
          zt = k.v[6];
        }
        const typename V::F g = gated_dy<Mode>(gate, ld, x, dy, at, zc, zk, zt);
        Out out{g, g};
        if constexpr (Dx) out.dx = V::fma(k.v[1], g, V::fma(k.v[2], V::sub(ld(x + at), k.v[0]), k.v[3]));
        return out;
      },
      [=](auto ld, int64_t at, const Out& out) {
        if constexpr (Dx) ld.store(dx + at, out.dx);
        if constexpr (Dres) ld.store(dres + at, out.dres);
      });
  const Inputs<E, Mode == kGateFromY ? 3 : 2> in{{x, dy, gate.y}};
  const bool desc = descending<2, 3>({Dx ? dx : nullptr, dres}, {x, dy, Mode == kGateFromY ? gate.y : nullptr});
  if constexpr (Mode == kGateFromX) {
    const float* const tables[7] = {a.center, a.k_dy, a.k_x, a.k_c, gate.z_center, gate.z_scale, gate.z_shift};
    walk(a.geometry, b, tables, a.stream, desc, in, float_output(Dx ? dx : dres), body);
  } else {
    const float* const tables[4] = {a.center, a.k_dy, a.k_x, a.k_c};
    walk(a.geometry, b, tables, a.stream, desc, in, float_output(Dx ? dx : dres), body);
  }
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

}  // namespace

template <class E>
constexpr KernelTable<E> make_table() {
  return {kIsaName, &stats_simd<E>, &normalize_simd<E>, &backward_sums_simd<E>, &backward_dx_simd<E>};
}

const KernelTable<float> kTableF32 = make_table<float>();
const KernelTable<bf16> kTableBF16 = make_table<bf16>();
const KernelTable<f16> kTableF16 = make_table<f16>();
