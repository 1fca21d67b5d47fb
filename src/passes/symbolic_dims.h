// Arithmetic on symbolic dims, for shape inference of models exported with dynamic dims: a dim is a number,
// a symbol ("batch"), a product of symbols with a factor ("batch*seq", "2*seq"), or unknown. Products are
// named by their factor and sorted symbols, so that equal products get equal names and compare equal as
// symbols do (same_dim). This is what lets Reshape's -1 and Flatten resolve on [batch, seq, 768] ->
// [batch*seq, 768] -> [batch, seq, 12, 64] without knowing batch or seq.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/graph.h"

namespace kiln::passes {

// A product of dims: factor x symbols (sorted, repeated where a symbol occurs twice). Invalid when one of
// the dims multiplied was unknown.
struct DimProduct {
  int64_t factor = 1;
  std::vector<std::string> symbols;
  bool valid = true;

  static DimProduct of(const ir::Dim& d);
  DimProduct& operator*=(const DimProduct& other);
  // this / other where it divides exactly (other's symbols all in this, factor divisible); invalid otherwise.
  DimProduct divided_by(const DimProduct& other) const;
  // Back to one dim: a number, a symbol, or the product's name ("2*batch*seq"); unknown when invalid.
  ir::Dim to_dim() const;
};

// The product of dims [from, to).
DimProduct product_of(const std::vector<ir::Dim>& dims, size_t from, size_t to);

// Whether two dims are the same: equal numbers, or the same symbol (products included).
bool same_dim(const ir::Dim& a, const ir::Dim& b);

}  // namespace kiln::passes
