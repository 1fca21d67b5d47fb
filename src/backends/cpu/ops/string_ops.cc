// CPU reference kernels: string ops (StringNormalizer, StringConcat, StringSplit, RegexFullMatch,
// TfIdfVectorizer). Case changes are ASCII-only; accents are not stripped (Unicode normalization would
// need a Unicode library).
#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "backends/cpu/kernel_util.h"

namespace kiln::cpu {
namespace {

std::string ascii_lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}
std::string ascii_upper(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return s;
}

Status require_string(KernelContext& ctx, size_t i) {
  if (!ctx.has_input(i)) return ctx.error("input " + std::to_string(i) + " is required");
  if (ctx.input(i).dtype() != DType::kString)
    return ctx.error("input " + std::to_string(i) + " must be a string tensor, got " + dtype_name(ctx.input(i).dtype()));
  return OkStatus();
}

// StringNormalizer: drop stopword elements, then change case. Input [C] or [1, C].
Status string_normalizer_kernel(KernelContext& ctx) {
  KILN_RETURN_IF_ERROR(require_string(ctx, 0));
  const Tensor& x = ctx.input(0);
  if (!(x.rank() == 1 || (x.rank() == 2 && x.dim(0) == 1)))
    return ctx.error("input must have shape [C] or [1, C], got " + shape_to_string(x.shape()));
  const std::string action = ctx.attr_string("case_change_action", "NONE");
  if (action != "NONE" && action != "LOWER" && action != "UPPER")
    return ctx.error("case_change_action must be NONE, LOWER or UPPER, got '" + action + "'");
  const bool case_sensitive = ctx.attr_int("is_case_sensitive", 0) != 0;
  std::set<std::string> stops;
  for (const std::string& w : ctx.attr_strings("stopwords")) stops.insert(case_sensitive ? w : ascii_lower(w));

  std::vector<std::string> kept;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const std::string& s = x.strings()[i];
    if (stops.count(case_sensitive ? s : ascii_lower(s))) continue;
    kept.push_back(action == "LOWER" ? ascii_lower(s) : action == "UPPER" ? ascii_upper(s) : s);
  }
  if (kept.empty()) kept.push_back("");  // the spec's output for "everything removed"
  const int64_t n = static_cast<int64_t>(kept.size());
  Tensor y(DType::kString, x.rank() == 1 ? Shape{n} : Shape{1, n});
  for (int64_t i = 0; i < n; ++i) y.strings()[i] = kept[static_cast<size_t>(i)];
  ctx.set_output(0, y);
  return OkStatus();
}

Status string_concat_kernel(KernelContext& ctx) {
  KILN_RETURN_IF_ERROR(require_string(ctx, 0));
  KILN_RETURN_IF_ERROR(require_string(ctx, 1));
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  auto shape = broadcast_shapes(a.shape(), b.shape());
  if (!shape.ok()) return ctx.error(shape.status().message());
  const std::vector<int64_t> ia = broadcast_index_map(a.shape(), *shape);
  const std::vector<int64_t> ib = broadcast_index_map(b.shape(), *shape);
  Tensor y(DType::kString, *shape);
  for (int64_t i = 0; i < y.numel(); ++i) y.strings()[i] = a.strings()[ia[i]] + b.strings()[ib[i]];
  ctx.set_output(0, y);
  return OkStatus();
}

bool is_py_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || (c >= 0x1c && c <= 0x1f); }

// Python's str.split(None, maxsplit): runs of whitespace separate, no empty tokens; after maxsplit splits
// the rest (leading whitespace removed) is the last token.
std::vector<std::string> split_whitespace(const std::string& s, int64_t maxsplit) {
  std::vector<std::string> out;
  size_t i = 0;
  const size_t n = s.size();
  while (true) {
    while (i < n && is_py_space(s[i])) ++i;
    if (i == n) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      out.push_back(s.substr(i));
      break;
    }
    size_t j = i;
    while (j < n && !is_py_space(s[j])) ++j;
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

// Python's str.split(sep, maxsplit) with a non-empty separator.
std::vector<std::string> split_sep(const std::string& s, const std::string& sep, int64_t maxsplit) {
  std::vector<std::string> out;
  size_t start = 0;
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    const size_t pos = s.find(sep, start);
    if (pos == std::string::npos) break;
    out.push_back(s.substr(start, pos - start));
    start = pos + sep.size();
  }
  out.push_back(s.substr(start));
  return out;
}

