#include "passes/symbolic_dims.h"

#include <algorithm>

namespace kiln::passes {

DimProduct DimProduct::of(const ir::Dim& d) {
  DimProduct p;
  if (d.known()) {
    p.factor = d.value;
    return p;
  }
  if (d.symbol.empty()) {
    p.valid = false;
    return p;
  }
  // A product's name "2*batch*seq": a leading number is the factor, the rest symbols.
  size_t at = 0;
  while (at <= d.symbol.size()) {
    const size_t star = std::min(d.symbol.find('*', at), d.symbol.size());
    const std::string part = d.symbol.substr(at, star - at);
    if (at == 0 && !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; }))
      p.factor = std::stoll(part);
    else
      p.symbols.push_back(part);
    at = star + 1;
  }
  std::sort(p.symbols.begin(), p.symbols.end());
  return p;
}

DimProduct& DimProduct::operator*=(const DimProduct& other) {
  valid = valid && other.valid;
  factor *= other.factor;
  symbols.insert(symbols.end(), other.symbols.begin(), other.symbols.end());
  std::sort(symbols.begin(), symbols.end());
  return *this;
}

DimProduct DimProduct::divided_by(const DimProduct& other) const {
  DimProduct q;
  q.valid = valid && other.valid && other.factor != 0 && factor % other.factor == 0;
  if (!q.valid) return q;
  q.factor = factor / other.factor;
  q.symbols = symbols;
  for (const auto& s : other.symbols) {
    auto it = std::find(q.symbols.begin(), q.symbols.end(), s);
    if (it == q.symbols.end()) {
      q.valid = false;
      return q;
    }
    q.symbols.erase(it);
  }
  return q;
}

ir::Dim DimProduct::to_dim() const {
  if (!valid) return ir::Dim();
  if (symbols.empty()) return ir::Dim::of(factor);
  if (factor == 0) return ir::Dim::of(0);
  std::string name = factor == 1 ? "" : std::to_string(factor);
  for (const auto& s : symbols) name += (name.empty() ? "" : "*") + s;
  return ir::Dim::named(name);
}

DimProduct product_of(const std::vector<ir::Dim>& dims, size_t from, size_t to) {
  DimProduct p;
  for (size_t i = from; i < to && i < dims.size(); ++i) p *= DimProduct::of(dims[i]);
  return p;
}

bool same_dim(const ir::Dim& a, const ir::Dim& b) {
  if (a.known() || b.known()) return a.value == b.value;
  return !a.symbol.empty() && a.symbol == b.symbol;
}

}  // namespace kiln::passes
