// The narrow number types ONNX stores but oxtrain does not compute in: the 8-bit floats
// (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ), the 4-bit float E2M1, the exponent-only E8M0, and the
// 4- and 2-bit integers. Cast converts to and from them; in memory each element takes one byte
// (the 4- and 2-bit types unpacked: the code, or the integer's value), and ONNX files pack the
// 4- and 2-bit ones (graph/onnx_io.cc).
//
// Conversions follow ONNX's reference (ml_dtypes and onnx.numpy_helper): to a narrow float,
// round to nearest even on the format's grid continued past its largest value, then overflow;
// `saturate` (Cast's attribute, default 1) clips infinities and overflows to the largest
// finite value, else they become infinity (E5M2) or NaN (the others). E2M1 has neither and
// always saturates; a NaN becomes its negative zero, as ml_dtypes does. The FNUZ types have one
// NaN (0x80) and no negative zero. To a narrow integer: truncate toward zero; NaN, infinities
// and values out of range give 0 (ml_dtypes' astype).
#pragma once

#include <cstdint>
#include <string>

namespace oxtrain {

enum class NarrowFloat : uint8_t { e4m3fn, e4m3fnuz, e5m2, e5m2fnuz, e2m1 };

double narrow_float_value(uint8_t code, NarrowFloat format);
uint8_t narrow_float_code(double x, NarrowFloat format, bool saturate);

// E8M0 (float8e8m0fnu): 2^(code - 127), 0xFF is NaN. From float32's exponent field, as ONNX's
// reference: "up" adds one when the fraction is nonzero, "down" keeps it, "nearest" rounds on
// the fraction's leading bits; NaN and infinities give 0xFF; with `saturate` the exponent stops
// at 0xFE. The sign is dropped. `round_mode` is checked by the caller.
double e8m0_value(uint8_t code);
uint8_t e8m0_code(float x, bool saturate, const std::string& round_mode);

// A narrow integer of `bits` (4 or 2) bits, signed or not, from a number (see above).
int narrow_int_value(double x, int bits, bool is_signed);

}  // namespace oxtrain
