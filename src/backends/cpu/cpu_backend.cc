#include <cstdlib>
#include <cstring>

#include "backends/backend.h"
#include "builder/build_plan.h"

namespace kiln::backends {

namespace {

class CpuBackend : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  std::string device_name() const override { return builder::cpu_device_name(); }

  bool supports(const ir::Node& node, const ir::Graph&, int opset, std::string* why_not) const override {
    const ir::OpSchema* s = ir::OpRegistry::global().find(node.domain, node.op_type);
    if (s == nullptr || s->cpu_kernel == nullptr) {
      if (why_not) *why_not = "no CPU kernel for " + node.op_type;
      return false;
    }
    if (opset < s->since_version) {
      if (why_not) *why_not = "the CPU kernel starts at opset " + std::to_string(s->since_version);
      return false;
    }
    return true;
  }

  std::vector<Tactic> tactics(const ir::Node& node, const ir::Graph&, int) const override {
    const ir::OpSchema* s = ir::OpRegistry::global().find(node.domain, node.op_type);
    return {Tactic{"cpu.reference." + (s ? s->family : std::string("unknown"))}};
  }

  Result<void*> allocate(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (p == nullptr) return OutOfRange("cannot allocate " + std::to_string(bytes) + " bytes of host memory");
    return p;
  }
  void free(void* ptr) override { std::free(ptr); }
  Status copy_to_device(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return OkStatus();
  }
  Status copy_to_host(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return OkStatus();
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace kiln::backends
