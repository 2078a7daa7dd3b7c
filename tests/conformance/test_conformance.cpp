// The shared conformance cases (ONNX node tests, ONNX pytorch-converted tests, PyTorch-generated
// cases) through the public C API only, mapped onto the library as conformance/README.md §7.1 says:
// axes {channel_axis}, Keras momentum = 1 - batch_stat_weight, fused OFF, epsilon as given,
// moving variance BIASED/UNBIASED from running_var_unbiased, BN_F32/BN_F64 for the two file dtypes.
//
// Every case is a dynamic section "<suite>/<case>" with one section per dtype, so a failure names
// the case, the dtype and the tensor. Each suite ends with a section that requires every case of
// index.txt to have run to completion, so a reader or loop that skips cases fails.
#include <batchnorm/batchnorm.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "case_reader.hpp"
#include "checks.hpp"

#ifndef BN_CONFORMANCE_DIR
#error "BN_CONFORMANCE_DIR must be defined (tests/conformance/CMakeLists.txt passes the CMake cache variable)"
#endif

namespace {

using bn::conformance::Case;
using bn::conformance::CaseView;
using bn::conformance::check_close;
using bn::conformance::check_output;
using bn::conformance::check_same_bits;
using bn::conformance::narrow;
using bn::conformance::Tally;
using bn::conformance::Tensor;
using bn::conformance::Tolerance;
using bn::conformance::widen;

const std::string kCasesDir = BN_CONFORMANCE_DIR;

// README: "60 cases": 4 ONNX node, 5 ONNX pytorch-converted, 51 torch. ONNX is float32 only,
// torch has float32 and float64 files (README §1.6).
constexpr size_t kTotalCases = 60;
const std::map<std::string, size_t> kSuiteSizes = {{"onnx_node", 4}, {"onnx_pytorch_converted", 5}, {"torch", 51}};
constexpr size_t kSingleValueCases = 3;  // README §1.5

template <class T>
struct Dtype;
template <>
struct Dtype<float> {
  static constexpr bn_dtype code = BN_F32;
};
template <>
struct Dtype<double> {
  static constexpr bn_dtype code = BN_F64;
};

template <class T>
constexpr T kUnwritten = std::numeric_limits<T>::quiet_NaN();  // output pre-fill: never passes a check

struct LayerDeleter {
  void operator()(bn_layer* layer) const { bn_destroy(layer); }
};
struct ConfigDeleter {
  void operator()(bn_config* cfg) const { bn_config_destroy(cfg); }
};
using Layer = std::unique_ptr<bn_layer, LayerDeleter>;

void require_ok(bn_status status, const char* call) {
  INFO(call << " returned " << bn_status_string(status) << ": " << bn_last_error());
  REQUIRE(status == BN_OK);
}

// The case ids of index.txt; fails the test (never skips it) when the cases are not there.
std::vector<std::string> index_ids() {
  if (!std::ifstream(kCasesDir + "/index.txt")) {
    FAIL("conformance cases not found: '" << kCasesDir
                                          << "/index.txt' does not exist. Point the CMake cache variable "
                                             "BN_CONFORMANCE_DIR at the conformance/cases directory and rebuild.");
  }
  return bn::conformance::read_index(kCasesDir);
}

int32_t ndim_of(const std::vector<int64_t>& shape) { return static_cast<int32_t>(shape.size()); }

// Channel of flat element i for a row-major shape whose channel axis is `axis`.
int64_t channel_of(const std::vector<int64_t>& shape, int axis, size_t i) {
  int64_t inner = 1;
  for (size_t d = static_cast<size_t>(axis) + 1; d < shape.size(); ++d) inner *= shape[d];
  return (static_cast<int64_t>(i) / inner) % shape[static_cast<size_t>(axis)];
}

template <class T>
std::vector<T> get_param(const bn_layer* layer, bn_param which, int64_t count) {
  std::vector<T> out(static_cast<size_t>(count), kUnwritten<T>);
  require_ok(bn_get_param(layer, which, out.data(), count), "bn_get_param");
  return out;
}

template <class T>
void set_param(bn_layer* layer, bn_param which, const Tensor& t) {
  const std::vector<T> values = narrow<T>(t.data);
  require_ok(bn_set_param(layer, which, values.data(), static_cast<int64_t>(values.size())), "bn_set_param");
}

// A layer configured per README §7.1, with gamma, beta and (when stored) the moving statistics
// taken from the case.
template <class T>
Layer make_layer(CaseView& view, bn_single_value_policy policy) {
  const Case& c = view.info();
  const Tensor& x = view.get("X");
  REQUIRE(c.channel_axis >= 0);
  REQUIRE(static_cast<size_t>(c.channel_axis) < x.shape.size());

  bn_config* raw = nullptr;
  require_ok(bn_config_create(&raw), "bn_config_create");
  const std::unique_ptr<bn_config, ConfigDeleter> cfg(raw);
  const int32_t axis = c.channel_axis;
  require_ok(bn_config_set_axes(cfg.get(), &axis, 1), "bn_config_set_axes");
  // Keras momentum weights the old value (moving*momentum + batch*(1-momentum)); the cases give
  // the weight of the batch statistic. NaN means "does not matter": keep the default.
  if (!std::isnan(c.batch_stat_weight)) {
    require_ok(bn_config_set_momentum(cfg.get(), 1.0 - c.batch_stat_weight), "bn_config_set_momentum");
  }
  require_ok(bn_config_set_epsilon(cfg.get(), c.epsilon), "bn_config_set_epsilon");
  require_ok(bn_config_set_fused(cfg.get(), BN_FUSED_OFF), "bn_config_set_fused");
  require_ok(bn_config_set_moving_variance(
                 cfg.get(), c.running_var_unbiased ? BN_MOVING_VARIANCE_UNBIASED : BN_MOVING_VARIANCE_BIASED),
             "bn_config_set_moving_variance");
  require_ok(bn_config_set_dtype(cfg.get(), Dtype<T>::code), "bn_config_set_dtype");
  require_ok(bn_config_set_single_value_policy(cfg.get(), policy), "bn_config_set_single_value_policy");

  bn_layer* layer = nullptr;
  require_ok(bn_create(cfg.get(), x.shape.data(), ndim_of(x.shape), &layer), "bn_create");
  Layer out(layer);
  REQUIRE(bn_num_features(layer) == x.shape[static_cast<size_t>(axis)]);
  set_param<T>(layer, BN_PARAM_GAMMA, view.get("scale"));
  set_param<T>(layer, BN_PARAM_BETA, view.get("B"));
  if (const Tensor* mean = view.maybe("input_mean")) set_param<T>(layer, BN_PARAM_MOVING_MEAN, *mean);
  if (const Tensor* var = view.maybe("input_var")) set_param<T>(layer, BN_PARAM_MOVING_VARIANCE, *var);
  return out;
}

// Everything the library returns for one run of a case.
template <class T>
struct Outputs {
  std::vector<T> y, dx, dgamma, dbeta;
  std::vector<T> moving_mean, moving_var, batch_mean, batch_var;
};

// One run: forward (training or inference, as the case says), then backward when the case has
// dY. In place means y == x in the forward and dx == dy in the backward; the backward still
// gets the original x, as bn_backward requires.
template <class T>
Outputs<T> run(CaseView& view, bool in_place) {
  const Case& c = view.info();
  const Tensor& X = view.get("X");
  const int64_t C = X.shape[static_cast<size_t>(c.channel_axis)];
  Layer layer = make_layer<T>(view, BN_SINGLE_VALUE_COMPUTE);
  if (c.training) require_ok(bn_set_training(layer.get(), 1), "bn_set_training");

  const std::vector<T> x = narrow<T>(X.data);
  Outputs<T> o;
  o.y = in_place ? x : std::vector<T>(x.size(), kUnwritten<T>);
  const void* x_arg = in_place ? static_cast<const void*>(o.y.data()) : x.data();
  require_ok(bn_forward(layer.get(), X.shape.data(), ndim_of(X.shape), x_arg, o.y.data()), "bn_forward");

  o.moving_mean = get_param<T>(layer.get(), BN_PARAM_MOVING_MEAN, C);
  o.moving_var = get_param<T>(layer.get(), BN_PARAM_MOVING_VARIANCE, C);
  if (c.training) {
    o.batch_mean = get_param<T>(layer.get(), BN_PARAM_BATCH_MEAN, C);
    o.batch_var = get_param<T>(layer.get(), BN_PARAM_BATCH_VARIANCE, C);
  }
  if (c.backward) {
    const std::vector<T> dy = narrow<T>(view.get("dY").data);
    o.dx = in_place ? dy : std::vector<T>(dy.size(), kUnwritten<T>);
    o.dgamma.assign(static_cast<size_t>(C), kUnwritten<T>);
    o.dbeta.assign(static_cast<size_t>(C), kUnwritten<T>);
    const void* dy_arg = in_place ? static_cast<const void*>(o.dx.data()) : dy.data();
    require_ok(bn_backward(layer.get(), X.shape.data(), ndim_of(X.shape), x.data(), dy_arg, o.dx.data(),
                           o.dgamma.data(), o.dbeta.data()),
               "bn_backward");
  }
  return o;
}

// An ordinary case: every stored output against its tolerance, then the in-place run bit for bit.
template <class T>
void check_expected_outputs(CaseView& view, Tally& tally) {
  const Case& c = view.info();
  const Outputs<T> o = run<T>(view, false);
  check_output(tally, view, "Y", widen(o.y));
  if (c.training) {
    if (view.maybe("input_mean") != nullptr) {
      check_output(tally, view, "running_mean", widen(o.moving_mean));
      check_output(tally, view, "running_var", widen(o.moving_var));
    }
    if (view.maybe("saved_mean") != nullptr) check_output(tally, view, "saved_mean", widen(o.batch_mean));
    if (view.maybe("saved_var") != nullptr) check_output(tally, view, "saved_var", widen(o.batch_var));
    if (view.maybe("saved_invstd") != nullptr) {
      std::vector<double> invstd(o.batch_var.size());
      for (size_t i = 0; i < invstd.size(); ++i) {
        invstd[i] = 1.0 / std::sqrt(static_cast<double>(o.batch_var[i]) + c.epsilon);
      }
      check_output(tally, view, "saved_invstd", invstd);
    }
  } else {
    // An inference forward changes no state: the moving statistics are the values set.
    check_same_bits(tally, view.label() + " moving mean after an inference forward", o.moving_mean,
                    narrow<T>(view.get("input_mean").data));
    check_same_bits(tally, view.label() + " moving variance after an inference forward", o.moving_var,
                    narrow<T>(view.get("input_var").data));
  }
  if (c.backward) {
    check_output(tally, view, "dX", widen(o.dx));
    check_output(tally, view, "dscale", widen(o.dgamma));
    check_output(tally, view, "dB", widen(o.dbeta));
  }

  const Outputs<T> p = run<T>(view, true);
  const std::string in_place = view.label() + " in place vs out of place: ";
  check_same_bits(tally, in_place + "Y (y == x)", p.y, o.y);
  check_same_bits(tally, in_place + "moving mean", p.moving_mean, o.moving_mean);
  check_same_bits(tally, in_place + "moving variance", p.moving_var, o.moving_var);
  if (c.training) {
    check_same_bits(tally, in_place + "batch mean", p.batch_mean, o.batch_mean);
    check_same_bits(tally, in_place + "batch variance", p.batch_var, o.batch_var);
  }
  if (c.backward) {
    check_same_bits(tally, in_place + "dX (dx == dy)", p.dx, o.dx);
    check_same_bits(tally, in_place + "dgamma", p.dgamma, o.dgamma);
    check_same_bits(tally, in_place + "dbeta", p.dbeta, o.dbeta);
  }
}

// README §1.5, default policy (Keras): the call succeeds, the variance is 0, so y = beta
// exactly; the batch mean is the single value; the moving statistics follow the usual update
// with a Bessel factor of 1 (SEMANTICS A.5: m/max(m-1,1)).
template <class T>
void check_single_value_computed(CaseView& view, Tally& tally) {
  const Case& c = view.info();
  const Tensor& X = view.get("X");
  const int axis = c.channel_axis;
  const std::vector<T> x = narrow<T>(X.data);
  const std::vector<T> beta = narrow<T>(view.get("B").data);
  const auto C = static_cast<int64_t>(beta.size());

  Layer layer = make_layer<T>(view, BN_SINGLE_VALUE_COMPUTE);
  require_ok(bn_set_training(layer.get(), 1), "bn_set_training");
  std::vector<T> y(x.size(), kUnwritten<T>);
  require_ok(bn_forward(layer.get(), X.shape.data(), ndim_of(X.shape), x.data(), y.data()),
             "bn_forward (one value per channel, default policy)");

  std::vector<double> y_expected(x.size()), mean_expected(beta.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const auto ch = static_cast<size_t>(channel_of(X.shape, axis, i));
    y_expected[i] = static_cast<double>(beta[ch]);
    mean_expected[ch] = static_cast<double>(x[i]);
  }
  const Tolerance exact{0.0, 0.0};
  const std::string label = view.label() + " one value per channel, default policy: ";
  check_close(tally, label + "Y == B", X.shape, widen(y), y_expected, exact);
  const std::vector<int64_t> cshape{C};
  check_close(tally, label + "batch mean == the value", cshape,
              widen(get_param<T>(layer.get(), BN_PARAM_BATCH_MEAN, C)), mean_expected, exact);
  check_close(tally, label + "batch variance == 0", cshape,
              widen(get_param<T>(layer.get(), BN_PARAM_BATCH_VARIANCE, C)), std::vector<double>(beta.size(), 0.0),
              exact);

  // running = (1-w)*old + w*batch, batch variance 0 (finite: no 0/0 Bessel factor).
  const double w = c.batch_stat_weight;
  const std::vector<double>& old_mean = view.get("input_mean").data;
  const std::vector<double>& old_var = view.get("input_var").data;
  std::vector<double> mean_run(beta.size()), var_run(beta.size());
  for (size_t k = 0; k < beta.size(); ++k) {
    mean_run[k] = (1.0 - w) * old_mean[k] + w * mean_expected[k];
    var_run[k] = (1.0 - w) * old_var[k];
  }
  // A few roundings of the storage type (the library multiplies by momentum = 1 - w).
  const double r = std::is_same<T, float>::value ? 1e-6 : 1e-13;
  check_close(tally, label + "moving mean", cshape, widen(get_param<T>(layer.get(), BN_PARAM_MOVING_MEAN, C)),
              mean_run, Tolerance{r, r});
  check_close(tally, label + "moving variance", cshape,
              widen(get_param<T>(layer.get(), BN_PARAM_MOVING_VARIANCE, C)), var_run, Tolerance{r, r});
}

template <class T>
struct Snapshot {
  std::vector<T> gamma, beta, moving_mean, moving_var, batch_mean, batch_var;
};

template <class T>
Snapshot<T> snapshot(const bn_layer* layer, int64_t C) {
  return {get_param<T>(layer, BN_PARAM_GAMMA, C),         get_param<T>(layer, BN_PARAM_BETA, C),
          get_param<T>(layer, BN_PARAM_MOVING_MEAN, C),   get_param<T>(layer, BN_PARAM_MOVING_VARIANCE, C),
          get_param<T>(layer, BN_PARAM_BATCH_MEAN, C),    get_param<T>(layer, BN_PARAM_BATCH_VARIANCE, C)};
}

// A valid training batch for the same layer: the case's batch followed by a copy shifted by 1,
// so every channel has two values (batch axis doubled).
template <class T>
void make_warmup(const Tensor& X, int axis, std::vector<int64_t>& shape, std::vector<T>& x) {
  REQUIRE(axis != 0);
  shape = X.shape;
  shape[0] *= 2;
  x = narrow<T>(X.data);
  const size_t n = x.size();
  x.resize(2 * n);
  for (size_t i = 0; i < n; ++i) x[n + i] = x[i] + T(1);
}

// README §1.5, BN_SINGLE_VALUE_REJECT (PyTorch): BN_ERR_SHAPE with a message, nothing written,
// nothing changed - including the saved forward, whose backward must still be the warm-up's.
template <class T>
void check_single_value_rejected(CaseView& view, Tally& tally) {
  const Case& c = view.info();
  const Tensor& X = view.get("X");
  const auto C = X.shape[static_cast<size_t>(c.channel_axis)];
  const std::string label = view.label() + " one value per channel, REJECT policy: ";

  std::vector<int64_t> warm_shape;
  std::vector<T> warm_x;
  make_warmup<T>(X, c.channel_axis, warm_shape, warm_x);
  std::vector<T> warm_dy(warm_x.size());
  for (size_t i = 0; i < warm_dy.size(); ++i) warm_dy[i] = static_cast<T>(static_cast<int>(i % 7) - 3);

  Layer layer = make_layer<T>(view, BN_SINGLE_VALUE_REJECT);
  require_ok(bn_set_training(layer.get(), 1), "bn_set_training");
  std::vector<T> warm_y(warm_x.size());
  require_ok(bn_forward(layer.get(), warm_shape.data(), ndim_of(warm_shape), warm_x.data(), warm_y.data()),
             "bn_forward (warm-up, two values per channel)");
  const Snapshot<T> before = snapshot<T>(layer.get(), C);

  // Leave a known message from another function, so a stale message cannot pass.
  REQUIRE(bn_set_training(nullptr, 1) != BN_OK);
  const std::string stale = bn_last_error();

  const std::vector<T> x = narrow<T>(X.data);
  std::vector<T> y(x.size());
  for (size_t i = 0; i < y.size(); ++i) y[i] = static_cast<T>(-1000.25) - static_cast<T>(i);  // sentinel
  const std::vector<T> sentinel = y;
  const bn_status status = bn_forward(layer.get(), X.shape.data(), ndim_of(X.shape), x.data(), y.data());
  const std::string message = bn_last_error();
  INFO(label << "bn_forward returned " << bn_status_string(status) << ", message '" << message << "'");
  CHECK(status == BN_ERR_SHAPE);
  CHECK(!message.empty());
  CHECK(message != stale);
  CHECK(message.find("bn_forward") != std::string::npos);

  check_same_bits(tally, label + "output buffer untouched", y, sentinel);
  const Snapshot<T> after = snapshot<T>(layer.get(), C);
  check_same_bits(tally, label + "gamma unchanged", after.gamma, before.gamma);
  check_same_bits(tally, label + "beta unchanged", after.beta, before.beta);
  check_same_bits(tally, label + "moving mean unchanged", after.moving_mean, before.moving_mean);
  check_same_bits(tally, label + "moving variance unchanged", after.moving_var, before.moving_var);
  check_same_bits(tally, label + "batch mean unchanged", after.batch_mean, before.batch_mean);
  check_same_bits(tally, label + "batch variance unchanged", after.batch_var, before.batch_var);

  // The saved forward is still the warm-up's: same gradients as a layer that never saw the call.
  Layer fresh = make_layer<T>(view, BN_SINGLE_VALUE_REJECT);
  require_ok(bn_set_training(fresh.get(), 1), "bn_set_training");
  std::vector<T> fresh_y(warm_x.size());
  require_ok(bn_forward(fresh.get(), warm_shape.data(), ndim_of(warm_shape), warm_x.data(), fresh_y.data()),
             "bn_forward (reference warm-up)");
  std::vector<T> dx(warm_x.size()), dg(static_cast<size_t>(C)), db(static_cast<size_t>(C));
  std::vector<T> fdx(warm_x.size()), fdg(static_cast<size_t>(C)), fdb(static_cast<size_t>(C));
  require_ok(bn_backward(layer.get(), warm_shape.data(), ndim_of(warm_shape), warm_x.data(), warm_dy.data(),
                         dx.data(), dg.data(), db.data()),
             "bn_backward after the rejected forward");
  require_ok(bn_backward(fresh.get(), warm_shape.data(), ndim_of(warm_shape), warm_x.data(), warm_dy.data(),
                         fdx.data(), fdg.data(), fdb.data()),
             "bn_backward (reference)");
  check_same_bits(tally, label + "warm-up dX after the rejected call", dx, fdx);
  check_same_bits(tally, label + "warm-up dgamma after the rejected call", dg, fdg);
  check_same_bits(tally, label + "warm-up dbeta after the rejected call", db, fdb);
}

template <class T>
void check_case(CaseView& view, Tally& tally) {
  if (view.info().expect_error) {
    REQUIRE(view.info().training);
    check_single_value_computed<T>(view, tally);
    check_single_value_rejected<T>(view, tally);
  } else {
    check_expected_outputs<T>(view, tally);
  }
  INFO(view.label() << ": stored tensors this run never read");
  CHECK(view.unused() == std::vector<std::string>{});
}

std::vector<std::string> ids_of_suite(const std::vector<std::string>& ids, const std::string& suite) {
  std::vector<std::string> out;
  for (const std::string& id : ids) {
    if (id.rfind(suite + "/", 0) == 0) out.push_back(id);
  }
  return out;
}

// All cases of one suite: one section per case and dtype, then a section that counts them.
void run_suite(const std::string& suite) {
  static std::map<std::string, Tally> tallies;  // survives Catch's re-runs of the test case
  Tally& tally = tallies[suite];
  const std::vector<std::string> ids = ids_of_suite(index_ids(), suite);
  const std::vector<std::string> dtypes =
      suite == "torch" ? std::vector<std::string>{"float32", "float64"} : std::vector<std::string>{"float32"};

  for (const std::string& id : ids) {
    DYNAMIC_SECTION(id) {
      const Case c = bn::conformance::load_case(kCasesDir, id);
      REQUIRE(c.dtypes() == dtypes);
      for (const std::string& dtype : dtypes) {
        DYNAMIC_SECTION(dtype) {
          CaseView view(c, dtype);
          if (dtype == "float32") {
            check_case<float>(view, tally);
          } else {
            check_case<double>(view, tally);
          }
          tally.completed.insert(id + " " + dtype);
        }
      }
    }
  }
  SECTION("every " + suite + " case of index.txt ran") {
    WARN(suite << ": " << tally.completed.size() << " (case, dtype) runs of " << ids.size() << " cases, "
               << tally.tensors << " tensor checks, " << tally.elements << " element comparisons");
    REQUIRE(ids.size() == kSuiteSizes.at(suite));
    REQUIRE(tally.completed.size() == ids.size() * dtypes.size());
  }
}

}  // namespace

