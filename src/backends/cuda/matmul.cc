// CUDA layers: MatMul and Gemm through cuBLASLt, with optional bias/ReLU/GELU epilogues (matmul.h).
//
// Kiln's tensors are row-major and cuBLASLt's default order is column-major, so every product is computed
// transposed: row-major Y[M,N] = op(A) op(B) is column-major Y^T[N,M] = op(B)^T op(A)^T, which is cuBLASLt's
// D = A' B' with A' = our B and B' = our A, each read in place (a row-major [R,C] matrix is a column-major
// [C,R] one). A bias vector over Y's columns is then one value per row of D, which is what cuBLASLt's BIAS
// epilogue adds.
//
// MatMul's batch dims broadcast (numpy): the layer folds an unbatched B into M when A's batches are
// contiguous (one plain GEMM), uses strided batches (stride 0 for a broadcast operand) where the batch
// offsets are linear, and otherwise runs one strided-batched call per group of the outermost batch dims.
//
// Each layer holds two cuBLASLt plans: the tactic's algorithm, chosen for operands whose base pointers are
// 16-byte aligned (what tensor-core kernels load with), and a fallback chosen for element alignment only,
// used when run() is handed a less aligned pointer. The fallback also adds the bias with the prefill kernel
// rather than the BIAS epilogue, which reads the vector with wide loads.
//
// An addend of the output's own shape (Gemm's C of [M, N]; kiln.FusedMatMul's residual Z, batched or not)
// is cuBLASLt's C in the fast plan, read in place with a layout of its own that matches D's; the fallback
// copies it into D first (the prefill) and accumulates onto D.
#include "backends/cuda/matmul.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "backends/cuda/gemm_sm90.h"
#include "backends/cuda/matmul_helpers.h"

namespace kiln::cuda {
namespace {

constexpr size_t kMaxWorkspace = 32u << 20;  // cuBLASLt's split-K and stream-K kernels want a few MiB
constexpr int kHeuristicResults = 8;
constexpr int kTactics = kHeuristicResults;  // the builder times every algorithm the heuristic lists
constexpr uint32_t kFastAlign = 16;

bool is_float(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kFloat16: return CUDA_R_16F;
    case DType::kBFloat16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

// The largest power of two dividing v, at most `cap` (v == 0 divides by anything).
uint32_t align_of(int64_t v, uint32_t cap) {
  if (v == 0) return cap;
  const uint64_t low = static_cast<uint64_t>(v) & (~static_cast<uint64_t>(v) + 1);
  return low < cap ? static_cast<uint32_t>(low) : cap;
}

bool aligned(const void* p, uint32_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; }

std::string dims_of(const TensorDesc& d) { return d.has_rank ? shape_to_string(d.shape) : std::string("[?]"); }

// A cuBLASLt configuration of the layer: descriptor, algorithm, and what run() does around the GEMM.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  bool bias_in_epilogue = false;
  // C is handed to cuBLASLt as its own matrix (layout lay_c_, the output's), not prefilled into D.
  bool c_direct = false;
  // The prefill kernel writes prefill_c_scale * C (+ bias when prefill_bias) into D first; cuBLASLt then
  // accumulates with `beta` (0 when nothing was prefilled: D is not read).
  bool prefill_c = false;
  bool prefill_bias = false;
  float prefill_c_scale = 1.0f;
  float beta = 0.0f;
  uint32_t align_a = 1, align_b = 1, align_d = 1;  // what the base pointers of A, B, Y must be aligned to
  uint32_t align_c = 1;                            // and of C, when c_direct
  uint32_t align_bias = 1;
};

class CublasLtMatmulLayer final : public Layer {
 public:
  ~CublasLtMatmulLayer() override {
    for (Plan* p : {&fast_, &safe_})
      if (p->desc != nullptr) cublasLtMatmulDescDestroy(p->desc);
    for (cublasLtMatrixLayout_t l : {lay_a_, lay_b_, lay_c_, lay_d_})
      if (l != nullptr) cublasLtMatrixLayoutDestroy(l);
  }

  size_t workspace_bytes() const override { return std::max(fast_.workspace, has_safe_ ? safe_.workspace : 0); }