Status string_split_kernel(KernelContext& ctx) {
  KILN_RETURN_IF_ERROR(require_string(ctx, 0));
  const Tensor& x = ctx.input(0);
  const std::string delimiter = ctx.attr_string("delimiter", "");
  const int64_t maxsplit = ctx.has_attr("maxsplit") ? ctx.attr_int("maxsplit", -1) : -1;
  std::vector<std::vector<std::string>> parts(static_cast<size_t>(x.numel()));
  int64_t widest = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    parts[i] = delimiter.empty() ? split_whitespace(x.strings()[i], maxsplit) : split_sep(x.strings()[i], delimiter, maxsplit);
    widest = std::max<int64_t>(widest, static_cast<int64_t>(parts[i].size()));
  }
  Shape yshape = x.shape();
  yshape.push_back(widest);
  Tensor y(DType::kString, yshape);
  Tensor z(DType::kInt64, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    z.data<int64_t>()[i] = static_cast<int64_t>(parts[i].size());
    for (size_t k = 0; k < parts[i].size(); ++k) y.strings()[i * widest + static_cast<int64_t>(k)] = parts[i][k];
  }
  ctx.set_output(0, y);
  if (ctx.num_outputs() > 1) ctx.set_output(1, z);
  return OkStatus();
}

// RegexFullMatch with std::regex (ECMAScript grammar); ONNX specifies RE2 syntax, whose common subset
// (classes, \w \d \s \b, groups, alternation, counted repetition) ECMAScript shares.
Status regex_full_match_kernel(KernelContext& ctx) {
  KILN_RETURN_IF_ERROR(require_string(ctx, 0));
  const Tensor& x = ctx.input(0);
  const std::string pattern = ctx.attr_string("pattern", "");
  std::regex re;
  try {
    re = std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    return ctx.error("invalid regex pattern '" + pattern + "': " + e.what());
  }
  Tensor y(DType::kBool, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    try {
      y.data<bool>()[i] = std::regex_match(x.strings()[i], re);
    } catch (const std::regex_error& e) {
      return ctx.error("regex '" + pattern + "' failed on input " + std::to_string(i) + ": " + e.what());
    }
  }
  ctx.set_output(0, y);
  return OkStatus();
}

