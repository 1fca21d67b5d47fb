// Output allocators (issue 5) on CPU engines: outputs whose shape depends on the data (NonZero, Unique, TopK
// with k an input) written through an OutputAllocator by execute() on bound buffers: exact sizes, memory
// reused until a run needs more, notify_shape, the same results as execute(map), the refusal of a bound
// data-dependent output without an allocator before anything runs, an allocator that gives no memory, static
// outputs on their bound buffers beside them, and one allocator serving two contexts on two threads.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "cuda_skip.h"
#include "quiet_logger.h"
#include "graph_builder.h"
#include "kiln/kiln.h"
#include "random_tensors.h"
#include "test_models.h"
#ifdef KILN_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace kiln {
namespace {

using Quiet = testing::QuietLogger;

// x: float32[n], k: int64[1]. Outputs: y = Relu(x) (float32[n], fixed by n), idx = NonZero(x > 0)
// (int64[1,?]), u = Unique(Floor(x * 3)) (float32[?], sorted), top = TopK(x, k) values (float32[k]: known
// only from k's value).
onnx::ModelProto data_dependent_model() {
  onnx::ModelProto m = testing::new_model();
  auto* g = m.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"n"});
  testing::set_type(g->add_input(), "k", 7, {"1"});
  testing::set_type(g->add_output(), "y", 1, {"n"});
  testing::set_type(g->add_output(), "idx", 7, {"1", "nonzeros"});
  testing::set_type(g->add_output(), "u", 1, {"uniques"});
  testing::set_type(g->add_output(), "top", 1, {"k"});
  testing::add_float_initializer(g, "zero", {}, {0.0f});
  testing::add_float_initializer(g, "three", {}, {3.0f});
  testing::add_node(g, "Relu", {"x"}, {"y"}, "relu");
  testing::add_node(g, "Greater", {"x", "zero"}, {"positive"}, "greater");
  testing::add_node(g, "NonZero", {"positive"}, {"idx"}, "nonzero");
  testing::add_node(g, "Mul", {"x", "three"}, {"x3"}, "scale");
  testing::add_node(g, "Floor", {"x3"}, {"steps"}, "floor");
  testing::add_node(g, "Unique", {"steps"}, {"u"}, "unique");
  testing::add_node(g, "TopK", {"x", "k"}, {"top", "top_indices"}, "topk");
  return m;
}

std::shared_ptr<Engine> engine(const onnx::ModelProto& model = data_dependent_model(), const std::string& device = "cpu") {
  Quiet logger;
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  const std::string bytes = testing::serialize(model);
  const Status parsed = parser.parse(bytes.data(), bytes.size());
  EXPECT_TRUE(parsed.ok()) << parsed.to_string();
  BuilderConfig config;
  config.set_device(device);
  auto e = Builder(logger).build_engine(network, config);
  EXPECT_TRUE(e.ok()) << e.status().to_string();
  return e.ok() ? *e : nullptr;
}

const std::vector<std::string> kDataDependent = {"idx", "u", "top"};

// One run's inputs: n in [1, 24] and k in [1, n], so that every output's size changes from run to run.
struct Inputs {
  Tensor x, k;
  int64_t n = 0;
};

Inputs random_inputs(std::mt19937& gen) {
  Inputs in;
  in.n = std::uniform_int_distribution<int64_t>(1, 24)(gen);
  in.x = testing::random_tensor(gen, DType::kFloat32, {in.n}, -2.0f, 2.0f);
  const int64_t k = std::uniform_int_distribution<int64_t>(1, in.n)(gen);
  in.k = Tensor::from_vector<int64_t>(DType::kInt64, {1}, {k});
  return in;
}

// Binds the inputs of a run on bound buffers.
void bind_inputs(ExecutionContext& ctx, const Inputs& in) {
  ASSERT_TRUE(ctx.set_input_shape("x", {in.n}).ok());
  ASSERT_TRUE(ctx.set_tensor_address("x", const_cast<void*>(in.x.raw_data())).ok());
  ASSERT_TRUE(ctx.set_tensor_address("k", const_cast<void*>(in.k.raw_data())).ok());
}

// An allocator that keeps one buffer per thread and output, grown only when a run needs more than it has,
// and records every call. Thread-safe: one object serves contexts on many threads.
class GrowingAllocator : public OutputAllocator {
 public:
  struct Call {
    void* current;
    size_t size, alignment;
    void* returned;
  };
  struct Record {
    void* memory = nullptr;
    size_t capacity = 0;
    std::vector<Call> calls;
    std::vector<Shape> shapes;  // notify_shape's, in order
  };

  ~GrowingAllocator() override {
    for (auto& [key, r] : records_) std::free(r.memory);
  }