  Status run(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs, void* workspace,
             const CudaHandles& h) const override {
    if (empty_) return OkStatus();
    const char* a = static_cast<const char*>(inputs[0].data);
    const char* b = static_cast<const char*>(inputs[1].data);
    char* d = static_cast<char*>(outputs[0].data);
    const void* c = c_input_ >= 0 ? inputs[c_input_].data : nullptr;
    const void* bias = bias_input_ >= 0 ? inputs[bias_input_].data : nullptr;
    const int64_t rows = static_cast<int64_t>(group_a_.size()) * batch_ * M_;
    if (K_ == 0) {  // no products: Y = act(beta * C + bias)
      return launch_matmul_prefill(dtype_, c, c_rs_, c_cs_, gemm_beta_, bias, act_, d, rows, N_, h.stream);
    }
    const Plan* plan = &fast_;
    if (!aligned(a, fast_.align_a) || !aligned(b, fast_.align_b) || !aligned(d, fast_.align_d) ||
        (fast_.c_direct && !aligned(c, fast_.align_c)) || (bias != nullptr && !aligned(bias, fast_.align_bias))) {
      if (!has_safe_) return Internal("cuBLASLt layer: an operand is not 16-byte aligned and cuBLASLt has no fallback algorithm");
      plan = &safe_;
    }
    if (plan->workspace > 0 && workspace == nullptr) return Internal("cuBLASLt layer: no workspace given");

    if (plan->prefill_c || plan->prefill_bias) {
      const void* pc = plan->prefill_c ? c : nullptr;
      const void* pb = plan->prefill_bias ? bias : nullptr;
      if (pb == nullptr && c_full_ && plan->prefill_c_scale == 1.0f) {
        if (pc != d) KILN_CUDA_TRY(cudaMemcpyAsync(d, pc, static_cast<size_t>(rows * N_) * es_, cudaMemcpyDeviceToDevice, h.stream));
      } else {
        KILN_RETURN_IF_ERROR(launch_matmul_prefill(dtype_, pc, c_rs_, c_cs_, plan->prefill_c_scale, pb,
                                                   PrefillAct::kNone, d, rows, N_, h.stream));
      }
    }
    if (plan->bias_in_epilogue) {
      // The descriptor belongs to this layer (one per context, run on one stream at a time): the bias
      // pointer is read when cublasLtMatmul is called (or captured), so setting it here is safe.
      KILN_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    const size_t d_group_bytes = static_cast<size_t>(batch_ * M_ * N_) * es_;
    for (size_t g = 0; g < group_a_.size(); ++g) {
      const void* ga = a + group_a_[g] * static_cast<int64_t>(es_);
      const void* gb = b + group_b_[g] * static_cast<int64_t>(es_);
      void* gd = d + g * d_group_bytes;
      // C has D's layout, group for group; without c_direct, D itself is C (prefilled, or not read: beta 0).
      // A C that is D's own memory (the arena reusing it) runs as cuBLASLt's in-place form, Cdesc == Ddesc.
      const bool own_c = plan->c_direct && c != d;
      const void* gc = own_c ? static_cast<const char*>(c) + g * d_group_bytes : gd;
      const cublasStatus_t s =
          cublasLtMatmul(h.cublaslt, plan->desc, &alpha_, gb, lay_b_, ga, lay_a_, &plan->beta, gc, own_c ? lay_c_ : lay_d_,
                         gd, lay_d_, &plan->algo, workspace, plan->workspace, h.stream);
      KILN_RETURN_IF_ERROR(cublas_status(s, "cublasLtMatmul"));
    }
    return OkStatus();
  }

 private:
  friend Result<std::unique_ptr<Layer>> kiln::cuda::create_matmul_layer(const LayerSpec&, MatmulEpilogue,
                                                                        const std::string&, const CudaHandles&);
  Status make_plan(const CudaHandles& h, cublasComputeType_t compute, bool safe, int index, Plan* p, int* found);

  DType dtype_ = DType::kFloat32;
  size_t es_ = 4;
  bool empty_ = false;
  int64_t M_ = 0, N_ = 0, K_ = 0;  // per product (M folds an unbatched B's batches)
  bool trans_a_ = false, trans_b_ = false;
  int64_t batch_ = 1;                      // products per cuBLASLt call
  int64_t stride_a_ = 0, stride_b_ = 0;    // elements between a call's matrices (0: broadcast)
  std::vector<int64_t> group_a_{0}, group_b_{0};  // per call: element offset of its first A and B matrix
  float alpha_ = 1.0f, gemm_beta_ = 0.0f;
  int c_input_ = -1;  // Gemm's C (or FusedMatMul's Z) when it is added through beta (not as the bias)
  int64_t c_rs_ = 0, c_cs_ = 0;
  bool c_full_ = false;  // C has the output's shape (D's layout, batches and groups included)
  int bias_input_ = -1;  // the vector the epilogue adds (the fused bias, or a [N] C with beta 1)
  PrefillAct act_ = PrefillAct::kNone;
  cublasLtMatrixLayout_t lay_a_ = nullptr, lay_b_ = nullptr, lay_c_ = nullptr, lay_d_ = nullptr;
  Plan fast_, safe_;
  bool has_safe_ = false;
};

Status make_layout(cublasLtMatrixLayout_t* l, DType t, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                   int64_t stride) {
  KILN_CUBLAS_TRY(cublasLtMatrixLayoutCreate(l, cuda_type(t), static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    KILN_CUBLAS_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    KILN_CUBLAS_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return OkStatus();
}

struct PreferenceGuard {
  cublasLtMatmulPreference_t p = nullptr;
  ~PreferenceGuard() {
    if (p != nullptr) cublasLtMatmulPreferenceDestroy(p);
  }
};

Status CublasLtMatmulLayer::make_plan(const CudaHandles& h, cublasComputeType_t compute, bool safe, int index, Plan* p,
                                      int* found) {
  const bool has_bias = bias_input_ >= 0;
  p->bias_in_epilogue = has_bias && !safe;
  // C through beta: the fast plan reads a C of the output's shape in place as cuBLASLt's C, or copies a
  // broadcast one into D unscaled, and lets cuBLASLt scale it in float32; the safe plan adds the bias in the
  // prefill too, so it folds beta in there and accumulates with beta 1.
  const bool has_c = c_input_ >= 0;
  p->c_direct = has_c && c_full_ && !safe;
  p->prefill_c = has_c && !p->c_direct;
  p->prefill_bias = has_bias && safe;
  if (p->prefill_bias) {
    p->prefill_c_scale = gemm_beta_;
    p->beta = 1.0f;
  } else {
    p->prefill_c_scale = 1.0f;
    p->beta = has_c ? gemm_beta_ : 0.0f;
  }
  if (safe) {
    p->align_a = p->align_b = p->align_c = p->align_d = p->align_bias = static_cast<uint32_t>(es_);
  } else {
    p->align_a = p->align_b = p->align_d = kFastAlign;
    for (int64_t off : group_a_) p->align_a = std::min(p->align_a, align_of(off * es_, kFastAlign));
    for (int64_t off : group_b_) p->align_b = std::min(p->align_b, align_of(off * es_, kFastAlign));
    if (batch_ > 1) {
      p->align_a = std::min(p->align_a, align_of(stride_a_ * es_, kFastAlign));
      p->align_b = std::min(p->align_b, align_of(stride_b_ * es_, kFastAlign));
    }
    if (batch_ > 1 || group_a_.size() > 1) p->align_d = align_of(M_ * N_ * es_, kFastAlign);
    p->align_c = p->align_d;  // C advances as D does
    p->align_bias = kFastAlign;
  }

  KILN_CUBLAS_TRY(cublasLtMatmulDescCreate(&p->desc, compute, CUDA_R_32F));
  const cublasOperation_t op_a = trans_b_ ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
  const cublasOperation_t op_b = trans_a_ ? CUBLAS_OP_T : CUBLAS_OP_N;
  KILN_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  KILN_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  if (act_ == PrefillAct::kRelu) epi = p->bias_in_epilogue ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
  else if (act_ == PrefillAct::kGeluTanh) epi = p->bias_in_epilogue ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  else if (p->bias_in_epilogue) epi = CUBLASLT_EPILOGUE_BIAS;
  KILN_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (p->bias_in_epilogue) {
    const int32_t bias_type = cuda_type(dtype_);
    KILN_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    // The heuristic reads the alignment the bias will have from the pointer's value; run() sets the real one.
    const void* promise = reinterpret_cast<const void*>(static_cast<uintptr_t>(p->align_bias));
    KILN_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &promise, sizeof(promise)));
  }

  PreferenceGuard pref;
  KILN_CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref.p));
  const uint64_t ws = kMaxWorkspace;
  KILN_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  // cuBLASLt's A and B are our B and A.
  KILN_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &p->align_b, sizeof(uint32_t)));
  KILN_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &p->align_a, sizeof(uint32_t)));
  const uint32_t align_c = p->c_direct ? p->align_c : p->align_d;  // without c_direct, C is D
  KILN_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(uint32_t)));
  KILN_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &p->align_d, sizeof(uint32_t)));

  cublasLtMatmulHeuristicResult_t results[kHeuristicResults] = {};
  int returned = 0;
  // Asked with the C layout run() passes: an algorithm chosen for C == D need not serve a separate C.
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(h.cublaslt, p->desc, lay_b_, lay_a_, p->c_direct ? lay_c_ : lay_d_,
                                                          lay_d_, pref.p, kHeuristicResults, results, &returned);
  if (s != CUBLAS_STATUS_SUCCESS && s != CUBLAS_STATUS_NOT_SUPPORTED)
    return cublas_status(s, "cublasLtMatmulAlgoGetHeuristic");
  *found = s == CUBLAS_STATUS_SUCCESS ? returned : 0;
  if (*found == 0) {
    return Unsupported("cuBLASLt has no algorithm for " + dtype_name(dtype_) + " [" + std::to_string(M_) + "x" +
                       std::to_string(K_) + "] x [" + std::to_string(K_) + "x" + std::to_string(N_) + "]" +
                       (safe ? " with element-aligned operands" : ""));
  }
  if (index >= *found) return OkStatus();  // the caller says which tactic is missing
  p->algo = results[index].algo;
  p->workspace = results[index].workspaceSize;
  return OkStatus();
}

