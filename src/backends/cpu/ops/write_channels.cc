// CPU reference of the optimizer's kiln.WriteChannels (domain "kiln"; made by write_concat_in_place):
// Y = Base with channels [offset, offset + Cp) replaced by Piece, both channels-last [N, H, W, C]. It is what
// remains of a channel Concat whose other input a kiln.FusedConvPair writes straight into its place in the
// concatenation: the GPU runs it in place, writing Piece's channels only.
#include <string>

#include "backends/cpu/kernel_util.h"
#include "backends/cpu/ops/movement_util.h"

namespace kiln::cpu {
namespace {

Status write_channels_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.error("inputs Base and Piece are required");
  if (ctx.num_inputs() > 2) return ctx.error("takes 2 inputs (Base, Piece), got " + std::to_string(ctx.num_inputs()));
  const Tensor& base = ctx.input(0);
  const Tensor& piece = ctx.input(1);
  if (base.rank() != 4 || piece.rank() != 4)
    return ctx.error("Base " + base.description() + " and Piece " + piece.description() + " must be [N, H, W, C]");
  if (piece.dtype() != base.dtype())
    return ctx.error("Piece " + piece.description() + " must have Base's dtype " + dtype_name(base.dtype()));
  for (int i = 0; i < 3; ++i)
    if (piece.dim(i) != base.dim(i))
      return ctx.error("Piece " + piece.description() + " must have Base's N, H and W " + base.description());
  const int64_t offset = ctx.attr_int("offset", 0), c = base.dim(3), cp = piece.dim(3);
  if (offset < 0 || offset > c - cp)
    return ctx.error("offset " + std::to_string(offset) + " puts Piece's " + std::to_string(cp) + " channels outside Base's " +
                     std::to_string(c));
  Tensor y = base.clone();
  mv::write_channels(y, piece, offset);
  ctx.set_output(0, std::move(y));
  return OkStatus();
}

}  // namespace

void register_write_channels_ops(ir::OpRegistry& r) {
  ir::OpSchema s;
  s.domain = "kiln";
  s.op_type = "WriteChannels";
  s.since_version = 1;
  s.cpu_kernel = write_channels_kernel;
  r.add(std::move(s));
}

}  // namespace kiln::cpu
