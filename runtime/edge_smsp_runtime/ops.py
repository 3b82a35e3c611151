"""Forward and backward of the ONNX operators the numpy engine runs (float32, NCHW), one function pair per op.

`forward(node, inputs, training)` returns (outputs, cache); `backward(node, cache, grad_outputs, needs)` returns
one gradient per input (None where `needs[i]` is False or the input takes no gradient). In training mode,
BatchNormalization normalises with the batch's statistics and returns them in its cache (the caller updates
the running statistics); in eval mode it uses the running ones, as onnxruntime does.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import RuntimeToolError
from .model import import_numpy

np = import_numpy()

Node = Dict[str, Any]
Forward = Callable[[Node, List[Any], bool], Tuple[List[Any], Any]]
Backward = Callable[[Node, Any, List[Any], Sequence[bool]], List[Optional[Any]]]
F32 = np.float32


def _attr(node: Node, name: str, default: Any) -> Any:
    return node.get("attrs", {}).get(name, default)


def _reduce_to(grad: Any, shape: Tuple[int, ...]) -> Any:
    """Sum a broadcast gradient back to an input's shape."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    axes = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


def _geometry(node: Node, x: Any, kh: int, kw: int) -> Tuple[int, int, int, int, int, int, int, int]:
    if _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise RuntimeToolError(f"{node['op']}: auto_pad {_attr(node, 'auto_pad', '')} is not supported")
    if any(d != 1 for d in _attr(node, "dilations", [1, 1])):
        raise RuntimeToolError(f"{node['op']}: dilation other than 1 is not supported")
    if _attr(node, "ceil_mode", 0):
        raise RuntimeToolError(f"{node['op']}: ceil_mode is not supported")
    sh, sw = _attr(node, "strides", [1, 1])
    top, left, bottom, right = _attr(node, "pads", [0, 0, 0, 0])
    oh = (x.shape[2] + top + bottom - kh) // sh + 1
    ow = (x.shape[3] + left + right - kw) // sw + 1
    return sh, sw, top, left, bottom, right, oh, ow


def _pad(x: Any, top: int, left: int, bottom: int, right: int, value: float = 0.0) -> Any:
    if not (top or left or bottom or right):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="constant", constant_values=value)


def _window(xp: Any, i: int, j: int, sh: int, sw: int, oh: int, ow: int) -> Any:
    return xp[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]


def _unpad(grad: Any, top: int, left: int, bottom: int, right: int) -> Any:
    return grad[:, :, top : grad.shape[2] - bottom, left : grad.shape[3] - right]


# Conv: pointwise as one matmul, depthwise as a sum over kernel positions, anything else by im2col per group.


def _conv_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    n, c = x.shape[0], x.shape[1]
    out_c, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    group = _attr(node, "group", 1)
    sh, sw, top, left, bottom, right, oh, ow = _geometry(node, x, kh, kw)
    xp = _pad(x, top, left, bottom, right)
    if group == 1 and kh == kw == 1:
        cols = np.ascontiguousarray(_window(xp, 0, 0, sh, sw, oh, ow)).reshape(n, c, oh * ow)
        y = np.matmul(w.reshape(out_c, c), cols)
        cache = ("pointwise", cols, x.shape, w)
    elif group == c and out_c == c and w.shape[1] == 1:
        y = np.zeros((n, c, oh, ow), dtype=F32)
        for i in range(kh):
            for j in range(kw):
                y += _window(xp, i, j, sh, sw, oh, ow) * w[:, 0, i, j][None, :, None, None]
        y = y.reshape(n, c, oh * ow)
        cache = ("depthwise", xp, x.shape, w)
    else:
        if c % group or out_c % group:
            raise RuntimeToolError(f"Conv: group {group} does not divide {c} inputs and {out_c} outputs")
        cg, og = c // group, out_c // group
        cols = np.empty((n, c, kh, kw, oh, ow), dtype=F32)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = _window(xp, i, j, sh, sw, oh, ow)
        cols = cols.reshape(n, group, cg * kh * kw, oh * ow)
        weights = w.reshape(group, og, cg * kh * kw)
        y = np.concatenate([np.matmul(weights[g], cols[:, g]) for g in range(group)], axis=1)
        cache = ("im2col", cols, x.shape, w)
    if bias is not None:
        y += bias[None, :, None]
    return [y.reshape(n, out_c, oh, ow)], cache