// The numpy broadcast of two batch shapes; false when they do not broadcast.
bool broadcast_batch(const Shape& a, const Shape& b, Shape* out) {
  const size_t n = std::max(a.size(), b.size());
  out->assign(n, 1);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1) return false;
    (*out)[i] = da == 1 ? db : da;
  }
  return true;
}

// Element offset of each output batch's matrix in an operand of batch shape `in` broadcast to `out`.
std::vector<int64_t> batch_offsets(const Shape& in, const Shape& out, int64_t matrix) {
  const size_t n = out.size(), lead = n - in.size();
  std::vector<int64_t> stride(n, 0);
  int64_t s = matrix;
  for (size_t i = n; i-- > lead;) {
    const int64_t d = in[i - lead];
    stride[i] = d == 1 ? 0 : s;
    s *= d;
  }
  const int64_t total = shape_numel(out);
  std::vector<int64_t> offsets(static_cast<size_t>(total), 0);
  std::vector<int64_t> idx(n, 0);
  int64_t off = 0;
  for (int64_t k = 0; k < total; ++k) {
    offsets[static_cast<size_t>(k)] = off;
    for (size_t i = n; i-- > 0;) {  // odometer step
      off += stride[i];
      if (++idx[i] < out[i]) break;
      off -= stride[i] * out[i];
      idx[i] = 0;
    }
  }
  return offsets;
}

