"""intvit.ops: the one definition of every integer kernel's semantics.

The PyTorch integer simulation (``intvit.quantize``), the ONNX exporter and the
TVM lowering all follow these functions; tests hold each backend to them
bit for bit. See ``ops/README.md`` for the value-range table.
"""
from .arith import (INT32_MAX, floor_div, round_mean, saturate, shift_right_floor,
                    shift_right_round, signed_range)
from .checks import RangeError, check_finite_input, checked_ranges, range_checks_enabled
from .gemm import (MAX_INT32_REDUCTION, UNSIGNED_SHIFT, check_accumulator_fits, float64_gemm_evaluation,
                   int_linear, int_linear_unsigned, int_matmul, patchify, unsigned_shift_compensation,
                   zero_point_correction)
from .layernorm import int_layernorm, isqrt, layernorm_input_bound, layernorm_output_scale
from .nonlinear import (ACTIVATIONS, GELU_MODES, GELU_SIGMOID_COEF, SHIFTGELU_N, SHIFTMAX_N, check_activation,
                        check_shiftexp_constants, gelu_table, lookup, shift_exp, shift_gelu, shiftexp_x0, shiftmax)
from .requant import (asymmetric_grid, check_dyadic, check_requant_bounds, dyadic_multiplier, dyadic_value,
                      max_shift_for_offset, offset_for, quantize_float, quantize_float_channels, quantize_weight, requantize, rescale, residual_add,
                      symmetric_scale, weight_scale)

__all__ = [name for name in dir() if not name.startswith("_")]
