// CPU reference of the optimizer's kiln.Relayout (domain "kiln"; made by fuse_relayout):
// Y = Pad(Cast(Transpose(X, perm), to), pads, constant 0), attributes as backends/relayout_spec.h has them.
// It is the oracle of the CUDA layer and of the pass: every output element is the X element it comes from
// (or a zero of the padding), gathered as the Transpose and Pad references do it, then converted with Cast's
// own conversion. A zero pad converts to zero in every float type, so padding before or after the cast is the
// same, and the fused op agrees with the chain it replaces bit for bit.
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/movement_util.h"
#include "backends/relayout_spec.h"

namespace kiln::cpu {
namespace {

Status relayout_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  if (ctx.num_inputs() > 1) return ctx.error("takes 1 input (X), got " + std::to_string(ctx.num_inputs()));
  const Tensor& x = ctx.input(0);
  RelayoutAttrs a;
  if (std::string why = read_relayout_attrs(ctx.node(), x.rank(), x.dtype(), &a); !why.empty()) return ctx.error(why);
  const Shape out_shape = relayout_shape(x.shape(), a);
  KILN_RETURN_IF_ERROR(mv::check_output_shape(ctx, out_shape));

  // For each output element, the linear index of its X element, -1 in the padding (gathered as zero bytes,
  // +0.0 in every float type).
  const size_t rank = a.perm.size();
  const std::vector<int64_t> in_strides = strides_of(x.shape());
  std::vector<int64_t> map(static_cast<size_t>(shape_numel(out_shape)));
  std::vector<int64_t> idx(rank, 0);
  for (size_t o = 0; o < map.size(); ++o) {
    int64_t src = 0;
    for (size_t i = 0; i < rank && src >= 0; ++i) {
      const int64_t c = idx[i] - a.pads[i];
      src = c < 0 || c >= x.dim(a.perm[i]) ? -1 : src + c * in_strides[a.perm[i]];
    }
    map[o] = src;
    mv::next_index(idx, out_shape);
  }
  const Tensor moved = mv::gather_elements_by_index(x, out_shape, map);
  if (a.to == x.dtype()) {
    ctx.set_output(0, moved);
    return OkStatus();
  }
  KILN_ASSIGN_OR_RETURN(Tensor y, cast_tensor(moved, a.to));
  ctx.set_output(0, std::move(y));
  return OkStatus();
}

}  // namespace

void register_relayout_ops(ir::OpRegistry& r) {
  ir::OpSchema s;
  s.domain = "kiln";
  s.op_type = "Relayout";
  s.since_version = 1;
  s.cpu_kernel = relayout_kernel;
  r.add(std::move(s));
}

}  // namespace kiln::cpu