// Whether offsets[g * inner + j] == offsets[g * inner] + j * stride for every group g, with one stride.
bool linear_groups(const std::vector<int64_t>& offsets, int64_t inner, int64_t* stride) {
  *stride = inner > 1 ? offsets[1] - offsets[0] : 0;
  for (size_t g = 0; g < offsets.size(); g += static_cast<size_t>(inner))
    for (int64_t j = 1; j < inner; ++j)
      if (offsets[g + static_cast<size_t>(j)] != offsets[g] + j * *stride) return false;
  return true;
}

int tactic_index(const std::string& tactic) {
  if (tactic == "default") return 0;
  const std::string prefix = "cuda.cublaslt.h";
  if (tactic.size() != prefix.size() + 1 || tactic.compare(0, prefix.size(), prefix) != 0) return -1;
  const int i = tactic.back() - '0';
  return i >= 0 && i < kTactics ? i : -1;
}

}  // namespace

const char* matmul_epilogue_name(MatmulEpilogue e) {
  switch (e) {
    case MatmulEpilogue::kNone: return "none";
    case MatmulEpilogue::kRelu: return "relu";
    case MatmulEpilogue::kGelu: return "gelu";
    case MatmulEpilogue::kBias: return "bias";
    case MatmulEpilogue::kBiasRelu: return "bias_relu";
    case MatmulEpilogue::kBiasGelu: return "bias_gelu";
  }
  return "?";
}