def _conv_backward(node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]) -> List[Optional[Any]]:
    kind, saved, x_shape, w = cache
    gy = grads[0]
    n, out_c, oh, ow = gy.shape
    c = x_shape[1]
    kh, kw = w.shape[2], w.shape[3]
    group = _attr(node, "group", 1)
    sh, sw = _attr(node, "strides", [1, 1])
    top, left, bottom, right = _attr(node, "pads", [0, 0, 0, 0])
    padded = (n, c, x_shape[2] + top + bottom, x_shape[3] + left + right)
    g2 = gy.reshape(n, out_c, oh * ow)
    gx = gw = None
    if kind == "pointwise":
        if needs[1]:
            gw = np.tensordot(g2, saved, axes=([0, 2], [0, 2])).reshape(w.shape)
        if needs[0]:
            gcols = np.matmul(w.reshape(out_c, c).T, g2).reshape(n, c, oh, ow)
            if sh == sw == 1 and not (top or left or bottom or right):
                gx = gcols
            else:
                gxp = np.zeros(padded, dtype=F32)
                gxp[:, :, 0 : sh * (oh - 1) + 1 : sh, 0 : sw * (ow - 1) + 1 : sw] = gcols
                gx = _unpad(gxp, top, left, bottom, right)
    elif kind == "depthwise":
        xp = saved
        if needs[1]:
            gw = np.empty(w.shape, dtype=F32)
            for i in range(kh):
                for j in range(kw):
                    gw[:, 0, i, j] = np.einsum(
                        "ncp,ncp->c", g2, _window(xp, i, j, sh, sw, oh, ow).reshape(n, c, -1)
                    )
        if needs[0]:
            gxp = np.zeros(padded, dtype=F32)
            for i in range(kh):
                for j in range(kw):
                    _window(gxp, i, j, sh, sw, oh, ow)[...] += gy * w[:, 0, i, j][None, :, None, None]
            gx = _unpad(gxp, top, left, bottom, right)
    else:
        cols = saved  # [n, group, cg*kh*kw, oh*ow]
        cg, og = c // group, out_c // group
        gg = g2.reshape(n, group, og, oh * ow)
        weights = w.reshape(group, og, cg * kh * kw)
        if needs[1]:
            gw = np.stack(
                [np.tensordot(gg[:, g], cols[:, g], axes=([0, 2], [0, 2])) for g in range(group)]
            ).reshape(w.shape)
        if needs[0]:
            gcols = np.stack([np.matmul(weights[g].T, gg[:, g]) for g in range(group)], axis=1)
            gcols = gcols.reshape(n, c, kh, kw, oh, ow)
            gxp = np.zeros(padded, dtype=F32)
            for i in range(kh):
                for j in range(kw):
                    _window(gxp, i, j, sh, sw, oh, ow)[...] += gcols[:, :, i, j]
            gx = _unpad(gxp, top, left, bottom, right)
    gb = g2.sum(axis=(0, 2)) if len(needs) > 2 and needs[2] else None
    return [gx, gw, gb][: len(needs)]


def _batchnorm_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    x, scale, bias, mean, var = inputs
    eps = _attr(node, "epsilon", 1e-5)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if not training:
        factor = (scale / np.sqrt(var + eps)).astype(F32)
        shift = (bias - mean * factor).astype(F32)
        return [x * factor.reshape(shape) + shift.reshape(shape)], None
    axes = (0,) + tuple(range(2, x.ndim))
    count = x.size // x.shape[1]
    if count < 2:
        raise RuntimeToolError("BatchNormalization in training mode needs at least 2 values per channel")
    batch_mean = x.mean(axis=axes, dtype=np.float64)
    centred = x - batch_mean.astype(F32).reshape(shape)
    flat = centred.reshape(x.shape[0], x.shape[1], -1)
    batch_var = np.einsum("ncp,ncp->c", flat, flat, dtype=np.float64) / count
    inv_std = (1.0 / np.sqrt(batch_var + eps)).astype(F32)
    normalised = centred * inv_std.reshape(shape)
    y = normalised * scale.reshape(shape) + bias.reshape(shape)
    # the running update uses the unbiased variance, as torch does
    stats = (batch_mean.astype(F32), (batch_var * count / (count - 1)).astype(F32))
    return [y], (normalised, inv_std, scale, axes, stats)


