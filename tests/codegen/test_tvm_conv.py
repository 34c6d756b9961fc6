"""TVM convolution and pooling-window kernels (conv.py, pool.py) vs the numpy reference.

Covers the row-vector kernels: depthwise convs (stride 1 and 2, dilation, padding,
channel multiplier, odd sizes), grouped convs with few channels per group (vectors
along the output row), their fused epilogues (bias, BN folded to bias, relu, residual
add, shufflenet's channel-shuffle reshape), and 2-D max/average pooling (strides, pads,
ceil_mode, count_include_pad, dilations, f16); plus hypothesis-drawn shapes. Each case
also checks which kernel ran, so that a silent fallback to another path is caught.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("tvm")

from einfuse.codegen import reference
from einfuse.codegen.backend import get_backend
from einfuse.codegen.tvm.conv import _loop_groups, _rows_beat_blocks
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType

TOL = {np.dtype(np.float32): (2e-5, 2e-5), np.dtype(np.float16): (1e-2, 1e-2)}


def _compile(inputs: dict, build, consts: dict | None, kind: str):
    region = Graph("region")
    vals = [region.add_input(n, TensorType(a.shape, DType.from_numpy(a.dtype))) for n, a in inputs.items()]
    cvals = {k: region.add_constant(k, v) for k, v in (consts or {}).items()}
    outs = build(Builder(region), *vals, **cvals)
    region.outputs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    outer = Graph("main")
    ops = [outer.add_input(n, TensorType(a.shape, DType.from_numpy(a.dtype))) for n, a in inputs.items()]
    Builder(outer).op("fused", ops, region=region, kind=kind)
    return get_backend("tvm").compile(outer.nodes[-1]), region


def check(inputs: dict, build, consts: dict | None = None, kind: str = "out_fusable", kernel: str | None = None):
    """Compiles the region, compares every output with the reference; `kernel`: the
    kernel annotation the scheduled source must show (which path ran)."""
    k, region = _compile(inputs, build, consts, kind)
    assert k.meta["schedule"] == kind
    if kernel is not None:
        assert f'"einfuse.kernel": "{kernel}"' in k.meta["source"]
    want = reference.run(region, dict(inputs))
    outs = [np.empty(w.shape, w.dtype) for w in want.values()]
    k(list(inputs.values()), outs)
    for got, w in zip(outs, want.values()):
        assert got.shape == w.shape and got.dtype == w.dtype
        rtol, atol = TOL[w.dtype]
        np.testing.assert_allclose(got.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
    return k


def tile_writes_output(source: str) -> bool:
    """True when the accumulator lives only in registers (scope local), i.e. the register
    tile writes the epilogue's output itself; the fallback keeps a global accumulator
    and runs the epilogue as a separate pass."""
    allocs = [line for line in source.splitlines() if "_acc_" in line and "sblock_alloc_buffer" in line]
    return bool(allocs) and all('scope="local"' in line for line in allocs)


def rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(dtype)


def conv_attrs(w_shape, **attrs):
    nd = len(w_shape) - 2
    full = {"kernel_shape": tuple(w_shape[2:]), "strides": (1,) * nd, "pads": (0,) * 2 * nd, "dilations": (1,) * nd}
    return {**full, **attrs}


# -- depthwise and narrow grouped convs ------------------------------------------------------

ROW_CASES = [
    # (x shape, w shape, attrs)
    ((1, 8, 28, 28), (8, 1, 3, 3), {"group": 8, "pads": (1, 1, 1, 1)}),  # depthwise s1
    ((1, 8, 28, 28), (8, 1, 3, 3), {"group": 8, "pads": (1, 1, 1, 1), "strides": (2, 2)}),  # depthwise s2
    ((1, 5, 15, 13), (5, 1, 3, 3), {"group": 5, "pads": (1, 1, 1, 1), "strides": (2, 2)}),  # odd sizes, s2
    ((2, 3, 9, 37), (3, 1, 5, 5), {"group": 3, "pads": (2, 1, 0, 2), "strides": (1, 3)}),  # stride 3, uneven pads
    ((1, 4, 12, 40), (8, 1, 3, 3), {"group": 4, "pads": (1, 1, 1, 1), "dilations": (2, 2)}),  # multiplier 2, dilated
    ((1, 4, 7, 7), (4, 1, 3, 3), {"group": 4, "pads": (1, 1, 1, 1)}),  # 7x7 maps
    ((2, 3, 30), (3, 1, 3), {"group": 3, "pads": (1, 1), "strides": (2,)}),  # 1-D depthwise, s2
    ((1, 24, 14, 14), (24, 6, 1, 1), {"group": 4}),  # shufflenet-like 1x1 group conv (6 channels a group)
    ((1, 12, 28, 28), (20, 3, 1, 1), {"group": 4}),  # 5 output channels a group, 28 = 2 x 14 per row
    ((1, 12, 9, 23), (12, 6, 3, 3), {"group": 2, "pads": (1, 1, 1, 1)}),  # 3x3 grouped: padded copy at root
    ((1, 12, 17, 17), (18, 4, 3, 3), {"group": 3, "pads": (0, 1, 1, 0), "strides": (2, 2)}),  # grouped s2
]


@pytest.mark.parametrize("weight", ["operand", "constant"])
@pytest.mark.parametrize("sx,sw,attrs", ROW_CASES, ids=[str(i) for i in range(len(ROW_CASES))])
def test_row_conv(sx, sw, attrs, weight):
    x, w, b = rand(*sx), rand(*sw), rand(sw[0])
    attrs = conv_attrs(sw, **attrs)
    if weight == "operand":
        check({"x": x, "w": w}, lambda bl, x, w: bl.op("conv", [x, w], **attrs), kernel="depthwise")
    else:
        build = lambda bl, x, w, b: bl.op("conv", [x, w, b], **attrs)  # noqa: E731
        check({"x": x}, build, consts={"w": w, "b": b}, kernel="depthwise")


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_bn_relu_residual(stride):
    """Bias (a folded batch norm), relu and a residual add fused into the tile's write."""
    x, w, b = rand(1, 16, 14, 14), rand(16, 1, 3, 3), rand(16)
    out = 14 // stride
    r = rand(1, 16, out, out, seed=1)
    attrs = conv_attrs(w.shape, group=16, pads=(1, 1, 1, 1), strides=(stride, stride))

    def build(bl, x, r, w, b):
        y = bl.op("conv", [x, w, b], **attrs)
        return bl.op("relu", [bl.op("add", [y, r])])

    k = check({"x": x, "r": r}, build, consts={"w": w, "b": b}, kernel="depthwise")
    assert f'"einfuse.sub": {stride}' in k.meta["source"]
    assert tile_writes_output(k.meta["source"])