bool matmul_epilogue_has_bias(MatmulEpilogue e) {
  return e == MatmulEpilogue::kBias || e == MatmulEpilogue::kBiasRelu || e == MatmulEpilogue::kBiasGelu;
}

std::vector<std::string> matmul_tactics() {
  std::vector<std::string> names;
  for (int i = 0; i < kTactics; ++i) names.push_back("cuda.cublaslt.h" + std::to_string(i));
  return names;
}

std::vector<std::string> matmul_and_sm90_tactics(const LayerSpec& spec) {
  std::vector<std::string> names = matmul_tactics();
  for (std::string& t : sm90_gemm_tactics(spec)) names.push_back(std::move(t));
  return names;
}

std::string check_matmul_layer(const LayerSpec& spec, MatmulEpilogue epilogue) {
  const std::string& op = spec.node->op_type;
  const std::string who = "CUDA " + op + ": ";
  // kiln.FusedMatMul (fused_matmul.cc) is a MatMul whose input 2 is the epilogue's bias, and whose optional
  // input 3 is a residual Z of the output's shape, added as Gemm's C is with beta 1.
  if (op != "MatMul" && op != "Gemm" && op != "FusedMatMul")
    return "CUDA cuBLASLt layer: op " + op + " is not MatMul or Gemm (or kiln.FusedMatMul)";
  const bool gemm = op == "Gemm";
  const bool fused = op == "FusedMatMul";
  const size_t bias_index = gemm ? 3 : 2;
  const size_t max_inputs = matmul_epilogue_has_bias(epilogue) ? bias_index + (fused ? 2 : 1) : (gemm ? 3 : 2);
  if (spec.inputs.size() < 2 || !spec.inputs[0].present() || !spec.inputs[1].present())
    return who + "inputs A and B are required";
  if (spec.inputs.size() > max_inputs) return who + "too many inputs (" + std::to_string(spec.inputs.size()) + ")";
  const TensorDesc& a = spec.inputs[0];
  const TensorDesc& b = spec.inputs[1];
  if (!is_float(a.dtype))
    return who + "dtype " + dtype_name(a.dtype) + " is not supported (float32, float16 and bfloat16 only)";
  if (b.dtype != a.dtype) return who + "A and B differ in dtype (" + dtype_name(a.dtype) + ", " + dtype_name(b.dtype) + ")";
  if (!spec.outputs.empty() && spec.outputs[0].present() && spec.outputs[0].dtype != a.dtype)
    return who + "output dtype " + dtype_name(spec.outputs[0].dtype) + " differs from the inputs' " + dtype_name(a.dtype);
  if (gemm) {
    for (const TensorDesc* t : {&a, &b})
      if (t->has_rank && t->shape.size() != 2) return who + "A and B must be 2-D, got " + dims_of(a) + " and " + dims_of(b);
    if (spec.inputs.size() > 2 && spec.inputs[2].present()) {
      const TensorDesc& c = spec.inputs[2];
      if (c.dtype != a.dtype) return who + "C's dtype " + dtype_name(c.dtype) + " differs from A's " + dtype_name(a.dtype);
      if (c.has_rank && c.shape.size() > 2) return who + "C must have rank <= 2, got " + dims_of(c);
    }
  } else {
    for (const TensorDesc* t : {&a, &b})
      if (t->has_rank && t->shape.empty()) return who + "operands must have rank >= 1 (got a scalar)";
    if (fused && spec.inputs.size() > 3 && spec.inputs[3].present()) {
      const TensorDesc& z = spec.inputs[3];
      if (z.dtype != a.dtype) return who + "Z's dtype " + dtype_name(z.dtype) + " differs from A's " + dtype_name(a.dtype);
      const TensorDesc* y = spec.outputs.empty() ? nullptr : &spec.outputs[0];
      bool differ = z.has_rank && y != nullptr && y->has_rank && z.shape.size() != y->shape.size();
      for (size_t i = 0; !differ && z.has_rank && y != nullptr && y->has_rank && i < z.shape.size(); ++i)
        differ = z.shape[i] >= 0 && y->shape[i] >= 0 && z.shape[i] != y->shape[i];  // -1: not known yet
      if (differ) return who + "Z " + dims_of(z) + " must have the output's shape " + dims_of(*y) + " (no broadcasting)";
    }
  }
  if (matmul_epilogue_has_bias(epilogue)) {
    if (spec.inputs.size() <= bias_index || !spec.inputs[bias_index].present())
      return who + "epilogue " + matmul_epilogue_name(epilogue) + " needs a bias input (input " + std::to_string(bias_index) + ")";
    const TensorDesc& bias = spec.inputs[bias_index];
    if (bias.dtype != a.dtype) return who + "bias dtype " + dtype_name(bias.dtype) + " differs from the output's " + dtype_name(a.dtype);
    if (bias.has_rank && !(bias.shape.size() == 1 || (bias.shape.size() == 2 && bias.shape[0] == 1)))
      return who + "bias must be [N] or [1,N], got " + dims_of(bias);
  }
  return "";
}

