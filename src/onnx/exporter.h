// ONNX exporter: ir::Model -> ModelProto, the inverse of the importer (importer.h). The engine file stores
// its graph this way (docs/engine-format.md), and tools use it to write optimized models back as ONNX.
// import_model_proto(export_model(m)) gives back m (node indices renumbered by position).
#pragma once

#include "ir/graph.h"

namespace onnx {
class ModelProto;
class GraphProto;
class TypeProto;
}  // namespace onnx

namespace kiln::onnx_io {

// Fills `proto` (cleared first). Initializers are written inline (tensor_to_proto: raw_data, sub-byte types
// packed; strings in string_data).
void export_model(const ir::Model& model, onnx::ModelProto* proto);
// One graph (also used for the subgraphs of If, Loop, Scan). With `ir_version` < 4, initializers are also
// listed as graph inputs, as those IR versions require.
void export_graph(const ir::Graph& graph, onnx::GraphProto* proto, int64_t ir_version);
void type_to_proto(const ir::TypeInfo& type, onnx::TypeProto* proto);

}  // namespace kiln::onnx_io
