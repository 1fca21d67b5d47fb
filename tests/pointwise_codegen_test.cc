// The CUDA code generator of kiln.Pointwise (src/backends/cuda/pointwise_codegen.cc): the spec it takes
// from a node (broadcast strides, dtypes), the source it writes, and NVRTC compiling that source to a
// CUBIN for sm_90a. NVRTC needs no GPU, so these tests run (and must pass) on a machine without one; the
// kernel's numbers are checked by the CUDA layer's tests, which launch it.
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

TEST(PointwiseCodegen, SpecHasBroadcastStrides) {
  const ir::Node n = pointwise_node({"t0 = add in0 in1", "t1 = mul t0 in2"}, 3);
  auto spec = pointwise_kernel_spec(n, {{2, 3, 4}, {4}, {2, 1, 1}}, {DType::kFloat32, DType::kFloat32, DType::kFloat32});
  ASSERT_TRUE(spec.ok()) << spec.status().to_string();
  EXPECT_EQ(spec->out_dims, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(spec->input_strides[0], (std::vector<int64_t>{12, 4, 1}));
  EXPECT_EQ(spec->input_strides[1], (std::vector<int64_t>{0, 0, 1}));
  EXPECT_EQ(spec->input_strides[2], (std::vector<int64_t>{1, 0, 0}));
  EXPECT_EQ(spec->out_dtype, DType::kFloat32);
}

TEST(PointwiseCodegen, GeneratedSourcesCompileToCubins) {
  struct Case {
    std::vector<std::string> program;
    std::vector<Shape> shapes;
    std::vector<DType> dtypes;
  };
  const std::vector<Case> cases = {
      {{"t0 = add in0 in1", "t1 = relu t0"}, {{8, 16}, {8, 16}}, {DType::kFloat32, DType::kFloat32}},
      // tanh-form GELU of x + bias, with broadcasting.
      {{"t0 = add in0 in1", "t1 = pow t0 3", "t2 = mul t1 0.044715", "t3 = add t0 t2", "t4 = mul t3 0.7978845608",
        "t5 = tanh t4", "t6 = add t5 1", "t7 = mul t0 t6", "t8 = mul t7 0.5"},
       {{2, 3, 4, 5, 6, 7}, {7}}, {DType::kFloat32, DType::kFloat32}},
      // Every other op, literals inf / -inf / nan, float16 and bfloat16 in and out.
      {{"t0 = sub in0 in1", "t1 = div t0 2", "t2 = neg t1", "t3 = abs t2", "t4 = exp t3", "t5 = log t4",
        "t6 = sqrt t5", "t7 = sigmoid t6", "t8 = erf t7", "t9 = max t8 -inf", "t10 = min t9 inf",
        "t11 = add t10 nan"},
       {{4, 1, 8}, {3, 1}}, {DType::kFloat16, DType::kBFloat16}},
      {{"t0 = mul in0 in0", "t1 = sigmoid t0", "t2 = max t1 in1"}, {{5, 5}, {1}}, {DType::kBFloat16, DType::kFloat32}},
      {{"t0 = exp in0", "t1 = pow t0 in1", "t2 = erf t1"}, {{9}, {9}}, {DType::kFloat64, DType::kFloat64}},
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const ir::Node n = pointwise_node(cases[c].program, cases[c].shapes.size());
    auto spec = pointwise_kernel_spec(n, cases[c].shapes, cases[c].dtypes);
    ASSERT_TRUE(spec.ok()) << spec.status().to_string();
    const std::string name = "kiln_pointwise_" + std::to_string(c);
    auto src = pointwise_kernel_source(*spec, name, n.name);
    ASSERT_TRUE(src.ok()) << src.status().to_string();
    EXPECT_NE(src->find("extern \"C\" __global__ void " + name + "("), std::string::npos) << *src;
    auto cubin = compile_to_cubin(*src, name);
    ASSERT_TRUE(cubin.ok()) << cubin.status().to_string() << "\n" << *src;
    EXPECT_GT(cubin->size(), 0u);
    // An ELF file, as cuModuleLoadData wants it.
    ASSERT_GE(cubin->size(), 4u);
    EXPECT_EQ(std::string(cubin->data() + 1, 3), "ELF");
  }
}

TEST(PointwiseCodegen, ErrorsNameTheNodeAndCarryTheNvrtcLog) {
  const ir::Node bad_program = pointwise_node({"t0 = gelu in0"}, 1, "pw_bad");
  auto spec = pointwise_kernel_spec(bad_program, {{4}}, {DType::kFloat32});
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("pw_bad"), std::string::npos) << spec.status().message();
  EXPECT_NE(spec.status().message().find("unknown op"), std::string::npos) << spec.status().message();

  const ir::Node add = pointwise_node({"t0 = add in0 in1"}, 2, "pw_add");
  auto nb = pointwise_kernel_spec(add, {{2, 3}, {4}}, {DType::kFloat32, DType::kFloat32});
  ASSERT_FALSE(nb.ok());
  EXPECT_NE(nb.status().message().find("do not broadcast"), std::string::npos) << nb.status().message();
  auto deep = pointwise_kernel_spec(add, {{1, 1, 1, 1, 1, 1, 2}, {2}}, {DType::kFloat32, DType::kFloat32});
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.status().message().find("rank 7"), std::string::npos) << deep.status().message();
  auto ints = pointwise_kernel_spec(add, {{2}, {2}}, {DType::kInt32, DType::kFloat32});
  ASSERT_FALSE(ints.ok());
  EXPECT_NE(ints.status().message().find("int32"), std::string::npos) << ints.status().message();

  auto broken = compile_to_cubin("extern \"C\" __global__ void k(float* p) { p[0] = undefined_name; }", "k");
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("undefined_name"), std::string::npos) << broken.status().message();
}

}  // namespace
}  // namespace kiln::cuda
#endif  // KILN_HAVE_CUDA