Result<std::unique_ptr<Layer>> create_matmul_layer(const LayerSpec& spec, MatmulEpilogue epilogue,
                                                   const std::string& tactic, const CudaHandles& h) {
  if (std::string why = check_matmul_layer(spec, epilogue); !why.empty()) return Unsupported(why);
  if (is_sm90_gemm_tactic(tactic)) return create_sm90_gemm_layer(spec, epilogue, tactic, h);
  const int index = tactic_index(tactic);
  if (index < 0) return Unsupported("cuBLASLt layer: unknown tactic '" + tactic + "'");
  const bool gemm = spec.node->op_type == "Gemm";
  const std::string who = "CUDA " + spec.node->op_type + " '" + spec.node->name + "': ";
  for (size_t i = 0; i < spec.inputs.size(); ++i)
    if (spec.inputs[i].present() && !spec.inputs[i].is_static()) return InvalidArgument(who + "input " + std::to_string(i) + " has no concrete shape");

  std::unique_ptr<CublasLtMatmulLayer> L(new CublasLtMatmulLayer());
  L->dtype_ = spec.inputs[0].dtype;
  L->es_ = dtype_size(L->dtype_);
  if (epilogue == MatmulEpilogue::kRelu || epilogue == MatmulEpilogue::kBiasRelu) L->act_ = PrefillAct::kRelu;
  if (epilogue == MatmulEpilogue::kGelu || epilogue == MatmulEpilogue::kBiasGelu) L->act_ = PrefillAct::kGeluTanh;
  const Shape& as = spec.inputs[0].shape;
  const Shape& bs = spec.inputs[1].shape;
  Shape out_shape;
  int64_t total = 0;  // products

  if (gemm) {
    L->trans_a_ = spec.attr_int("transA", 0) != 0;
    L->trans_b_ = spec.attr_int("transB", 0) != 0;
    L->alpha_ = spec.attr_float("alpha", 1.0f);
    const float beta = spec.attr_float("beta", 1.0f);
    L->M_ = L->trans_a_ ? as[1] : as[0];
    L->K_ = L->trans_a_ ? as[0] : as[1];
    const int64_t kb = L->trans_b_ ? bs[1] : bs[0];
    L->N_ = L->trans_b_ ? bs[0] : bs[1];
    if (kb != L->K_)
      return InvalidArgument(who + "inner dimensions differ: op(A) is [" + std::to_string(L->M_) + "," + std::to_string(L->K_) +
                             "], op(B) is [" + std::to_string(kb) + "," + std::to_string(L->N_) + "]");
    out_shape = {L->M_, L->N_};
    total = 1;
    if (spec.inputs.size() > 2 && spec.inputs[2].present() && beta != 0.0f) {  // beta 0: C is not read (as the reference)
      const Shape& c = spec.inputs[2].shape;
      const int64_t cr = c.size() == 2 ? c[0] : 1, cc = c.empty() ? 1 : c.back();
      if ((cr != 1 && cr != L->M_) || (cc != 1 && cc != L->N_))
        return InvalidArgument(who + "C " + shape_to_string(c) + " cannot be broadcast to [" + std::to_string(L->M_) + "," +
                               std::to_string(L->N_) + "]");
      L->gemm_beta_ = beta;
      if (cr == 1 && cc == L->N_ && beta == 1.0f && !matmul_epilogue_has_bias(epilogue)) {
        L->bias_input_ = 2;  // C is a bias vector: cuBLASLt's epilogue adds it
      } else {
        L->c_input_ = 2;
        L->c_rs_ = cr == 1 ? 0 : cc;
        L->c_cs_ = cc == 1 ? 0 : 1;
        L->c_full_ = cr == L->M_ && cc == L->N_;
      }
    }
  } else {
    Shape a = as, b = bs;
    const bool a_vec = a.size() == 1, b_vec = b.size() == 1;
    if (a_vec) a.insert(a.begin(), 1);
    if (b_vec) b.push_back(1);
    L->M_ = a[a.size() - 2];
    L->K_ = a.back();
    L->N_ = b.back();
    if (b[b.size() - 2] != L->K_)
      return InvalidArgument(who + "inner dimensions differ: " + shape_to_string(as) + " x " + shape_to_string(bs));
    const Shape a_batch(a.begin(), a.end() - 2), b_batch(b.begin(), b.end() - 2);
    Shape batch;
    if (!broadcast_batch(a_batch, b_batch, &batch))
      return InvalidArgument(who + "batch dimensions do not broadcast: " + shape_to_string(as) + " x " + shape_to_string(bs));
    out_shape = batch;
    if (!a_vec) out_shape.push_back(L->M_);
    if (!b_vec) out_shape.push_back(L->N_);
    total = shape_numel(batch);
    if (total > 0 && L->M_ > 0 && L->N_ > 0) {
      const std::vector<int64_t> oa = batch_offsets(a_batch, batch, L->M_ * L->K_);
      const std::vector<int64_t> ob = batch_offsets(b_batch, batch, L->K_ * L->N_);
      bool b_shared = true, a_contiguous = true;
      for (int64_t i = 0; i < total; ++i) {
        b_shared = b_shared && ob[i] == 0;
        a_contiguous = a_contiguous && oa[i] == i * L->M_ * L->K_;
      }
      if (b_shared && a_contiguous) {
        L->M_ *= total;  // [batch..., M, K] x [K, N] is one [batch*M, K] x [K, N] product
      } else {
        // The largest group of innermost batch dims over which both operands advance by a fixed stride.
        int64_t inner = total;
        for (size_t s = batch.size() + 1; s-- > 0;) {
          inner = 1;
          for (size_t i = batch.size() - s; i < batch.size(); ++i) inner *= batch[i];
          if (linear_groups(oa, inner, &L->stride_a_) && linear_groups(ob, inner, &L->stride_b_)) break;
        }
        if (inner > INT32_MAX) return Unsupported(who + "more than 2^31 products in one batch");
        L->batch_ = inner;
        L->group_a_.clear();
        L->group_b_.clear();
        for (int64_t g = 0; g < total; g += inner) {
          L->group_a_.push_back(oa[g]);
          L->group_b_.push_back(ob[g]);
        }
      }
    }
    if (matmul_epilogue_has_bias(epilogue)) L->bias_input_ = 2;
    if (spec.node->op_type == "FusedMatMul" && spec.inputs.size() > 3 && spec.inputs[3].present()) {
      // The residual: Gemm's C with beta 1, of the output's shape, so laid out as D (batches and groups too).
      if (spec.inputs[3].shape != out_shape)
        return InvalidArgument(who + "Z " + shape_to_string(spec.inputs[3].shape) + " does not have the output's shape " +
                               shape_to_string(out_shape));
      L->c_input_ = 3;
      L->gemm_beta_ = 1.0f;
      L->c_rs_ = L->N_;
      L->c_cs_ = 1;
      L->c_full_ = true;
    }
  }
  if (gemm && matmul_epilogue_has_bias(epilogue)) L->bias_input_ = 3;
  if (!spec.outputs.empty() && spec.outputs[0].has_rank && spec.outputs[0].shape != out_shape)
    return InvalidArgument(who + "output shape " + shape_to_string(spec.outputs[0].shape) + " is not the product's " +
                           shape_to_string(out_shape));
  if (L->bias_input_ >= 0 && shape_numel(spec.inputs[L->bias_input_].shape) != L->N_)
    return InvalidArgument(who + "bias " + shape_to_string(spec.inputs[L->bias_input_].shape) + " does not have N = " +
                           std::to_string(L->N_) + " elements");

  L->empty_ = total == 0 || L->M_ == 0 || L->N_ == 0;
  if (L->empty_ || L->K_ == 0) return std::unique_ptr<Layer>(std::move(L));

  // Column-major views of the row-major operands (see the top of this file).
  if (L->trans_b_) KILN_RETURN_IF_ERROR(make_layout(&L->lay_b_, L->dtype_, L->K_, L->N_, L->K_, L->batch_, L->stride_b_));
  else KILN_RETURN_IF_ERROR(make_layout(&L->lay_b_, L->dtype_, L->N_, L->K_, L->N_, L->batch_, L->stride_b_));
  if (L->trans_a_) KILN_RETURN_IF_ERROR(make_layout(&L->lay_a_, L->dtype_, L->M_, L->K_, L->M_, L->batch_, L->stride_a_));
  else KILN_RETURN_IF_ERROR(make_layout(&L->lay_a_, L->dtype_, L->K_, L->M_, L->K_, L->batch_, L->stride_a_));
  KILN_RETURN_IF_ERROR(make_layout(&L->lay_d_, L->dtype_, L->N_, L->M_, L->N_, L->batch_, L->M_ * L->N_));
  // A C of the output's shape is read in place with D's type, dims, leading dim and batch stride.
  if (L->c_full_) KILN_RETURN_IF_ERROR(make_layout(&L->lay_c_, L->dtype_, L->N_, L->M_, L->N_, L->batch_, L->M_ * L->N_));

  const cublasComputeType_t compute = L->dtype_ == DType::kFloat32 && spec.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                                      : CUBLAS_COMPUTE_32F;
  int found = 0;
  KILN_RETURN_IF_ERROR(L->make_plan(h, compute, false, index, &L->fast_, &found));
  if (index >= found)
    return Unsupported(tactic + ": cuBLASLt's heuristic offers " + std::to_string(found) + " algorithm(s) for this problem");
  const Plan& f = L->fast_;
  const uint32_t es = static_cast<uint32_t>(L->es_);
  L->has_safe_ = f.align_a > es || f.align_b > es || f.align_d > es || (f.c_direct && f.align_c > es) || f.bias_in_epilogue;
  if (L->has_safe_) {
    // Without a fallback the layer still runs whenever its operands are aligned (as they always are when the
    // runtime's arena hands out 16-byte-aligned tensors); run() says so when they are not.
    const Status s = L->make_plan(h, compute, true, 0, &L->safe_, &found);
    if (s.code() == StatusCode::kUnsupported) L->has_safe_ = false;
    else KILN_RETURN_IF_ERROR(s);
  }
  return std::unique_ptr<Layer>(std::move(L));
}

void register_matmul_layers(LayerTable& table) {
  for (const char* op : {"MatMul", "Gemm"}) {
    LayerKind k;
    k.op_type = op;
    k.check = [](const LayerSpec& spec) { return check_matmul_layer(spec, MatmulEpilogue::kNone); };
    k.tactics = matmul_and_sm90_tactics;
    k.create = [](const LayerSpec& spec, const std::string& tactic, const CudaHandles& h) {
      return create_matmul_layer(spec, MatmulEpilogue::kNone, tactic, h);
    };
    table.add(std::move(k));
  }
}

}  // namespace kiln::cuda
