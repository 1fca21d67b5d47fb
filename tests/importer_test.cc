// The ONNX importer: external data, subgraph scoping, and the errors a broken model gets.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kiln/kiln.h"
#include "onnx/importer.h"
#include "test_models.h"

namespace fs = std::filesystem;

namespace kiln {
namespace {

// y = x + w, with w (float[4]) stored in an external file.
onnx::ModelProto model_with_external_weights(const std::string& location, int64_t offset) {
  onnx::ModelProto m = testing::new_model();
  auto* g = m.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"4"});
  testing::set_type(g->add_output(), "y", 1, {"4"});
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(1);
  w->add_dims(4);
  w->set_data_location(onnx::TensorProto::EXTERNAL);
  auto* loc = w->add_external_data();
  loc->set_key("location");
  loc->set_value(location);
  auto* off = w->add_external_data();
  off->set_key("offset");
  off->set_value(std::to_string(offset));
  auto* len = w->add_external_data();
  len->set_key("length");
  len->set_value("16");
  testing::add_node(g, "Add", {"x", "w"}, {"y"}, "add");
  return m;
}

class ExternalData : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_import_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream weights(dir_ / "weights.bin", std::ios::binary);
    float pad = 0, w[4] = {1.5f, -2.0f, 3.25f, 4.0f};
    weights.write(reinterpret_cast<char*>(&pad), 4);  // offset 4
    weights.write(reinterpret_cast<char*>(w), 16);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write_model(const onnx::ModelProto& m) {
    std::string path = (dir_ / "model.onnx").string();
    std::ofstream f(path, std::ios::binary);
    f << testing::serialize(m);
    return path;
  }
  fs::path dir_;
};

TEST_F(ExternalData, WeightsLoadFromTheFileBesideTheModel) {
  auto model = onnx_io::import_model_file(write_model(model_with_external_weights("weights.bin", 4)));
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const Tensor& w = model->graph.initializers.at("w");
  EXPECT_EQ(w.data<float>()[0], 1.5f);
  EXPECT_EQ(w.data<float>()[3], 4.0f);
}

TEST_F(ExternalData, MissingShortOrEscapingFilesAreRefused) {
  auto missing = onnx_io::import_model_file(write_model(model_with_external_weights("nope.bin", 0)));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("nope.bin"), std::string::npos) << missing.status().message();
  auto short_file = onnx_io::import_model_file(write_model(model_with_external_weights("weights.bin", 8)));
  ASSERT_FALSE(short_file.ok());
  EXPECT_NE(short_file.status().message().find("too short"), std::string::npos) << short_file.status().message();
  auto escaping = onnx_io::import_model_file(write_model(model_with_external_weights("../../etc/passwd", 0)));
  ASSERT_FALSE(escaping.ok());
  EXPECT_NE(escaping.status().message().find("relative path"), std::string::npos);
}

TEST(Importer, SubgraphsSeeOuterValues) {
  // If(cond) then y = x * 2 else y = -x, both branches reading x from the outer graph.
  onnx::ModelProto m = testing::new_model();
  auto* g = m.mutable_graph();
  testing::set_type(g->add_input(), "cond", 9, {});
  testing::set_type(g->add_input(), "x", 1, {"3"});
  testing::set_type(g->add_output(), "y", 1, {"3"});
  auto* node = testing::add_node(g, "If", {"cond"}, {"y"}, "branch");
  auto* then_attr = node->add_attribute();
  then_attr->set_name("then_branch");
  then_attr->set_type(onnx::AttributeProto::GRAPH);
  auto* then_g = then_attr->mutable_g();
  testing::add_float_initializer(then_g, "two", {}, {2.0f});
  testing::add_node(then_g, "Mul", {"x", "two"}, {"t"}, "double");
  testing::set_type(then_g->add_output(), "t", 1, {"3"});
  auto* else_attr = node->add_attribute();
  else_attr->set_name("else_branch");
  else_attr->set_type(onnx::AttributeProto::GRAPH);
  auto* else_g = else_attr->mutable_g();
  testing::add_node(else_g, "Neg", {"x"}, {"e"}, "negate");
  testing::set_type(else_g->add_output(), "e", 1, {"3"});
  std::string bytes = testing::serialize(m);

  Logger logger(Severity::kError);
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  ASSERT_TRUE(parser.parse(bytes.data(), bytes.size()).ok());
  Builder builder(logger);
  auto engine = builder.build_engine(network, BuilderConfig());
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  auto ctx = (*engine)->create_execution_context();
  Tensor x = Tensor::from_vector<float>(DType::kFloat32, {3}, {1, -2, 3});
  for (bool c : {true, false}) {
    auto out = ctx->execute({{"cond", Tensor::scalar<bool>(DType::kBool, c)}, {"x", x}});
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    EXPECT_EQ(out->at("y").data<float>()[1], c ? -4.0f : 2.0f);
  }
}

TEST(Importer, DuplicateOutputsAndMissingOpsetAreModelErrors) {
  onnx::ModelProto m = testing::new_model();
  auto* g = m.mutable_graph();
  testing::set_type(g->add_input(), "x", 1, {"2"});
  testing::set_type(g->add_output(), "y", 1, {"2"});
  testing::add_node(g, "Relu", {"x"}, {"y"}, "a");
  testing::add_node(g, "Neg", {"x"}, {"y"}, "b");
  auto* custom = testing::add_node(g, "Thing", {"x"}, {"z"}, "c");
  custom->set_domain("com.example");
  std::vector<onnx_io::ImportError> errors;
  auto model = onnx_io::import_model(testing::serialize(m), ".", &errors);
  ASSERT_FALSE(model.ok());
  ASSERT_EQ(errors.size(), 2u) << model.status().message();
  EXPECT_EQ(errors[0].node_name, "b");
  EXPECT_NE(errors[0].description.find("more than one node"), std::string::npos);
  EXPECT_EQ(errors[1].node_name, "c");
  EXPECT_NE(errors[1].description.find("com.example"), std::string::npos);
}

}  // namespace
}  // namespace kiln
