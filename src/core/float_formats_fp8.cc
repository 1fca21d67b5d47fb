// fp8 / fp4 / e8m0 conversions (placeholder: implemented by the cast work).
#include "core/float_formats.h"

namespace kiln {
float fp8e4m3fn_to_float(uint8_t) { return 0; }
float fp8e4m3fnuz_to_float(uint8_t) { return 0; }
float fp8e5m2_to_float(uint8_t) { return 0; }
float fp8e5m2fnuz_to_float(uint8_t) { return 0; }
float fp8e8m0_to_float(uint8_t) { return 0; }
float fp4e2m1_to_float(uint8_t) { return 0; }
uint8_t float_to_fp8e4m3fn(float, bool) { return 0; }
uint8_t float_to_fp8e4m3fnuz(float, bool) { return 0; }
uint8_t float_to_fp8e5m2(float, bool) { return 0; }
uint8_t float_to_fp8e5m2fnuz(float, bool) { return 0; }
uint8_t float_to_fp8e8m0(float, bool, const char*) { return 0; }
uint8_t float_to_fp4e2m1(float, bool) { return 0; }
}  // namespace kiln