// TfIdfVectorizer: counts the pool's n-grams (with skips) in each row, then weights them.
Status tfidf_vectorizer_kernel(KernelContext& ctx) {
  if (!ctx.has_input(0)) return ctx.error("input X is required");
  const Tensor& x = ctx.input(0);
  const bool str_input = x.dtype() == DType::kString;
  if (!str_input && x.dtype() != DType::kInt32 && x.dtype() != DType::kInt64)
    return ctx.error("X must be string, int32 or int64, got " + dtype_name(x.dtype()));
  const int64_t min_n = ctx.attr_int("min_gram_length", 0);
  const int64_t max_n = ctx.attr_int("max_gram_length", 0);
  const int64_t max_skip = ctx.attr_int("max_skip_count", 0);
  const std::string mode = ctx.attr_string("mode", "");
  const std::vector<int64_t> counts = ctx.attr_ints("ngram_counts");
  const std::vector<int64_t> indexes = ctx.attr_ints("ngram_indexes");
  const std::vector<float> weights = ctx.attr_floats("weights");
  const std::vector<int64_t> pool_ints = ctx.attr_ints("pool_int64s");
  const std::vector<std::string> pool_strs = ctx.attr_strings("pool_strings");
  if (mode != "TF" && mode != "IDF" && mode != "TFIDF") return ctx.error("mode must be TF, IDF or TFIDF, got '" + mode + "'");
  if (min_n < 1 || max_n < min_n) return ctx.error("need 1 <= min_gram_length <= max_gram_length");
  if (max_skip < 0) return ctx.error("max_skip_count must be >= 0");
  if (!pool_ints.empty() && !pool_strs.empty()) return ctx.error("only one of pool_int64s and pool_strings may be set");
  if (str_input != !pool_strs.empty() && !(pool_ints.empty() && pool_strs.empty()))
    return ctx.error("the pool type does not match the input type " + dtype_name(x.dtype()));
  if (indexes.empty()) return ctx.error("ngram_indexes must not be empty");
  int64_t out_size = 0;
  for (int64_t v : indexes) {
    if (v < 0 || v >= (int64_t{1} << 24)) return ctx.error("ngram_indexes value " + std::to_string(v) + " out of range");
    out_size = std::max(out_size, v + 1);
  }
  if (!weights.empty() && static_cast<int64_t>(weights.size()) < out_size)
    return ctx.error("weights has " + std::to_string(weights.size()) + " entries, need " + std::to_string(out_size));

  // Pool: n-gram (tokens as strings) -> position among all pool n-grams.
  std::vector<std::string> pool;
  for (int64_t v : pool_ints) pool.push_back(std::to_string(v));
  for (const std::string& s : pool_strs) pool.push_back(s);
  const int64_t total_items = static_cast<int64_t>(pool.size());
  std::map<std::vector<std::string>, int64_t> ngram_id;
  int64_t next_id = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const int64_t n = static_cast<int64_t>(i) + 1;
    const int64_t start = counts[i];
    const int64_t end = i + 1 < counts.size() ? counts[i + 1] : total_items;
    if (start < 0 || end > total_items || end < start) return ctx.error("ngram_counts are inconsistent with the pool size");
    const int64_t num = (end - start) / n;
    for (int64_t g = 0; g < num; ++g, ++next_id) {
      if (n < min_n || n > max_n) continue;
      std::vector<std::string> key(pool.begin() + start + g * n, pool.begin() + start + (g + 1) * n);
      ngram_id[key] = next_id;  // a repeated n-gram keeps its last position, as in the reference
    }
  }
  if (next_id > static_cast<int64_t>(indexes.size())) return ctx.error("ngram_indexes has fewer entries than the pool has n-grams");

  int64_t rows, cols;
  if (x.rank() == 1) {
    rows = 1;
    cols = x.dim(0);
  } else if (x.rank() == 2) {
    rows = x.dim(0);
    cols = x.dim(1);
    if (rows < 1) return ctx.error("2D input needs at least one row");
  } else {
    return ctx.error("X must be [C] or [B, C], got " + shape_to_string(x.shape()));
  }
  auto token = [&](int64_t i) -> std::string {
    if (str_input) return x.strings()[i];
    return std::to_string(x.dtype() == DType::kInt32 ? x.data<int32_t>()[i] : x.data<int64_t>()[i]);
  };
  std::vector<int64_t> freq(static_cast<size_t>(rows * out_size), 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t skip = 1; skip <= max_skip + 1; ++skip) {
      // Unigrams do not depend on the skip: count them only with skip 1.
      const int64_t smallest = skip == 1 ? min_n : std::max<int64_t>(min_n, 2);
      for (int64_t start = 0; start < cols; ++start) {
        std::vector<std::string> key;
        for (int64_t n = 1; n <= max_n; ++n) {
          const int64_t pos = start + (n - 1) * skip;
          if (pos >= cols) break;
          key.push_back(token(r * cols + pos));
          if (n < smallest) continue;
          auto it = ngram_id.find(key);
          if (it != ngram_id.end()) ++freq[static_cast<size_t>(r * out_size + indexes[static_cast<size_t>(it->second)])];
        }
      }
      if (max_n == 1) break;
    }
  }
  Tensor y(DType::kFloat32, x.rank() == 1 ? Shape{out_size} : Shape{rows, out_size});
  float* py = y.data<float>();
  for (int64_t i = 0; i < rows * out_size; ++i) {
    const int64_t f = freq[static_cast<size_t>(i)];
    const float w = weights.empty() ? 1.0f : weights[static_cast<size_t>(i % out_size)];
    if (mode == "TF") py[i] = static_cast<float>(f);
    else if (mode == "IDF") py[i] = f > 0 ? w : 0.0f;
    else py[i] = w * static_cast<float>(f);
  }
  ctx.set_output(0, y);
  return OkStatus();
}

}  // namespace

void register_string_ops_ops(ir::OpRegistry& r) {
  r.add("StringNormalizer", 10, string_normalizer_kernel);
  r.add("StringConcat", 20, string_concat_kernel);
  r.add("StringSplit", 20, string_split_kernel);
  r.add("RegexFullMatch", 20, regex_full_match_kernel);
  r.add("TfIdfVectorizer", 9, tfidf_vectorizer_kernel);
}

}  // namespace kiln::cpu