def test_group_conv_channel_shuffle():
    """ShuffleNet's 1x1 group conv + relu + the shuffle's first reshape (oc -> groups x
    channels): the output's five loops are re-indexed as the conv's four."""
    x, w, b = rand(1, 24, 14, 14), rand(24, 6, 1, 1), rand(24)
    attrs = conv_attrs(w.shape, group=4)

    def build(bl, x, w, b):
        y = bl.op("relu", [bl.op("conv", [x, w, b], **attrs)])
        return bl.op("reshape", [y], shape=(1, 4, 6, 14, 14))

    k = check({"x": x}, build, consts={"w": w, "b": b}, kernel="depthwise")
    # Whether the reshape's index lines up depends on how the reshape is emitted; either
    # way the result is right. When it does, the tile writes the 5-D output.
    if tile_writes_output(k.meta["source"]):
        assert "(1, 4, 6, 14, 14)" in k.meta["source"]


def test_row_conv_two_outputs():
    """conv and relu(conv) both leave the region: the tile writes the conv's output and
    relu reads it back."""
    x, w = rand(1, 12, 10, 10), rand(12, 1, 3, 3)
    attrs = conv_attrs(w.shape, group=12, pads=(1, 1, 1, 1), strides=(2, 2))

    def build(bl, x, w):
        y = bl.op("conv", [x, w], **attrs)
        return [y, bl.op("relu", [y])]

    k = check({"x": x, "w": w}, build, kernel="depthwise")
    assert tile_writes_output(k.meta["source"])


