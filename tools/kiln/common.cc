#include "kiln/common.h"

#include <fstream>
#include <iostream>
#include <sstream>

namespace kiln::tools {

Result<std::map<std::string, Shape>> parse_shapes(const std::string& text) {
  std::map<std::string, Shape> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t colon = item.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == item.size())
      return InvalidArgument("--shapes: '" + item + "' is not NAME:DxDxD (e.g. input:1x3x224x224)");
    std::string name = item.substr(0, colon);
    Shape shape;
    std::stringstream dims(item.substr(colon + 1));
    std::string d;
    while (std::getline(dims, d, 'x')) {
      if (d.empty() || d.find_first_not_of("0123456789") != std::string::npos || d.size() > 12)
        return InvalidArgument("--shapes: dimension '" + d + "' of '" + name + "' is not a non-negative integer");
      shape.push_back(std::stoll(d));
    }
    out[name] = shape;
  }
  return out;
}

Result<std::shared_ptr<Engine>> load_or_build(const std::string& path, const BuilderConfig& config, Logger& logger) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError("cannot open '" + path + "'");
  char magic[8] = {};
  f.read(magic, 8);
  if (std::string(magic, 7) == "KILNENG") {
    Runtime runtime(logger);
    return runtime.deserialize_engine_file(path);
  }
  NetworkDefinition network;
  OnnxParser parser(network, logger);
  KILN_RETURN_IF_ERROR(parser.parse_from_file(path));
  Builder builder(logger);
  return builder.build_engine(network, config);
}

int report(const Status& st) {
  std::cerr << "error: " << st.to_string() << std::endl;
  return 1;
}

}  // namespace kiln::tools