TEST_CASE("index.txt lists the 60 cases of the three suites", "[conformance]") {
  const std::vector<std::string> ids = index_ids();
  INFO("index: " << kCasesDir << "/index.txt");
  CHECK(ids.size() == kTotalCases);
  size_t in_suites = 0;
  for (const auto& suite : kSuiteSizes) {
    const size_t n = ids_of_suite(ids, suite.first).size();
    INFO("suite " << suite.first);
    CHECK(n == suite.second);
    in_suites += n;
  }
  CHECK(in_suites == ids.size());  // no case outside the three suites (they would never run)
  std::vector<std::string> sorted = ids;
  std::sort(sorted.begin(), sorted.end());
  CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());

  // README §1.5: exactly three expected-error cases, all training with one value per channel.
  size_t single_value = 0;
  for (const std::string& id : ids) {
    const Case c = bn::conformance::load_case(kCasesDir, id);
    if (!c.expect_error) continue;
    ++single_value;
    const Tensor& x = *c.find("X", "float32");
    INFO(id);
    CHECK(c.training);
    CHECK(static_cast<int64_t>(x.data.size()) == x.shape[static_cast<size_t>(c.channel_axis)]);
  }
  CHECK(single_value == kSingleValueCases);
}

TEST_CASE("ONNX node test cases", "[conformance]") { run_suite("onnx_node"); }

TEST_CASE("ONNX pytorch-converted test cases", "[conformance]") { run_suite("onnx_pytorch_converted"); }

TEST_CASE("PyTorch-generated cases (float32 and float64)", "[conformance]") { run_suite("torch"); }