@pytest.mark.parametrize("group", [12, 3])
def test_row_conv_two_consumers(group):
    """relu(conv) and sigmoid(conv) leave the region, the conv itself does not: the
    accumulator is tiled on its own and both epilogues read it."""
    x, w = rand(1, 12, 10, 14), rand(12, 12 // group, 3, 3)
    attrs = conv_attrs(w.shape, group=group, pads=(1, 1, 1, 1), strides=(2, 2))

    def build(bl, x, w):
        y = bl.op("conv", [x, w], **attrs)
        return [bl.op("sigmoid", [y]), bl.op("relu", [y])]

    k = check({"x": x, "w": w}, build, kernel="depthwise")
    assert not tile_writes_output(k.meta["source"])


def test_row_layout_choice():
    # 34 channels a group gives the blocked kernel 2-lane vectors; a 14-wide row fills 14.
    assert _rows_beat_blocks(34, 14, 16)
    # 136 channels a group: 8-lane blocks beat 7-wide rows.
    assert not _rows_beat_blocks(136, 7, 16)
    assert _loop_groups([1, 4, 34, 28, 28], (1, 136, 28, 28)) == [(0, 1), (1, 3), (3, 4), (4, 5)]
    assert _loop_groups([1, 4, 34, 28, 28], (1, 136, 784)) == [(0, 1), (1, 3), (3, 5)]
    assert _loop_groups([1, 8, 17, 28, 28], (1, 136, 28, 28)) == [(0, 1), (1, 3), (3, 4), (4, 5)]
    assert _loop_groups([1, 28, 136, 28], (1, 136, 28, 28)) is None


@given(
    c=st.integers(1, 6),
    mult=st.sampled_from([1, 2]),
    h=st.integers(1, 19),
    w=st.integers(1, 35),
    k=st.sampled_from([1, 2, 3, 5]),
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    dil=st.sampled_from([1, 2]),
)
def test_depthwise_hypothesis(c, mult, h, w, k, stride, pad, dil):
    span = (k - 1) * dil + 1
    if h + 2 * pad < span or w + 2 * pad < span:
        return  # an empty output: the importer rejects it before codegen
    x, wt = rand(1, c, h, w), rand(c * mult, 1, k, k)
    attrs = conv_attrs(wt.shape, group=c, pads=(pad,) * 4, strides=(stride, stride), dilations=(dil, dil))
    check({"x": x, "w": wt}, lambda bl, x, w: bl.op("conv", [x, w], **attrs))


# -- pooling -----------------------------------------------------------------------------------

_S2 = {"kernel_shape": (3, 3), "strides": (2, 2)}
POOL_CASES = [
    # (op, x shape, attrs)
    ("max_pool", (1, 6, 28, 28), {**_S2, "pads": (1, 1, 1, 1)}),
    ("max_pool", (2, 3, 15, 17), {**_S2, "ceil_mode": True}),
    # A dilated, non-square window with uneven pads.
    ("max_pool", (1, 3, 13, 13), {"kernel_shape": (2, 3), "strides": (1, 2), "pads": (1, 0, 0, 1),
                                  "dilations": (2, 1)}),
    ("average_pool", (1, 6, 28, 28), {**_S2, "pads": (1, 1, 1, 1)}),
    ("average_pool", (1, 5, 14, 14), {**_S2, "pads": (1, 1, 1, 1), "count_include_pad": True}),
    ("average_pool", (1, 4, 11, 9), {"kernel_shape": (2, 2), "strides": (2, 2), "ceil_mode": True}),
    ("average_pool", (1, 4, 9, 40), {"kernel_shape": (3, 3), "strides": (1, 1), "pads": (1, 1, 1, 1)}),
]


@pytest.mark.parametrize("op,sx,attrs", POOL_CASES, ids=[str(i) for i in range(len(POOL_CASES))])
def test_pool(op, sx, attrs):
    x = rand(*sx)
    k = check({"x": x}, lambda bl, x: bl.op(op, [x], **attrs), kind="reduce", kernel="depthwise")
    assert tile_writes_output(k.meta["source"])


def test_pool_f16_and_epilogue():
    """f16 pools (computed in f32) and a reshape after the pool in the same group."""
    x = rand(1, 8, 14, 14, dtype=np.float16)
    attrs = {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}

    def build(bl, x):
        return bl.op("reshape", [bl.op("max_pool", [x], **attrs)], shape=(1, 8 * 7 * 7))

    check({"x": x}, build, kind="reduce", kernel="depthwise")


def test_pool_generic_paths():
    """1-D pools, lp_pool and integer max pooling keep the direct formulation."""
    x = rand(1, 3, 20)
    check({"x": x}, lambda bl, x: bl.op("max_pool", [x], kernel_shape=(3,), strides=(2,), pads=(1, 1)), kind="reduce")
    x2 = rand(1, 3, 9, 9)
    attrs = {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "p": 2}
    k = check({"x": x2}, lambda bl, x: bl.op("lp_pool", [x], **attrs), kind="reduce")
    assert "einfuse.kernel" not in k.meta["source"]


@given(
    op=st.sampled_from(["max_pool", "average_pool"]),
    h=st.integers(2, 20),
    w=st.integers(2, 35),
    k=st.integers(2, 4),
    stride=st.integers(1, 3),
    pad=st.integers(0, 1),
    ceil=st.booleans(),
    include_pad=st.booleans(),
)
def test_pool_hypothesis(op, h, w, k, stride, pad, ceil, include_pad):
    if h + 2 * pad < k or w + 2 * pad < k or pad >= k:
        return  # no output, or pads as wide as the window (rejected by the importer)
    attrs = {"kernel_shape": (k, k), "strides": (stride, stride), "pads": (pad,) * 4, "ceil_mode": ceil}
    if op == "average_pool":
        attrs["count_include_pad"] = include_pad
    check({"x": rand(1, 2, h, w)}, lambda bl, x: bl.op(op, [x], **attrs), kind="reduce")


# -- odd output widths and small maps (SqueezeNet's shapes) -------------------------------------


@pytest.mark.parametrize(
    "sx,sw,attrs",
    [
        ((1, 3, 35, 35), (64, 3, 3, 3), {"strides": (2, 2)}),  # conv1-like: 17 columns
        ((1, 16, 17, 17), (40, 16, 3, 3), {"pads": (1, 1, 1, 1)}),  # 17 columns, OC not a whole block
        ((2, 5, 31), (32, 5, 3), {}),  # 1-D, 29 columns
    ],
)
def test_blocked_conv_ragged_rows(sx, sw, attrs):
    """The blocked kernel on rows its tile width does not divide: the last tile's store is
    predicated and vectorized over channels."""
    x, w, b = rand(*sx), rand(*sw), rand(sw[0])
    attrs = conv_attrs(sw, **attrs)

    def build(bl, x, w, b):
        return bl.op("relu", [bl.op("conv", [x, w, b], **attrs)])

    k = check({"x": x}, build, consts={"w": w, "b": b}, kernel="conv")
    assert tile_writes_output(k.meta["source"])
    reg_n = int(k.meta["source"].split('"einfuse.reg_n": ')[1].split("}")[0].split(",")[0])
    assert _out_cols(sx, sw, attrs) % reg_n != 0  # a ragged last tile


def _out_cols(sx, sw, attrs) -> int:
    nd = len(sw) - 2
    return (sx[-1] + attrs["pads"][nd - 1] + attrs["pads"][-1] - sw[-1]) // attrs["strides"][-1] + 1


def test_blocked_conv_one_vector_exact_rows():
    """An 11-column row no tile of 2 vectors x 4-8 pixels divides takes one vector of
    channels x 11 pixels."""
    x, w, b = rand(1, 16, 11, 11), rand(64, 16, 3, 3), rand(64)
    attrs = conv_attrs(w.shape, pads=(1, 1, 1, 1))

    def build(bl, x, w, b):
        return bl.op("relu", [bl.op("conv", [x, w, b], **attrs)])

    k = check({"x": x}, build, consts={"w": w, "b": b}, kernel="conv")
    assert '"einfuse.ocb": 16' in k.meta["source"] and '"einfuse.reg_n": 11' in k.meta["source"]


@pytest.mark.parametrize("c,oc,hw,kernel", [(48, 192, 13, "depthwise"), (32, 20, 9, "depthwise"), (64, 64, 7, "conv")])
def test_small_map_pointwise(c, oc, hw, kernel):
    """Ungrouped 1x1 convs on maps whose row fits one vector run as the row-vector kernel
    (7x7 maps stay blocked)."""
    x, w, b = rand(1, c, hw, hw), rand(oc, c, 1, 1), rand(oc)
    attrs = conv_attrs(w.shape)

    def build(bl, x, w, b):
        return bl.op("relu", [bl.op("conv", [x, w, b], **attrs)])

    k = check({"x": x}, build, consts={"w": w, "b": b}, kernel=kernel)
    assert tile_writes_output(k.meta["source"])


def test_pool_row_width_divides_output():
    """A pooled row the vector does not divide (27 columns) takes a width that does (9)."""
    x = rand(1, 3, 55, 55)
    attrs = {"kernel_shape": (3, 3), "strides": (2, 2)}
    k = check({"x": x}, lambda bl, x: bl.op("max_pool", [x], **attrs), kind="reduce", kernel="depthwise")
    assert '"einfuse.vw": 9' in k.meta["source"]
