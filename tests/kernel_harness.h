// Runs one CPU reference kernel straight from the op table, for the per-family op tests: builds the node
// and its KernelContext, so a test states only the op, its inputs and attributes.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "ir/op_registry.h"

namespace kiln::testing {

struct OpRun {
  Status status;
  std::vector<Value> outputs;
};

// Inputs that are Value::none() become omitted optional inputs. The node is named `node_name`, which the
// tests look for in error messages.
inline OpRun run_kernel(const std::string& domain, const std::string& op, std::vector<Value> inputs,
                        std::map<std::string, ir::Attribute> attrs, size_t num_outputs, int opset,
                        const std::string& node_name, ir::SubgraphRunner runner = {}) {
  OpRun run;
  const ir::OpSchema* schema = ir::OpRegistry::global().find(domain, op);
  EXPECT_NE(schema, nullptr) << op;
  if (schema == nullptr) {
    run.status = Internal("no schema for " + op);
    return run;
  }
  ir::Node node;
  node.name = node_name;
  node.op_type = op;
  node.domain = domain;
  node.attributes = std::move(attrs);
  std::vector<const Value*> ptrs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    node.inputs.push_back(inputs[i].is_none() ? "" : "in" + std::to_string(i));
    ptrs.push_back(inputs[i].is_none() ? nullptr : &inputs[i]);
  }
  for (size_t i = 0; i < num_outputs; ++i) node.outputs.push_back("out" + std::to_string(i));
  run.outputs.resize(num_outputs);
  ir::KernelContext ctx(node, opset, ptrs, &run.outputs, std::move(runner));
  run.status = schema->cpu_kernel(ctx);
  return run;
}

inline ir::Attribute int_attr(int64_t v) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kInt;
  a.i = v;
  return a;
}
inline ir::Attribute ints_attr(std::vector<int64_t> v) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kInts;
  a.ints = std::move(v);
  return a;
}
inline ir::Attribute float_attr(float v) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kFloat;
  a.f = v;
  return a;
}
inline ir::Attribute string_attr(const std::string& v) {
  ir::Attribute a;
  a.type = ir::Attribute::Type::kString;
  a.s = v;
  return a;
}

}  // namespace kiln::testing