  void* reallocate_output(const std::string& name, void* current, size_t size, size_t alignment) override {
    std::lock_guard<std::mutex> lock(mu_);
    Record& r = records_[{std::this_thread::get_id(), name}];
    if (r.memory == nullptr || size > r.capacity) {
      std::free(r.memory);
      const size_t bytes = (std::max<size_t>(size, 1) + alignment - 1) / alignment * alignment;
      r.memory = std::aligned_alloc(alignment, bytes);
      r.capacity = size;
    }
    r.calls.push_back(Call{current, size, alignment, r.memory});
    return r.memory;
  }
  void notify_shape(const std::string& name, const Shape& shape) override {
    std::lock_guard<std::mutex> lock(mu_);
    records_[{std::this_thread::get_id(), name}].shapes.push_back(shape);
  }

  // This thread's record of an output.
  Record record(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    return records_[{std::this_thread::get_id(), name}];
  }

 private:
  std::mutex mu_;
  std::map<std::pair<std::thread::id, std::string>, Record> records_;
};

// An allocator that has no memory to give.
class EmptyAllocator : public OutputAllocator {
 public:
  void* reallocate_output(const std::string&, void* current, size_t, size_t) override {
    offered = current;
    ++calls;
    return nullptr;
  }
  void notify_shape(const std::string&, const Shape&) override { ++notified; }
  void* offered = nullptr;
  int calls = 0, notified = 0;
};

// The tensor of `want`'s dtype and `shape` whose bytes are at `data`.
Tensor view_of(const Tensor& want, const Shape& shape, void* data) { return Tensor::view(want.dtype(), shape, data); }

// One context runs on bound buffers with an allocator for every data-dependent output and a bound buffer
// for y; another runs execute(map) on the same inputs. Every size, pointer, shape and value is checked.
void run_and_check(const std::shared_ptr<Engine>& e, GrowingAllocator& allocator, unsigned seed, int runs) {
  std::mt19937 gen(seed);
  auto ctx = e->create_execution_context();
  auto reference = e->create_execution_context();
  for (const std::string& name : kDataDependent) ASSERT_TRUE(ctx->set_output_allocator(name, &allocator).ok());
  std::map<std::string, size_t> capacity;  // what the allocator holds for each output, as this test follows it
  std::set<size_t> idx_sizes;
  for (int run = 0; run < runs; ++run) {
    const Inputs in = random_inputs(gen);
    const std::string what = "run " + std::to_string(run) + " (n " + std::to_string(in.n) + ")";
    auto want = reference->execute({{"x", in.x}, {"k", in.k}});
    ASSERT_TRUE(want.ok()) << want.status().to_string();
    bind_inputs(*ctx, in);
    std::vector<float> y(in.n, -7.0f);
    ASSERT_TRUE(ctx->set_tensor_address("y", y.data()).ok());
    auto y_shape = ctx->output_shape("y");
    ASSERT_TRUE(y_shape.ok()) << y_shape.status().to_string();
    EXPECT_EQ(*y_shape, (Shape{in.n})) << what;
    const Status st = ctx->execute();
    ASSERT_TRUE(st.ok()) << what << ": " << st.to_string();
    testing::expect_close(view_of(want->at("y"), {in.n}, y.data()), want->at("y"), 0, what + " y");

    for (const std::string& name : kDataDependent) {
      const Tensor& w = want->at(name);
      const GrowingAllocator::Record r = allocator.record(name);
      ASSERT_EQ(r.calls.size(), static_cast<size_t>(run + 1)) << what << " " << name;
      const GrowingAllocator::Call& c = r.calls.back();
      EXPECT_EQ(c.size, w.nbytes()) << what << " " << name;  // the exact byte count
      EXPECT_EQ(c.alignment, 64u);
      // current: null the first time, then the memory the allocator gave the run before.
      EXPECT_EQ(c.current, run == 0 ? nullptr : r.calls[run - 1].returned) << what << " " << name;
      if (run > 0 && c.size <= capacity[name]) EXPECT_EQ(c.returned, c.current) << what << " " << name;
      capacity[name] = std::max(capacity[name], c.size);
      ASSERT_EQ(r.shapes.size(), static_cast<size_t>(run + 1)) << what << " " << name;
      EXPECT_EQ(r.shapes.back(), w.shape()) << what << " " << name;
      testing::expect_close(view_of(w, r.shapes.back(), c.returned), w, 0, what + " " + name);
    }
    // NonZero's result from x directly, not only from the other context.
    std::vector<int64_t> positives;
    for (int64_t i = 0; i < in.n; ++i)
      if (in.x.data<float>()[i] > 0) positives.push_back(i);
    EXPECT_EQ(want->at("idx").to_int64_vector(), positives) << what;
    EXPECT_EQ(want->at("top").shape(), (Shape{in.k.data<int64_t>()[0]})) << what;
    idx_sizes.insert(positives.size());
  }
  EXPECT_GT(idx_sizes.size(), 2u) << "the runs' NonZero sizes should vary";
}

