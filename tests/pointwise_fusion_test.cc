// kiln.Pointwise (src/backends/cpu/ops/pointwise.cc) against the ONNX ops it stands for, and the pass that
// makes it (fuse_pointwise): the graph after the pass, its outputs before and after through the CPU
// executor on random inputs, the graphs that must stay as they are, and the errors of bad programs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "builder/graph_dump.h"
#include "builder/optimize_graph.h"
#include "core/cast.h"
#include "graph_builder.h"
#include "kernel_harness.h"
#include "passes/passes.h"
#include "random_tensors.h"
#include "runtime/executor.h"

namespace kiln::testing {
namespace {

std::mt19937& rng() {
  static std::mt19937 gen(20261124);
  return gen;
}

// Uniform in [lo, hi], never zero.
Tensor random_tensor(const Shape& shape, DType dtype = DType::kFloat32, float lo = -2.0f, float hi = 2.0f) {
  return testing::random_tensor(rng(), dtype, shape, lo, hi);
}

void expect_close(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const Tensor g = cast_tensor(got, DType::kFloat64).value(), w = cast_tensor(want, DType::kFloat64).value();
  int bad = 0;
  for (int64_t i = 0; i < g.numel() && bad < 5; ++i) {
    const double a = g.data<double>()[i], b = w.data<double>()[i];
    if (std::isnan(a) && std::isnan(b)) continue;
    if (!(std::fabs(a - b) <= tol * (1.0 + std::fabs(b)))) {
      ++bad;
      ADD_FAILURE() << what << ": element " << i << ": got " << a << ", want " << b;
    }
  }
}

ir::Attribute program_attr(std::vector<std::string> lines) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kStrings;
  a.strings = std::move(lines);
  return a;
}

OpRun run_pointwise(std::vector<Value> inputs, std::vector<std::string> program, const std::string& name = "pw") {
  return run_kernel("kiln", "Pointwise", std::move(inputs), {{"program", program_attr(std::move(program))}}, 1, 1, name);
}

Tensor run_ok(const std::string& op, std::vector<Value> inputs, int opset = 17) {
  OpRun r = run_kernel("", op, std::move(inputs), {}, 1, opset, "n_" + op);
  EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return r.status.ok() ? r.outputs[0].tensor() : Tensor();
}

Tensor scalar(float v) { return Tensor::from_vector<float>(DType::kFloat32, {}, {v}); }

// ---------------------------------------------------------------------------------------------------------
// The op

TEST(PointwiseOp, EveryOpMatchesItsOnnxReference) {
  const Tensor x = random_tensor({3, 5}), y = random_tensor({3, 5}), pos = random_tensor({3, 5}, DType::kFloat32, 0.1f, 3.0f);
  for (const char* unary : {"Neg", "Abs", "Exp", "Tanh", "Sigmoid", "Relu", "Erf"}) {
    std::string name = unary;
    for (char& c : name) c = static_cast<char>(std::tolower(c));
    OpRun r = run_pointwise({x}, {"t0 = " + name + " in0"});
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    expect_close(r.outputs[0].tensor(), run_ok(unary, {x}), 1e-6, unary);
  }
  for (const char* unary : {"Log", "Sqrt"}) {
    std::string name = unary;
    for (char& c : name) c = static_cast<char>(std::tolower(c));
    OpRun r = run_pointwise({pos}, {"t0 = " + name + " in0"});
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    expect_close(r.outputs[0].tensor(), run_ok(unary, {pos}), 1e-6, unary);
  }
  for (const char* binary : {"Add", "Sub", "Mul", "Div", "Max", "Min"}) {
    std::string name = binary;
    for (char& c : name) c = static_cast<char>(std::tolower(c));
    OpRun r = run_pointwise({x, y}, {"t0 = " + name + " in0 in1"});
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    expect_close(r.outputs[0].tensor(), run_ok(binary, {x, y}), 1e-6, binary);
  }
  OpRun r = run_pointwise({pos, y}, {"t0 = pow in0 in1"});
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  expect_close(r.outputs[0].tensor(), run_ok("Pow", {pos, y}), 1e-6, "Pow");
}

TEST(PointwiseOp, ChainWithBroadcastingAndLiteralsMatchesDecomposition) {
  // GELU (tanh form) of x + b, b broadcast along rows: 0.5 * s * (1 + tanh(0.7978845608 * (s + 0.044715 * s^3))).
  const Tensor x = random_tensor({2, 3, 4}), b = random_tensor({4});
  const std::vector<std::string> program = {
      "t0 = add in0 in1", "t1 = pow t0 3",      "t2 = mul t1 0.044715", "t3 = add t0 t2",
      "t4 = mul t3 0.7978845608", "t5 = tanh t4", "t6 = add t5 1",      "t7 = mul t0 t6", "t8 = mul t7 0.5"};
  OpRun r = run_pointwise({x, b}, program);
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  const Tensor s = run_ok("Add", {x, b});
  Tensor t = run_ok("Mul", {run_ok("Pow", {s, scalar(3)}), scalar(0.044715f)});
  t = run_ok("Tanh", {run_ok("Mul", {run_ok("Add", {s, t}), scalar(0.7978845608f)})});
  t = run_ok("Mul", {run_ok("Mul", {s, run_ok("Add", {t, scalar(1)})}), scalar(0.5f)});
  expect_close(r.outputs[0].tensor(), t, 1e-5, "gelu chain");
  // Broadcasting both ways, [3, 1] with [1, 4], and a literal -inf through max.
  const Tensor c = random_tensor({3, 1}), d = random_tensor({1, 4});
  OpRun m = run_pointwise({c, d}, {"t0 = sub in0 in1", "t1 = max t0 -inf", "t2 = sigmoid t1"});
  ASSERT_TRUE(m.status.ok()) << m.status.to_string();
  expect_close(m.outputs[0].tensor(), run_ok("Sigmoid", {run_ok("Sub", {c, d})}), 1e-6, "broadcast both ways");
}

TEST(PointwiseOp, ComputesInFloat32AndReturnsIn0sDtype) {
  const Tensor x = random_tensor({4, 4}), y = random_tensor({4, 4});
  for (DType dt : {DType::kFloat16, DType::kBFloat16, DType::kFloat64}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor xl = cast_tensor(x, dt).value(), yl = cast_tensor(y, dt).value();
    OpRun r = run_pointwise({xl, yl}, {"t0 = mul in0 in1", "t1 = exp t0"});
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    EXPECT_EQ(r.outputs[0].tensor().dtype(), dt);
    // In float32 (float64 for float64) from the inputs to the one rounding at the end.
    const Tensor wide = run_ok("Exp", {run_ok("Mul", {cast_tensor(xl, dt == DType::kFloat64 ? dt : DType::kFloat32).value(),
                                                      cast_tensor(yl, dt == DType::kFloat64 ? dt : DType::kFloat32).value()})});
    expect_close(r.outputs[0].tensor(), cast_tensor(wide, dt).value(), 0.0, "one rounding");
  }
}

TEST(PointwiseOp, BadProgramsAndInputsAreErrorsNamingTheNode) {
  const Tensor x = random_tensor({2, 3}), y = random_tensor({4});
  const std::vector<std::pair<std::vector<std::string>, std::string>> bad = {
      {{}, "program is empty"},
      {{"t0 = add in0"}, "takes 2 operand(s), got 1"},
      {{"t0 = relu in0 in0"}, "takes 1 operand(s), got 2"},
      {{"t0 = gelu in0"}, "unknown op \"gelu\""},
      {{"t0 = add in0 t0"}, "reads t0 before it is defined"},
      {{"t0 = relu in0", "t1 = add t2 in0"}, "reads t2 before it is defined"},
      {{"t0 = add in0 in3"}, "reads in3 but the node has 1 input(s)"},
      {{"t0 relu in0"}, "expected \"t0 = OP a [b [c]]\""},
      {{"t1 = relu in0"}, "defines t1, expected t0"},
      {{"t0 = mul in0 0.5x"}, "operand \"0.5x\" is not inI, tJ or a number"},
  };
  for (const auto& [program, want] : bad) {
    OpRun r = run_pointwise({x}, program, "pw_bad");
    ASSERT_FALSE(r.status.ok()) << want;
    EXPECT_NE(r.status.message().find("pw_bad"), std::string::npos) << r.status.message();
    EXPECT_NE(r.status.message().find(want), std::string::npos) << r.status.message();
  }
  OpRun nb = run_pointwise({x, y}, {"t0 = add in0 in1"}, "pw_nb");
  ASSERT_FALSE(nb.status.ok());
  EXPECT_NE(nb.status.message().find("pw_nb"), std::string::npos);
  EXPECT_NE(nb.status.message().find("do not broadcast"), std::string::npos) << nb.status.message();
  OpRun ints = run_pointwise({Tensor::from_vector<int64_t>(DType::kInt64, {2}, {1, 2})}, {"t0 = neg in0"}, "pw_int");
  ASSERT_FALSE(ints.status.ok());
  EXPECT_NE(ints.status.message().find("must be a float tensor"), std::string::npos) << ints.status.message();
}

// An engine's kiln.Pointwise carries its CUDA kernel (`cubin`, `kernel`; builder/build_plan.cc): the CPU
// reference, which runs the node where the GPU does not, reads only `program`.
TEST(PointwiseOp, CpuReferenceIgnoresTheStoredKernel) {
  const Tensor x = random_tensor({3, 4}), b = random_tensor({4});
  const std::vector<std::string> program = {"t0 = add in0 in1", "t1 = sigmoid t0"};
  OpRun plain = run_pointwise({x, b}, program);
  ASSERT_TRUE(plain.status.ok()) << plain.status.to_string();
  ir::Attribute cubin = string_attr(std::string("\x7f" "ELF\0\x01\x02", 7)), kernel = string_attr("kiln_pointwise_0");
  OpRun with = run_kernel("kiln", "Pointwise", {x, b},
                          {{"program", program_attr(program)}, {"cubin", cubin}, {"kernel", kernel}}, 1, 1, "pw");
  ASSERT_TRUE(with.status.ok()) << with.status.to_string();
  expect_close(with.outputs[0].tensor(), plain.outputs[0].tensor(), 0, "with cubin");
}

// `kiln inspect --graph` shows a stored kernel's size, not its bytes.
TEST(PointwiseOp, GraphDumpShowsTheCubinsSize) {
  ir::Model m;
  m.opsets[""] = 17;
  m.opsets["kiln"] = 1;
  ir::Node n;
  n.name = "pw";
  n.domain = "kiln";
  n.op_type = "Pointwise";
  n.inputs = {"x"};
  n.outputs = {"y"};
  n.attributes["program"] = program_attr({"t0 = neg in0"});
  n.attributes["cubin"] = string_attr(std::string("\x7f" "ELF\0\x01\x02", 7));
  n.attributes["kernel"] = string_attr("kiln_pointwise_0123456789abcdef");
  m.graph.nodes.push_back(n);
  const std::string dump = builder::dump_graph(m);
  EXPECT_NE(dump.find("pw: kiln.Pointwise(x) cubin: 7 bytes kernel=\"kiln_pointwise_0123456789abcdef\" program=[\"t0 = neg in0\"] ->"),
            std::string::npos) << dump;
  EXPECT_EQ(dump.find("ELF"), std::string::npos) << dump;
}

// ---------------------------------------------------------------------------------------------------------
// The pass

struct Builder : GraphBuilder {
  using GraphBuilder::GraphBuilder;
  void input(const std::string& name, const Shape& shape, DType dtype = DType::kFloat32) {
    GraphBuilder::input(name, random_tensor(shape, dtype, 0.1f, 2.0f));  // positive: Log and Sqrt stay finite
  }
  void constant(const std::string& name, const Shape& shape) { init(name, random_tensor(shape)); }
  void node(const std::string& op, std::vector<std::string> ins, const std::string& out, const std::string& name) {
    GraphBuilder::node(op, std::move(ins), {out}, name);
  }
  // Runs fuse_pointwise after infer_shapes, comparing the outputs before and after; returns the count.
  int fuse_and_compare(double tol = 1e-5) {
    EXPECT_TRUE(passes::infer_shapes(m).ok());
    const std::vector<Tensor> before = run();
    int fused = -1;
    EXPECT_TRUE(passes::fuse_pointwise(m, &fused).ok());
    EXPECT_TRUE(passes::infer_shapes(m).ok());
    const std::vector<Tensor> after = run();
    EXPECT_EQ(before.size(), after.size());
    for (size_t i = 0; i < before.size() && i < after.size(); ++i)
      expect_close(after[i], before[i], tol, "output " + std::to_string(i));
    return fused;
  }
  std::vector<std::string> ops() const {
    std::vector<std::string> r;
    for (const auto& n : m.graph.nodes) r.push_back(n.domain.empty() ? n.op_type : n.domain + "." + n.op_type);
    return r;
  }
  const ir::Node& node_at(size_t i) const { return m.graph.nodes.at(i); }
};

TEST(FusePointwisePass, FusesAChainWithBroadcastAndScalarConstants) {
  Builder b;
  b.input("x", {2, 3, 4});
  b.constant("bias", {4});
  b.m.graph.initializers["half"] = scalar(0.5f);
  b.node("Add", {"x", "bias"}, "a", "add");
  b.node("Mul", {"a", "half"}, "m", "mul");
  b.node("Sigmoid", {"m"}, "s", "sig");
  b.node("Mul", {"a", "s"}, "y", "mul2");  // a read twice inside the group
  b.output("y");
  EXPECT_EQ(b.fuse_and_compare(), 1);
  ASSERT_EQ(b.ops(), (std::vector<std::string>{"kiln.Pointwise"}));
  const ir::Node& n = b.node_at(0);
  EXPECT_EQ(n.name, "add + mul + sig + mul2");
  EXPECT_EQ(n.inputs, (std::vector<std::string>{"x", "bias"}));
  EXPECT_EQ(n.outputs, (std::vector<std::string>{"y"}));
  EXPECT_EQ(n.attr("program")->strings,
            (std::vector<std::string>{"t0 = add in0 in1", "t1 = mul t0 0.5", "t2 = sigmoid t1", "t3 = mul t0 t2"}));
  EXPECT_EQ(b.m.opsets.at("kiln"), 1);
  const ir::TypeInfo* y = b.m.graph.type_of("y");
  ASSERT_NE(y, nullptr);
  EXPECT_TRUE(y->is_static());
  EXPECT_EQ(y->static_shape(), (Shape{2, 3, 4}));
}

TEST(FusePointwisePass, EveryOpFusesAndMatchesTheUnfusedGraph) {
  Builder b;
  b.input("x", {3, 1, 5});
  b.input("z", {4, 5});
  b.node("Add", {"x", "z"}, "v0", "n0");  // [3, 4, 5]
  b.node("Sqrt", {"v0"}, "v1", "n1");
  b.node("Log", {"v1"}, "v2", "n2");
  b.node("Exp", {"v2"}, "v3", "n3");
  b.node("Neg", {"v3"}, "v4", "n4");
  b.node("Abs", {"v4"}, "v5", "n5");
  b.node("Tanh", {"v5"}, "v6", "n6");
  b.node("Erf", {"v6"}, "v7", "n7");
  b.node("Sub", {"v7", "x"}, "v8", "n8");
  b.node("Relu", {"v8"}, "v9", "n9");
  b.node("Pow", {"v5", "v7"}, "v10", "n10");
  b.node("Div", {"v10", "z"}, "v11", "n11");
  b.node("Max", {"v11", "v9"}, "v12", "n12");
  b.node("Min", {"v12", "z"}, "v13", "n13");
  b.output("v13");
  EXPECT_EQ(b.fuse_and_compare(), 1);
  EXPECT_EQ(b.ops(), (std::vector<std::string>{"kiln.Pointwise"}));
  EXPECT_EQ(b.node_at(0).attr("program")->strings.size(), 14u);
}

TEST(FusePointwisePass, StopsAtValuesReadOutsideAndAtOtherOps) {
  Builder b;
  b.input("x", {2, 8});
  b.input("w", {8, 8});
  b.node("Exp", {"x"}, "e", "exp");
  b.node("Neg", {"e"}, "n", "neg");
  b.node("Add", {"n", "x"}, "a", "add");   // a is also a graph output: Relu cannot absorb it
  b.node("Relu", {"a"}, "r", "relu");
  b.node("MatMul", {"r", "w"}, "p", "mm");  // not elementwise
  b.node("Tanh", {"p"}, "t", "tanh");       // alone: stays
  b.node("Sigmoid", {"e"}, "s", "sig");     // reads e too, so e cannot vanish into exp + neg + add
  b.output("a");
  b.output("t");
  b.output("s");
  EXPECT_EQ(b.fuse_and_compare(), 1);
  EXPECT_EQ(b.ops(), (std::vector<std::string>{"Exp", "kiln.Pointwise", "Relu", "MatMul", "Tanh", "Sigmoid"}));
  EXPECT_EQ(b.node_at(1).name, "neg + add");
  EXPECT_EQ(b.node_at(1).inputs, (std::vector<std::string>{"e", "x"}));
}

TEST(FusePointwisePass, LeavesMixedDtypesUnknownRanksAndOldOpsetsAlone) {
  {
    Builder b;  // a float16 value in a float32 chain (a model that Cast in between would be valid)
    b.input("x", {4});
    b.input("h", {4}, DType::kFloat16);
    b.node("Cast", {"h"}, "hc", "cast");
    b.m.graph.nodes.back().attributes["to"] = int_attr(1);
    b.node("Exp", {"x"}, "e", "exp");
    b.node("Add", {"e", "hc"}, "y", "add");
    b.output("y");
    EXPECT_EQ(b.fuse_and_compare(), 1);  // Exp + Add: both float32
    EXPECT_EQ(b.ops(), (std::vector<std::string>{"Cast", "kiln.Pointwise"}));
  }
  for (bool rank_known : {true, false}) {
    // A dynamic dim fuses (the kernel is made for a rank and broadcasts at the run's shapes); an unknown
    // rank does not.
    Builder b;
    b.input("x", {4});
    b.m.graph.inputs[0].type.dims[0] = ir::Dim::named("n");
    if (!rank_known) {
      b.m.graph.inputs[0].type.has_shape = false;
      b.m.graph.inputs[0].type.dims.clear();
    }
    b.node("Exp", {"x"}, "e", "exp");
    b.node("Neg", {"e"}, "y", "neg");
    b.output("y");
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    int fused = -1;
    ASSERT_TRUE(passes::fuse_pointwise(b.m, &fused).ok());
    EXPECT_EQ(fused, rank_known ? 1 : 0);
    EXPECT_EQ(b.ops(), (rank_known ? std::vector<std::string>{"kiln.Pointwise"} : std::vector<std::string>{"Exp", "Neg"}));
  }
  {
    Builder b(7);  // opset 7: Max and Min did not broadcast yet; nothing fuses before opset 8
    b.input("x", {4});
    b.node("Exp", {"x"}, "e", "exp");
    b.node("Neg", {"e"}, "y", "neg");
    b.output("y");
    ASSERT_TRUE(passes::infer_shapes(b.m).ok());
    int fused = -1;
    ASSERT_TRUE(passes::fuse_pointwise(b.m, &fused).ok());
    EXPECT_EQ(fused, 0);
  }
  {
    Builder b;  // a float64 chain fuses and runs in float64
    b.input("x", {3, 2}, DType::kFloat64);
    b.node("Exp", {"x"}, "e", "exp");
    b.node("Mul", {"e", "x"}, "y", "mul");
    b.output("y");
    EXPECT_EQ(b.fuse_and_compare(1e-12), 1);
  }
}

// optimize_graph runs the pass for GPU engines at opt level 2 and up, last: after the other fusions (a
// GELU stays kiln.Gelu), and after precision lowering, so a group is in its final dtype and never straddles
// a pin. Not for the CPU target.
TEST(FusePointwisePass, OptimizeGraphRunsItLastForGpuEnginesOnly) {
  auto model = [] {
    Builder b;
    b.input("x", {2, 3, 8});
    b.constant("bias", {8});
    b.m.graph.initializers["half"] = scalar(0.5f);
    b.m.graph.initializers["sqrt2"] = scalar(1.41421356f);
    b.m.graph.initializers["one"] = scalar(1.0f);
    b.node("Add", {"x", "bias"}, "a", "add");
    b.node("Mul", {"a", "half"}, "m", "mul");
    b.node("Sigmoid", {"m"}, "s", "sig");
    b.node("Mul", {"a", "s"}, "y", "mul2");
    // An erf GELU of y: recognize_gelu claims it before fuse_pointwise runs.
    b.node("Div", {"y", "sqrt2"}, "g0", "gelu.div");
    b.node("Erf", {"g0"}, "g1", "gelu.erf");
    b.node("Add", {"g1", "one"}, "g2", "gelu.add");
    b.node("Mul", {"y", "g2"}, "g3", "gelu.mul");
    b.node("Mul", {"g3", "half"}, "z", "gelu.half");
    b.output("z");
    return b;
  };
  std::set<std::string> lowered;
  auto optimize = [&](Builder& b, bool gpu, int level, builder::Precision precision, std::map<std::string, std::string> pins) {
    builder::OptimizeOptions o;
    o.for_gpu = gpu;
    o.opt_level = level;
    o.precision = precision;
    o.layer_precisions = std::move(pins);
    o.can_run_in_half = [](const ir::Model&, const ir::Node&) { return true; };
    Logger quiet(Severity::kError);
    const std::vector<Tensor> before = b.run();
    lowered.clear();
    Status st = builder::optimize_graph(b.m, o, quiet, &lowered);
    EXPECT_TRUE(st.ok()) << st.to_string();
    const std::vector<Tensor> after = b.run();
    ASSERT_EQ(before.size(), after.size());
    const double tol = precision == builder::Precision::kFloat32 ? 1e-5 : 2e-2;
    for (size_t i = 0; i < before.size(); ++i)
      expect_close(cast_tensor(after[i], DType::kFloat32).value(), before[i], tol, "output " + std::to_string(i));
  };
  {
    Builder b = model();
    optimize(b, true, 2, builder::Precision::kFloat32, {});
    EXPECT_EQ(b.ops(), (std::vector<std::string>{"kiln.Pointwise", "kiln.Gelu"}));
    EXPECT_EQ(b.node_at(0).name, "add + mul + sig + mul2");
    EXPECT_EQ(b.m.graph.initializers.count("half"), 0u);  // a literal now: dropped once the GELU's is too
  }
  for (const auto& [level, gpu] : std::vector<std::pair<int, bool>>{{3, false}, {1, true}}) {
    Builder b = model();
    optimize(b, gpu, level, builder::Precision::kFloat32, {});
    for (const std::string& op : b.ops()) EXPECT_NE(op, "kiln.Pointwise") << "level " << level << " gpu " << gpu;
  }
  {
    Builder b = model();  // --fp16: the group computes between the Casts lowering put at its borders
    optimize(b, true, 2, builder::Precision::kFloat16, {});
    EXPECT_EQ(b.ops(), (std::vector<std::string>{"Cast", "kiln.Pointwise", "kiln.Gelu", "Cast"}));
    const ir::TypeInfo* t = b.m.graph.type_of(b.node_at(1).outputs[0]);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, DType::kFloat16);
    EXPECT_EQ(lowered.count("add + mul + sig + mul2"), 1u);  // the build reports the layer as fp16
  }
  {
    Builder b = model();  // a pin to fp32 inside the group splits it where the dtype changes
    optimize(b, true, 2, builder::Precision::kFloat16, {{"sig", "fp32"}});
    bool sigmoid_alone = false;
    for (const ir::Node& n : b.m.graph.nodes) {
      if (n.op_type == "Sigmoid") sigmoid_alone = true;
      EXPECT_EQ(n.name.find("sig +"), std::string::npos) << n.name;
    }
    EXPECT_TRUE(sigmoid_alone);
  }
}

}  // namespace
}  // namespace kiln::testing
