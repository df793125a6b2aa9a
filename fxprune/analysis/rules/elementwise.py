"""Elementwise ops: every output dim couples to the equal-size dims of each (broadcast) input."""
from . import rule

UNARY = ["clone", "contiguous", "alias", "detach", "to", "_to_copy", "type_as", "dropout",
         "native_dropout", "lift_fresh_copy", "silu", "gelu", "relu", "tanh", "sigmoid", "neg", "exp",
         "log", "rsqrt", "sqrt", "abs", "softplus", "erf", "sin", "cos", "reciprocal", "mish",
         "leaky_relu", "hardtanh", "clamp", "clamp_min", "clamp_max", "gelu_tanh", "square",
         "logical_not", "bitwise_not", "isnan", "isinf", "sign", "log1p", "expm1", "floor", "ceil",
         "round", "trunc", "elu", "selu", "hardswish", "hardsigmoid", "relu6", "_log_softmax_backward_data",
         "acos", "asin", "atan", "sinh", "cosh", "tan", "asinh", "acosh", "atanh", "log2", "log10", "exp2",
         "log_sigmoid", "logit", "sgn", "frac", "silu_", "celu", "softsign", "tanhshrink", "hardshrink",
         "softshrink", "rrelu", "nan_to_num", "positive", "deg2rad", "rad2deg", "signbit"]
BINARY = ["add", "sub", "rsub", "mul", "div", "pow", "where", "maximum", "minimum", "eq", "ne", "lt",
          "le", "gt", "ge", "masked_fill", "__and__", "__or__", "__xor__", "bitwise_and", "bitwise_or",
          "logical_and", "logical_or", "lerp", "addcmul", "addcdiv", "fmod", "remainder", "atan2",
          "floor_divide", "copy", "fill", "zero", "clamp_min_", "mul_", "add_", "copy_", "fill_"]


INPLACE = [n + "_" for n in UNARY + BINARY if not n.endswith("_") and not n.startswith("_")]


@rule(*[f"aten.{n}" for n in UNARY + BINARY + INPLACE])
def elementwise(ctx):
    out = ctx.out
    if out not in ctx._shapes:
        return
    for t in ctx.tensor_args():
        ctx.link_broadcast(t, out)


# binary overloads of ops whose other overloads reduce (``torch.max(a, b)``)
rule("aten.max.other", "aten.min.other", "aten.fmax.default", "aten.fmin.default",
     "aten.polar.default", "aten.complex.default")(elementwise)
