// The Kiln demo: builds an engine from the MNIST CNN in ONNX, saves it, loads it back, and classifies the
// 2,000 held-out digits of ../shared/datasets/mnist, printing a few predictions and the accuracy.
//
//   kiln_mnist_demo MODEL.onnx MNIST_DIR ENGINE_OUT.kiln
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <vector>

#include "kiln/kiln.h"

namespace {

constexpr int kFirstHeldOut = 8000;  // the first 8,000 digits trained the model
constexpr int kBatch = 100;

uint32_t read_be32(std::istream& in) {
  unsigned char b[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(b), 4);
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
}

// Reads an IDX file (big-endian header: magic, count, then dims) into raw bytes.
kiln::Result<std::vector<uint8_t>> read_idx(const std::string& path, uint32_t want_magic, uint32_t* count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return kiln::IoError("cannot open '" + path + "'");
  uint32_t magic = read_be32(in);
  if (magic != want_magic) return kiln::InvalidArgument("'" + path + "' is not an IDX file of the expected kind");
  *count = read_be32(in);
  size_t per_item = 1;
  if (want_magic == 2051) per_item = static_cast<size_t>(read_be32(in)) * read_be32(in);
  std::vector<uint8_t> data(static_cast<size_t>(*count) * per_item);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!in) return kiln::IoError("'" + path + "' is truncated");
  return data;
}

int fail(const kiln::Status& st) {
  std::cerr << "error: " << st.to_string() << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: kiln_mnist_demo MODEL.onnx MNIST_DIR ENGINE_OUT.kiln\n";
    return 2;
  }
  const std::string model_path = argv[1], mnist_dir = argv[2], engine_path = argv[3];
  kiln::Logger logger(kiln::Severity::kWarning);

  // 1. Build: parse the ONNX model, optimize it for this machine, serialize the engine to a file.
  auto t0 = std::chrono::steady_clock::now();
  kiln::NetworkDefinition network;
  kiln::OnnxParser parser(network, logger);
  if (kiln::Status st = parser.parse_from_file(model_path); !st.ok()) return fail(st);
  kiln::Builder builder(logger);
  kiln::BuilderConfig config;
  auto plan = builder.build_serialized_network(network, config);
  if (!plan.ok()) return fail(plan.status());
  {
    std::ofstream out(engine_path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(plan->data()), static_cast<std::streamsize>(plan->size()));
    if (!out) return fail(kiln::IoError("cannot write '" + engine_path + "'"));
  }
  auto t1 = std::chrono::steady_clock::now();
  std::printf("built %s -> %s (%zu bytes) in %.0f ms\n", model_path.c_str(), engine_path.c_str(), plan->size(),
              std::chrono::duration<double, std::milli>(t1 - t0).count());

  // 2. Load the engine back, as a deployment would.
  kiln::Runtime runtime(logger);
  auto engine = runtime.deserialize_engine_file(engine_path);
  if (!engine.ok()) return fail(engine.status());
  auto context = (*engine)->create_execution_context();
  const std::string input = (*engine)->io_tensor_name(0);
  const std::string output = (*engine)->io_tensor_name((*engine)->num_io_tensors() - 1);

  // 3. Classify the held-out digits in batches (pixels / 255, as in training).
  uint32_t n_images = 0, n_labels = 0;
  auto images = read_idx(mnist_dir + "/images-idx3-ubyte", 2051, &n_images);
  if (!images.ok()) return fail(images.status());
  auto labels = read_idx(mnist_dir + "/labels-idx1-ubyte", 2049, &n_labels);
  if (!labels.ok()) return fail(labels.status());
  if (n_images != n_labels || n_images <= kFirstHeldOut) return fail(kiln::InvalidArgument("unexpected MNIST files"));

  int correct = 0, total = 0;
  auto t2 = std::chrono::steady_clock::now();
  for (uint32_t start = kFirstHeldOut; start < n_images; start += kBatch) {
    int64_t b = std::min<int64_t>(kBatch, n_images - start);
    kiln::Tensor x(kiln::DType::kFloat32, {b, 1, 28, 28});
    for (int64_t i = 0; i < b * 784; ++i) x.data<float>()[i] = (*images)[start * 784 + i] / 255.0f;
    auto result = context->execute({{input, x}});
    if (!result.ok()) return fail(result.status());
    const kiln::Tensor& logits = result->at(output);
    for (int64_t i = 0; i < b; ++i) {
      const float* row = logits.data<float>() + i * 10;
      int pred = static_cast<int>(std::max_element(row, row + 10) - row);
      int label = (*labels)[start + i];
      correct += pred == label;
      ++total;
      if (start == kFirstHeldOut && i < 8) std::printf("digit %u: predicted %d, label %d\n", start + static_cast<uint32_t>(i), pred, label);
    }
  }
  auto t3 = std::chrono::steady_clock::now();
  double accuracy = 100.0 * correct / total;
  std::printf("accuracy on the %d held-out digits: %.2f%% (%d correct), %.1f ms for all on the CPU\n", total,
              accuracy, correct, std::chrono::duration<double, std::milli>(t3 - t2).count());
  return accuracy >= 98.0 ? 0 : 1;
}
