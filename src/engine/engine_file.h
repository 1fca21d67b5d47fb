// The .kiln engine file: constants of its layout and readers of its parts. The layout is specified in
// docs/engine-format.md; serialize_plan / deserialize_plan (plan.h) write and read whole files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/plan.h"
#include "kiln/status.h"

namespace kiln::engine {

constexpr char kMagic[8] = {'K', 'I', 'L', 'N', 'E', 'N', 'G', '\0'};
// The oldest format version this Kiln still reads (kFormatVersion, in plan.h, is the newest).
constexpr uint32_t kMinFormatVersion = 1;
constexpr uint64_t kHeaderSize = 64;
constexpr uint64_t kSectionEntrySize = 24;
// Sections start, and tensors start within WEIGHTS, at multiples of this.
constexpr uint64_t kAlignment = 64;
// external_data location of an initializer whose bytes lie in the WEIGHTS section.
constexpr const char* kWeightsLocation = "@weights";

enum class SectionKind : uint32_t { kMeta = 1, kGraph = 2, kWeights = 3 };
const char* section_kind_name(uint32_t kind);  // "META", "GRAPH", "WEIGHTS", "unknown(7)"

struct SectionInfo {
  uint32_t kind = 0;
  uint64_t offset = 0;  // from the start of the file
  uint64_t size = 0;
};

struct EngineHeader {
  uint32_t format_version = 0;
  uint32_t flags = 0;
  uint64_t file_size = 0;
  uint64_t checksum = 0;
  std::vector<SectionInfo> sections;  // as listed in the section table, unknown kinds included
};

// Checks the header, the checksum and the section table (every refusal of deserialize_plan that does not
// need to parse a section) and returns them.
Result<EngineHeader> read_engine_header(const std::string& bytes);
// The META section's JSON text of a checked file (for `kiln inspect` without loading the weights).
Result<std::string> read_engine_meta(const std::string& bytes);
// XXH64 (seed 0) of every byte after the header: what the header's checksum field holds.
uint64_t engine_checksum(const std::string& bytes);

}  // namespace kiln::engine