def _batchnorm_backward(
    node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]
) -> List[Optional[Any]]:
    if cache is None:
        raise RuntimeToolError("BatchNormalization backward needs a training-mode forward")
    normalised, inv_std, scale, axes, _ = cache
    gy = grads[0]
    shape = (1, -1) + (1,) * (gy.ndim - 2)
    gbias = gy.sum(axis=axes, dtype=np.float64)
    flat_shape = (gy.shape[0], gy.shape[1], -1)
    gscale = np.einsum("ncp,ncp->c", gy.reshape(flat_shape), normalised.reshape(flat_shape), dtype=np.float64)
    gx = None
    if needs[0]:
        count = gy.size // gy.shape[1]
        gx = (scale * inv_std).reshape(shape) * (
            gy
            - (gbias / count).astype(F32).reshape(shape)
            - normalised * (gscale / count).astype(F32).reshape(shape)
        )
    return [gx, gscale.astype(F32), gbias.astype(F32), None, None]


def _relu_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    y = np.maximum(inputs[0], 0)
    return [y], y > 0


def _mask_backward(node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]) -> List[Optional[Any]]:
    return [grads[0] * cache] + [None] * (len(needs) - 1)


def _clip_bounds(node: Node, inputs: List[Any]) -> Tuple[Optional[float], Optional[float]]:
    low = _attr(node, "min", None)
    high = _attr(node, "max", None)
    if len(inputs) > 1 and inputs[1] is not None:
        low = float(inputs[1])
    if len(inputs) > 2 and inputs[2] is not None:
        high = float(inputs[2])
    return low, high


def _clip_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    x = inputs[0]
    low, high = _clip_bounds(node, inputs)
    y = np.clip(x, low, high)
    mask = np.ones(x.shape, dtype=bool)
    if low is not None:
        mask &= x > low
    if high is not None:
        mask &= x < high
    return [y], mask


def _sigmoid_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    y = (1.0 / (1.0 + np.exp(-inputs[0]))).astype(F32)
    return [y], y


def _sigmoid_backward(node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]) -> List[Optional[Any]]:
    return [grads[0] * cache * (1.0 - cache)]


def _add_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    return [inputs[0] + inputs[1]], (inputs[0].shape, inputs[1].shape)


def _add_backward(node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]) -> List[Optional[Any]]:
    return [_reduce_to(grads[0], shape) if need else None for shape, need in zip(cache, needs)]


def _mul_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    return [inputs[0] * inputs[1]], (inputs[0], inputs[1])


def _mul_backward(node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]) -> List[Optional[Any]]:
    a, b = cache
    return [
        _reduce_to(grads[0] * b, np.shape(a)) if needs[0] else None,
        _reduce_to(grads[0] * a, np.shape(b)) if needs[1] else None,
    ]


def _gap_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    x = inputs[0]
    return [x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(F32)], x.shape


def _gap_backward(node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]) -> List[Optional[Any]]:
    return [np.broadcast_to(grads[0] / float(cache[2] * cache[3]), cache).astype(F32)]


def _flatten_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    x = inputs[0]
    axis = _attr(node, "axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)], x.shape


def _reshape_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    x, target = inputs[0], [int(v) for v in inputs[1]]
    if not _attr(node, "allowzero", 0):
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return [x.reshape(target)], x.shape


def _identity_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    return [inputs[0]], inputs[0].shape


def _reshape_backward(node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]) -> List[Optional[Any]]:
    return [grads[0].reshape(cache)] + [None] * (len(needs) - 1)


def _gemm_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    a, b = inputs[0], inputs[1]
    a2 = a.T if _attr(node, "transA", 0) else a
    b2 = b.T if _attr(node, "transB", 0) else b
    y = _attr(node, "alpha", 1.0) * np.matmul(a2, b2)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + _attr(node, "beta", 1.0) * inputs[2]
    return [y.astype(F32, copy=False)], (a, b, None if len(inputs) < 3 else np.shape(inputs[2]))