TEST(OutputAllocator, DataDependentOutputsGoThroughTheAllocator) {
  auto e = engine();
  ASSERT_TRUE(e);
  GrowingAllocator allocator;
  run_and_check(e, allocator, testing::random_seed("OutputAllocator.DataDependentOutputs"), 12);
}

// The same on a GPU engine: its layers run on the GPU where they can (NonZero, Unique and TopK with a run-time
// k on the CPU between them), and the data-dependent outputs still go through the allocator.
TEST(CudaOutputAllocator, DataDependentOutputsGoThroughTheAllocator) {
  KILN_SKIP_WITHOUT_GPU();
  auto e = engine(data_dependent_model(), "cuda");
  ASSERT_TRUE(e);
  GrowingAllocator allocator;
  run_and_check(e, allocator, testing::random_seed("CudaOutputAllocator.DataDependentOutputs"), 12);
}

TEST(OutputAllocator, OneAllocatorServesTwoContextsOnTwoThreads) {
  auto e = engine();
  ASSERT_TRUE(e);
  GrowingAllocator allocator;
  const unsigned seed = testing::random_seed("OutputAllocator.TwoThreads");
  std::thread a([&] { run_and_check(e, allocator, seed, 20); });
  std::thread b([&] { run_and_check(e, allocator, seed + 1, 20); });
  a.join();
  b.join();
}

TEST(OutputAllocator, BoundDataDependentOutputWithoutAllocatorIsRefusedBeforeRunning) {
  auto e = engine();
  ASSERT_TRUE(e);
  std::mt19937 gen(testing::random_seed("OutputAllocator.NoAllocator"));
  const Inputs in = random_inputs(gen);
  auto ctx = e->create_execution_context();
  bind_inputs(*ctx, in);
  std::vector<float> y(in.n, -7.0f);
  std::vector<int64_t> idx(64, -7);
  ASSERT_TRUE(ctx->set_tensor_address("y", y.data()).ok());
  ASSERT_TRUE(ctx->set_tensor_address("idx", idx.data()).ok());
  const Status st = ctx->execute();
  EXPECT_EQ(st.code(), StatusCode::kUnsupported);
  EXPECT_EQ(st.message(), "output 'idx' has a data-dependent shape: set an output allocator "
                          "(set_output_allocator); for these input shapes shape inference gives int64[1,?]");
  // Nothing ran: no results, and neither buffer was written.
  EXPECT_EQ(ctx->output("y"), nullptr);
  EXPECT_EQ(y, std::vector<float>(in.n, -7.0f));
  EXPECT_EQ(idx, std::vector<int64_t>(64, -7));

  auto shape = ctx->output_shape("u");
  EXPECT_EQ(shape.status().code(), StatusCode::kUnsupported);
  EXPECT_EQ(shape.status().message().rfind("output 'u' has a data-dependent shape", 0), 0u);
  EXPECT_EQ(ctx->output_shape("top").status().code(), StatusCode::kUnsupported);  // k's value, not its shape
  EXPECT_EQ(ctx->output_shape("x").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ctx->set_output_allocator("x", nullptr).code(), StatusCode::kNotFound);
  EXPECT_EQ(ctx->set_output_allocator("nope", nullptr).message(), "'nope' is not an output of the engine");

  // With an allocator it runs; cleared again, it is refused again.
  GrowingAllocator allocator;
  ASSERT_TRUE(ctx->set_output_allocator("idx", &allocator).ok());
  ASSERT_TRUE(ctx->execute().ok());
  EXPECT_EQ(allocator.record("idx").calls.at(0).current, idx.data());  // the bound buffer is offered first
  EXPECT_EQ(idx, std::vector<int64_t>(64, -7));  // the allocator's memory got the data, not idx
  ASSERT_TRUE(ctx->set_output_allocator("idx", nullptr).ok());
  EXPECT_EQ(ctx->execute().code(), StatusCode::kUnsupported);

  // A dynamic input without a shape: output_shape says which.
  auto fresh = e->create_execution_context();
  EXPECT_EQ(fresh->output_shape("y").status().message(),
            "input 'x' has dynamic shape float32[n]: call set_input_shape first");
}

