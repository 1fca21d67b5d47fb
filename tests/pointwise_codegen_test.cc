// The CUDA code generator of kiln.Pointwise (src/backends/cuda/pointwise_codegen.cc): the spec it takes
// from a node (dtypes, rank), the kernel parameters of a launch (dims, broadcast strides), the source it
// writes, and NVRTC compiling that source to a CUBIN for sm_90a. NVRTC needs no GPU, so these tests run
// (and must pass) on a machine without one; the kernels' numbers are checked by cuda_pointwise_test.cc.
#ifdef KILN_HAVE_CUDA
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "backends/cuda/pointwise_codegen.h"

namespace kiln::cuda {
namespace {

ir::Node pointwise_node(std::vector<std::string> program, size_t num_inputs, const std::string& name = "pw") {
  ir::Node n;
  n.name = name;
  n.domain = "kiln";
  n.op_type = "Pointwise";
  for (size_t i = 0; i < num_inputs; ++i) n.inputs.push_back("x" + std::to_string(i));
  n.outputs = {"y"};
  ir::Attribute a;
  a.type = ir::Attribute::Type::kStrings;
  a.strings = std::move(program);
  n.attributes["program"] = a;
  return n;
}

// The struct the kernels take (pointwise_codegen.h): n, dims padded with 1s, per input its strides over
// the output's dims (0 where it broadcasts), the mask of one-element inputs and that of inputs broadcast
// along outer dims only.
TEST(PointwiseCodegen, ArgsHoldShapesAndBroadcastStrides) {
  const ir::Node n = pointwise_node({"t0 = add in0 in1", "t1 = mul t0 in2"}, 3);
  auto spec = pointwise_kernel_spec(n, {DType::kFloat32, DType::kFloat32, DType::kFloat32}, 3);
  ASSERT_TRUE(spec.ok()) << spec.status().to_string();
  auto args = pointwise_args(*spec, {{2, 3, 4}, {4}, {2, 1, 1}});
  ASSERT_TRUE(args.ok()) << args.status().to_string();
  EXPECT_EQ(args->out_shape, (Shape{2, 3, 4}));
  EXPECT_EQ(args->n, 24);
  EXPECT_FALSE(args->vectorizable);
  const std::vector<int64_t> want = {24, 2, 3, 4, 1, 1, 1,  // n, dims
                                     12, 4, 1, 0, 0, 0,     // in0
                                     0, 0, 1, 0, 0, 0,      // in1
                                     1, 0, 0, 0, 0, 0,      // in2
                                     0,                     // no one-element input
                                     2};                    // in1 broadcasts along outer dims only
  EXPECT_EQ(args->words, want);

  // Full-size inputs, one-element ones (of any rank up to the output's) and ones that broadcast along outer
  // dims only, with rows of whole 16-byte chunks: the vectorized kernel's case.
  auto vec = pointwise_args(*spec, {{2, 3, 4}, {1}, {1, 3, 4}});
  ASSERT_TRUE(vec.ok()) << vec.status().to_string();
  EXPECT_TRUE(vec->vectorizable);
  EXPECT_EQ(vec->words[vec->words.size() - 2], 2);  // in1: one element
  EXPECT_EQ(vec->words.back(), 4);                   // in2: [1, 3, 4] along dim 0
  vec = pointwise_args(*spec, {{2, 3, 6}, {1}, {1, 3, 6}});
  ASSERT_TRUE(vec.ok()) << vec.status().to_string();
  EXPECT_FALSE(vec->vectorizable);  // rows of 6 floats: a 16-byte chunk would cross rows
  vec = pointwise_args(*spec, {{2, 3, 4}, {1}, {1, 2, 3, 4}});
  EXPECT_FALSE(vec.ok());  // rank 4 output for a rank-3 kernel
  vec = pointwise_args(*spec, {{2, 3, 4}, {}, {2, 3, 4}});
  ASSERT_TRUE(vec.ok()) << vec.status().to_string();
  EXPECT_TRUE(vec->vectorizable);
  EXPECT_EQ(vec->words[vec->words.size() - 2], 2);
  EXPECT_EQ(vec->words.back(), 0);

  auto bad = pointwise_args(*spec, {{2, 3, 4}, {5}, {1}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("do not broadcast"), std::string::npos) << bad.status().message();
}

// One kernel serves every shape of a rank: the name depends on the program, dtypes and rank only.
TEST(PointwiseCodegen, KernelNameIsStableAndTellsSpecsApart) {
  const ir::Node n = pointwise_node({"t0 = add in0 in1", "t1 = relu t0"}, 2);
  auto name_of = [&](const ir::Node& node, std::vector<DType> dtypes, size_t rank) {
    auto spec = pointwise_kernel_spec(node, dtypes, rank);
    EXPECT_TRUE(spec.ok()) << spec.status().to_string();
    return spec.ok() ? pointwise_kernel_name(*spec) : std::string();
  };
  const std::string base = name_of(n, {DType::kFloat32, DType::kFloat32}, 2);
  EXPECT_EQ(base.rfind("kiln_pointwise_", 0), 0u) << base;
  EXPECT_EQ(base.size(), std::string("kiln_pointwise_").size() + 16);
  EXPECT_EQ(name_of(n, {DType::kFloat32, DType::kFloat32}, 2), base);
  EXPECT_NE(name_of(n, {DType::kFloat32, DType::kFloat32}, 3), base);
  EXPECT_NE(name_of(n, {DType::kFloat16, DType::kFloat32}, 2), base);
  EXPECT_NE(name_of(pointwise_node({"t0 = add in0 in1", "t1 = sigmoid t0"}, 2), {DType::kFloat32, DType::kFloat32}, 2),
            base);
  auto spec = pointwise_kernel_spec(n, {DType::kFloat16, DType::kFloat32}, 2);
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(pointwise_vector_width(*spec), 8);  // 16 bytes of float16
}

TEST(PointwiseCodegen, GeneratedSourcesCompileToCubins) {
  struct Case {
    std::vector<std::string> program;
    std::vector<DType> dtypes;
    size_t rank;
  };
  const std::vector<Case> cases = {
      {{"t0 = add in0 in1", "t1 = relu t0"}, {DType::kFloat32, DType::kFloat32}, 2},
      // tanh-form GELU of x + bias.
      {{"t0 = add in0 in1", "t1 = pow t0 3", "t2 = mul t1 0.044715", "t3 = add t0 t2", "t4 = mul t3 0.7978845608",
        "t5 = tanh t4", "t6 = add t5 1", "t7 = mul t0 t6", "t8 = mul t7 0.5"},
       {DType::kFloat32, DType::kFloat32}, 6},
      // Every other op, literals inf / -inf / nan, float16 and bfloat16 in and out.
      {{"t0 = sub in0 in1", "t1 = div t0 2", "t2 = neg t1", "t3 = abs t2", "t4 = exp t3", "t5 = log t4",
        "t6 = sqrt t5", "t7 = sigmoid t6", "t8 = erf t7", "t9 = max t8 -inf", "t10 = min t9 inf",
        "t11 = add t10 nan"},
       {DType::kFloat16, DType::kBFloat16}, 3},
      {{"t0 = mul in0 in0", "t1 = sigmoid t0", "t2 = max t1 in1"}, {DType::kBFloat16, DType::kFloat32}, 2},
      {{"t0 = exp in0", "t1 = pow t0 in1", "t2 = erf t1"}, {DType::kFloat64, DType::kFloat64}, 1},
      {{"t0 = neg in0"}, {DType::kFloat32}, 0},  // a scalar output
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const ir::Node n = pointwise_node(cases[c].program, cases[c].dtypes.size());
    auto spec = pointwise_kernel_spec(n, cases[c].dtypes, cases[c].rank);
    ASSERT_TRUE(spec.ok()) << spec.status().to_string();
    const std::string name = pointwise_kernel_name(*spec);
    auto src = pointwise_kernel_source(*spec, name, n.name);
    ASSERT_TRUE(src.ok()) << src.status().to_string();
    EXPECT_NE(src->find("extern \"C\" __global__ void __launch_bounds__(256) " + name + "("), std::string::npos) << *src;
    EXPECT_NE(src->find("extern \"C\" __global__ void __launch_bounds__(256) " + name + "_vec("), std::string::npos) << *src;
    auto k = compile_pointwise(*spec, "sm_90a", n.name);
    ASSERT_TRUE(k.ok()) << k.status().to_string() << "\n" << *src;
    EXPECT_EQ(k->kernel, name);
    // An ELF file, as cuModuleLoadData wants it.
    ASSERT_GE(k->cubin.size(), 4u);
    EXPECT_EQ(k->cubin.substr(1, 3), "ELF");
  }
}

TEST(PointwiseCodegen, ErrorsNameTheNodeAndCarryTheNvrtcLog) {
  const ir::Node bad_program = pointwise_node({"t0 = gelu in0"}, 1, "pw_bad");
  auto spec = pointwise_kernel_spec(bad_program, {DType::kFloat32}, 1);
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("pw_bad"), std::string::npos) << spec.status().message();
  EXPECT_NE(spec.status().message().find("unknown op"), std::string::npos) << spec.status().message();

  const ir::Node add = pointwise_node({"t0 = add in0 in1"}, 2, "pw_add");
  auto deep = pointwise_kernel_spec(add, {DType::kFloat32, DType::kFloat32}, 7);
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.status().message().find("rank 7"), std::string::npos) << deep.status().message();
  auto ints = pointwise_kernel_spec(add, {DType::kInt32, DType::kFloat32}, 1);
  ASSERT_FALSE(ints.ok());
  EXPECT_NE(ints.status().message().find("int32"), std::string::npos) << ints.status().message();
  std::vector<std::string> sum = {"t0 = add in0 in1"};
  for (int i = 2; i < 33; ++i) sum.push_back("t" + std::to_string(i - 1) + " = add t" + std::to_string(i - 2) + " in" + std::to_string(i));
  auto many = pointwise_kernel_spec(pointwise_node(sum, 33, "pw_many"), std::vector<DType>(33, DType::kFloat32), 1);
  ASSERT_FALSE(many.ok());
  EXPECT_NE(many.status().message().find("33 inputs"), std::string::npos) << many.status().message();

  auto broken = compile_to_cubin("extern \"C\" __global__ void k(float* p) { p[0] = undefined_name; }", "k");
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("undefined_name"), std::string::npos) << broken.status().message();
}

}  // namespace
}  // namespace kiln::cuda
#endif  // KILN_HAVE_CUDA