def _gemm_backward(node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]) -> List[Optional[Any]]:
    a, b, c_shape = cache
    gy = grads[0] * _attr(node, "alpha", 1.0)
    trans_a, trans_b = _attr(node, "transA", 0), _attr(node, "transB", 0)
    b2 = b.T if trans_b else b
    a2 = a.T if trans_a else a
    ga = gb = gc = None
    if needs[0]:
        ga = np.matmul(gy, b2.T)
        ga = ga.T if trans_a else ga
    if needs[1]:
        gb = np.matmul(a2.T, gy)
        gb = gb.T if trans_b else gb
    if len(needs) > 2 and needs[2]:
        gc = _reduce_to(grads[0] * _attr(node, "beta", 1.0), c_shape)
    return [ga, gb, gc][: len(needs)]


def _matmul_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    if inputs[1].ndim != 2:
        raise RuntimeToolError("MatMul: only a 2-D right-hand side is supported")
    return [np.matmul(inputs[0], inputs[1])], (inputs[0], inputs[1])


def _matmul_backward(node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]) -> List[Optional[Any]]:
    a, b = cache
    gy = grads[0]
    ga = np.matmul(gy, b.T) if needs[0] else None
    gb = None
    if needs[1]:
        gb = np.tensordot(a.reshape(-1, a.shape[-1]), gy.reshape(-1, gy.shape[-1]), axes=([0], [0]))
    return [ga, gb]


def _maxpool_forward(node: Node, inputs: List[Any], training: bool) -> Tuple[List[Any], Any]:
    x = inputs[0]
    kh, kw = _attr(node, "kernel_shape", None)
    sh, sw, top, left, bottom, right, oh, ow = _geometry(node, x, kh, kw)
    xp = _pad(x, top, left, bottom, right, value=-np.inf)
    y = np.full((x.shape[0], x.shape[1], oh, ow), -np.inf, dtype=F32)
    for i in range(kh):
        for j in range(kw):
            np.maximum(y, _window(xp, i, j, sh, sw, oh, ow), out=y)
    return [y], (xp, y, x.shape)


def _maxpool_backward(node: Node, cache: Any, grads: List[Any], needs: Sequence[bool]) -> List[Optional[Any]]:
    xp, y, x_shape = cache
    kh, kw = _attr(node, "kernel_shape", None)
    sh, sw = _attr(node, "strides", [1, 1])
    top, left, bottom, right = _attr(node, "pads", [0, 0, 0, 0])
    oh, ow = y.shape[2], y.shape[3]
    gxp = np.zeros(xp.shape, dtype=F32)
    taken = np.zeros(y.shape, dtype=bool)  # the first maximum of a window takes the gradient, as torch does
    for i in range(kh):
        for j in range(kw):
            hit = (_window(xp, i, j, sh, sw, oh, ow) == y) & ~taken
            taken |= hit
            _window(gxp, i, j, sh, sw, oh, ow)[...] += grads[0] * hit
    return [_unpad(gxp, top, left, bottom, right)]


OPS = {
    "Conv": (_conv_forward, _conv_backward),
    "BatchNormalization": (_batchnorm_forward, _batchnorm_backward),
    "Relu": (_relu_forward, _mask_backward),
    "Clip": (_clip_forward, _mask_backward),
    "Sigmoid": (_sigmoid_forward, _sigmoid_backward),
    "Add": (_add_forward, _add_backward),
    "Mul": (_mul_forward, _mul_backward),
    "GlobalAveragePool": (_gap_forward, _gap_backward),
    "Flatten": (_flatten_forward, _reshape_backward),
    "Reshape": (_reshape_forward, _reshape_backward),
    "Identity": (_identity_forward, _reshape_backward),
    "Dropout": (_identity_forward, _reshape_backward),
    "Gemm": (_gemm_forward, _gemm_backward),
    "MatMul": (_matmul_forward, _matmul_backward),
    "MaxPool": (_maxpool_forward, _maxpool_backward),
}  # type: Dict[str, Tuple[Forward, Backward]]
# The inputs that are parameters a node learns (by position), and those that are statistics it updates.
PARAMETER_INPUTS = {"Conv": (1, 2), "BatchNormalization": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}
STATISTIC_INPUTS = {"BatchNormalization": (3, 4)}