TEST(OutputAllocator, AnAllocatorWithoutMemoryFailsTheRunNamingTheOutput) {
  auto e = engine();
  ASSERT_TRUE(e);
  std::mt19937 gen(testing::random_seed("OutputAllocator.NoMemory"));
  Inputs in = random_inputs(gen);
  in.x.data<float>()[0] = 1.5f;  // at least one nonzero: idx is not empty
  auto ctx = e->create_execution_context();
  bind_inputs(*ctx, in);
  std::vector<float> y(in.n, -7.0f);
  ASSERT_TRUE(ctx->set_tensor_address("y", y.data()).ok());
  GrowingAllocator growing;
  EmptyAllocator empty;
  ASSERT_TRUE(ctx->set_output_allocator("u", &growing).ok());
  ASSERT_TRUE(ctx->set_output_allocator("idx", &empty).ok());
  const Status st = ctx->execute();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("output 'idx': the output allocator returned no memory for"), std::string::npos)
      << st.message();
  EXPECT_EQ(empty.calls, 1);
  EXPECT_EQ(empty.offered, nullptr);
  // Nothing written: not y (bound before idx in the graph), not u, and nobody notified.
  EXPECT_EQ(y, std::vector<float>(in.n, -7.0f));
  EXPECT_EQ(empty.notified, 0);
  EXPECT_TRUE(growing.record("u").shapes.empty());
}

TEST(OutputAllocator, StaticOutputsKeepTheirBoundBuffers) {
  auto e = engine();
  ASSERT_TRUE(e);
  std::mt19937 gen(testing::random_seed("OutputAllocator.Static"));
  auto ctx = e->create_execution_context();
  auto reference = e->create_execution_context();
  std::vector<float> y;
  for (int run = 0; run < 4; ++run) {
    const Inputs in = random_inputs(gen);
    bind_inputs(*ctx, in);
    y.assign(in.n, -7.0f);
    ASSERT_TRUE(ctx->set_tensor_address("y", y.data()).ok());
    ASSERT_TRUE(ctx->execute().ok());  // no allocator needed: only y is bound
    auto want = reference->execute({{"x", in.x}, {"k", in.k}});
    ASSERT_TRUE(want.ok()) << want.status().to_string();
    testing::expect_close(view_of(want->at("y"), {in.n}, y.data()), want->at("y"), 0, "y");
    // The unbound data-dependent outputs are still the context's results.
    ASSERT_NE(ctx->output("idx"), nullptr);
    testing::expect_close(*ctx->output("idx"), want->at("idx"), 0, "idx");
  }
  // A static output may have an allocator too: it gets the output's exact size, offered the bound buffer.
  GrowingAllocator allocator;
  const Inputs in = random_inputs(gen);
  bind_inputs(*ctx, in);
  y.assign(in.n, -7.0f);
  ASSERT_TRUE(ctx->set_tensor_address("y", y.data()).ok());
  ASSERT_TRUE(ctx->set_output_allocator("y", &allocator).ok());
  ASSERT_TRUE(ctx->execute().ok());
  EXPECT_EQ(allocator.record("y").calls.at(0).current, y.data());
  EXPECT_EQ(allocator.record("y").calls.at(0).size, static_cast<size_t>(in.n) * sizeof(float));
  EXPECT_EQ(allocator.record("y").shapes.at(0), (Shape{in.n}));
}

// An output whose shape the input shapes fix only through shape arithmetic (Shape -> Gather -> Concat ->
// Reshape): output_shape folds it, for each input shape set.
TEST(OutputAllocator, OutputShapeFollowsShapeArithmetic) {
  auto e = engine(testing::mlp_with_shape_chain());  // x: float32[batch,4] -> y: float32[batch,3]
  ASSERT_TRUE(e);
  std::mt19937 gen(testing::random_seed("OutputAllocator.ShapeArithmetic"));
  auto ctx = e->create_execution_context();
  for (int64_t batch : {5, 2, 5, 9}) {
    ASSERT_TRUE(ctx->set_input_shape("x", {batch, 4}).ok());
    auto shape = ctx->output_shape("y");
    ASSERT_TRUE(shape.ok()) << shape.status().to_string();
    EXPECT_EQ(*shape, (Shape{batch, 3}));
    const Tensor x = testing::random_tensor(gen, DType::kFloat32, {batch, 4}, -2.0f, 2.0f);
    std::vector<float> y(batch * 3, -7.0f);
    ASSERT_TRUE(ctx->set_tensor_address("x", const_cast<void*>(x.raw_data())).ok());
    ASSERT_TRUE(ctx->set_tensor_address("y", y.data()).ok());
    ASSERT_TRUE(ctx->execute().ok());
    auto want = e->create_execution_context()->execute({{"x", x}});
    ASSERT_TRUE(want.ok()) << want.status().to_string();
    testing::expect_close(view_of(want->at("y"), {batch, 3}, y.data()), want->at("y"), 0, "y");
  }
}

}  // namespace
}  // namespace kiln
