#include "torch_peer.hpp"

#include "timing.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace bn::bench {
namespace {

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

}  // namespace

std::optional<double> TorchPeer::Times::best() const {
  if (plain && heap_reuse) return std::min(*plain, *heap_reuse);
  return plain ? plain : heap_reuse;
}

void TorchPeer::run_all(const std::vector<int>& threads) {
  if (access(options_.python.c_str(), X_OK) != 0) {
    description_ = "PyTorch: not installed (apt-get install python3-torch; no " +
                   options_.python + ")";
    return;
  }
  if (access(options_.torch_script.c_str(), R_OK) != 0) {
    description_ = "PyTorch: script " + options_.torch_script + " not found";
    return;
  }
  available_ = true;
  for (int t : threads)
    for (bool heap : {false, true})
      if (!run_one(t, heap)) return;
  if (times_.empty()) {
    available_ = false;
    description_ = "PyTorch: the script gave no result (see the [torch] messages above)";
    return;
  }
  description_ = "PyTorch " + version_ +
                 ": torch.nn.functional.batch_norm / aten.native_batch_norm_backward via " +
                 options_.python + ", torch.set_num_threads(T) (OpenMP); best of plain and " +
                 "heap-reuse runs";
}

bool TorchPeer::run_one(int threads, bool heap_reuse) {
  // OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE slow torch down: unset them for this child only.
  std::ostringstream cmd;
  cmd << "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE " << (heap_reuse ? kHeapReuse : "")
      << " " << quote(options_.python) << " " << quote(options_.torch_script) << " --cases "
      << quote(options_.cases_path) << " --threads " << threads << " --target "
      << options_.target_seconds << " 2>&1";
  std::fprintf(stderr, "[torch] %d thread(s)%s ...\n", threads,
               heap_reuse ? ", heap reuse" : "");
  FILE* pipe = popen(cmd.str().c_str(), "r");
  if (!pipe) {
    available_ = false;
    description_ = "PyTorch: could not start " + options_.python;
    return false;
  }
  char line[1024];
  bool absent = false;
  while (std::fgets(line, sizeof line, pipe)) {
    std::istringstream in(line);
    std::string tag;
    in >> tag;
    if (tag == "result") {
      std::string name, layout, mode;
      double seconds = 0;
      if (in >> name >> layout >> mode >> seconds) {
        Samples& tm = times_[Key{name, layout, mode, threads}];
        (heap_reuse ? tm.heap_reuse : tm.plain).push_back(seconds);
      }
    } else if (tag == "version") {
      in >> version_;
    } else if (tag == "absent") {
      absent = true;
    } else {
      std::fprintf(stderr, "[torch] %s", line);  // warnings, tracebacks
    }
  }
  const int status = pclose(pipe);
  if (absent) {
    available_ = false;
    description_ = "PyTorch: not installed (apt-get install python3-torch)";
    return false;
  }
  if (status != 0) std::fprintf(stderr, "[torch] the script exited with status %d\n", status);
  return true;
}

TorchPeer::Times TorchPeer::lookup(const std::string& name, const std::string& layout,
                                   const std::string& mode, int threads) const {
  auto it = times_.find(Key{name, layout, mode, threads});
  if (it == times_.end()) return {};
  return {median_of(it->second.plain), median_of(it->second.heap_reuse)};
}

}  // namespace bn::bench
