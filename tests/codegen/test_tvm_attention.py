"""The TVM attention kernels (codegen/tvm/attention.py) vs numpy.

Two oracles: a float64 numpy softmax(q k^T * scale + bias) v written here (fully masked
rows -> 0), and the einsum_cascade op's own reference (it evaluates the cascade) for kernels
compiled through the backend. Compiling a kernel costs about a second, so the property
tests draw fewer examples than the profile's default.
"""

from __future__ import annotations

import math
import re

import numpy as np
from onnx import TensorProto, helper
import pytest
import sympy

pytest.importorskip("tvm")

import ml_dtypes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from einfuse.codegen import reference
from einfuse.codegen.backend import LoweringError, get_backend
from einfuse.codegen.tvm.attention import (
    AttentionSpec,
    allocations,
    attention_primfunc,
    choose_tiling,
    compile_attention,
    workspace_bytes,
)
from einfuse.ir.builder import Builder
from einfuse.ir.einsum import attention_cascade
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType

BF16 = np.dtype(ml_dtypes.bfloat16)
NP_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": BF16}
IR_DTYPES = {"float32": DType.f32, "float16": DType.f16, "bfloat16": DType.bf16}
# (rtol, atol) on outputs of magnitude ~1: f32 sees only the polynomial exp and summation
# order; 16-bit outputs are rounded once (half an ulp: 2^-11 for f16, 2^-8 for bf16).
TOL = {"float32": (2e-5, 2e-5), "float16": (2e-3, 2e-3), "bfloat16": (1e-2, 1e-2)}

# Fewer examples than the profile: each one compiles a kernel.
KERNEL_EXAMPLES = settings(max_examples=min(settings().max_examples, 12), suppress_health_check=[HealthCheck.too_slow])


def softmax_attention(q, k, v, bias=None, *, scale, causal="none"):
    """float64 reference: softmax(q k^T * scale + bias, masked) v; rows with every key
    masked give 0. GQA: query head h reads kv head h // (Hq // Hkv)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = np.einsum("bhid,bhjd->bhij", q, k) * scale
    if bias is not None:
        s = s + np.asarray(bias, dtype=np.float64)
    S, M = q.shape[2], k.shape[2]
    if causal != "none":
        off = 0 if causal == "top_left" else M - S
        s = np.where(np.arange(M)[None, :] <= np.arange(S)[:, None] + off, s, -np.inf)
    mx = s.max(axis=-1, keepdims=True) if M else np.zeros(s.shape[:-1] + (1,))
    mx = np.where(np.isfinite(mx), mx, 0.0)
    p = np.exp(s - mx)
    den = p.sum(axis=-1, keepdims=True)
    num = np.einsum("bhij,bhjd->bhid", p, v)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def random_inputs(spec: AttentionSpec, rng, bias_scale: float = 1.0):
    dt = NP_DTYPES[spec.dtype]
    q = rng.standard_normal((spec.B, spec.Hq, spec.S, spec.D)).astype(dt)
    k = rng.standard_normal((spec.B, spec.Hkv, spec.M, spec.D)).astype(dt)
    v = rng.standard_normal((spec.B, spec.Hkv, spec.M, spec.Dv)).astype(dt)
    bias = None
    if spec.bias_shape is not None:
        bias = (bias_scale * rng.standard_normal(spec.bias_shape)).astype(NP_DTYPES[spec.bias_dtype])
    return q, k, v, bias


def check_kernel(spec: AttentionSpec, seed: int = 0, bias=None) -> np.ndarray:
    """Runs the compiled kernel of `spec` on random inputs and compares with numpy."""
    q, k, v, b = random_inputs(spec, np.random.default_rng(seed))
    b = b if bias is None else bias
    got = compile_attention(spec)(q, k, v, b)
    assert got.dtype == NP_DTYPES[spec.dtype] and got.shape == (spec.B, spec.Hq, spec.S, spec.Dv)
    want = softmax_attention(q, k, v, b, scale=spec.scale, causal=spec.causal)
    rtol, atol = TOL[spec.dtype]
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol, err_msg=str(spec))
    return got


@st.composite
def specs(draw, dtypes=tuple(NP_DTYPES)):
    hkv = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 1, 2, 3]))  # MHA, GQA, and MQA when hkv == 1
    S = draw(st.sampled_from([1, 2, 5, 16, 17, 33, 70]))
    M = draw(st.sampled_from([1, 3, 16, 31, 64, 65, 130]))
    D = draw(st.sampled_from([1, 5, 16, 24, 64]))
    Dv = draw(st.sampled_from([D, 3, 16]))
    B = draw(st.integers(1, 2))
    dtype = draw(st.sampled_from(dtypes))
    bias_shape = None
    if draw(st.booleans()):
        full = (B, hkv * group, S, M)
        bias_shape = tuple(d if draw(st.booleans()) else 1 for d in full)
    return AttentionSpec(
        B=B,
        Hq=hkv * group,
        Hkv=hkv,
        S=S,
        M=M,
        D=D,
        Dv=Dv,
        scale=1.0 / math.sqrt(D),
        causal=draw(st.sampled_from(["none", "top_left", "bottom_right"])),
        dtype=dtype,
        bias_shape=bias_shape,
        bias_dtype=None if bias_shape is None else draw(st.sampled_from([dtype, "float32"])),
        kv_tile=draw(st.sampled_from([0, 4, 16, 24])),
        kv_splits=draw(st.sampled_from([1, 1, 2, 3, 5])),
    )


@KERNEL_EXAMPLES
@given(spec=specs(), seed=st.integers(0, 2**16))
def test_kernel_matches_numpy(spec, seed):
    check_kernel(spec, seed)


@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("causal", ["top_left", "bottom_right"])
def test_causal_with_tiles_skipped(causal, splits):
    # Several query tiles, so some key tiles are skipped and the diagonal one is masked;
    # S > M under bottom_right leaves the first S - M rows with no visible key: 0, not NaN.
    spec = AttentionSpec(1, 2, 1, S=150, M=130, D=16, Dv=16, scale=0.25, causal=causal, kv_tile=16, kv_splits=splits)
    got = check_kernel(spec)
    assert np.isfinite(got).all()
    if causal == "bottom_right":
        assert not got[:, :, : spec.S - spec.M].any()
        assert np.abs(got[:, :, spec.S - spec.M :]).min(axis=-1).max() > 0


@pytest.mark.parametrize("splits", [1, 3])
def test_rows_masked_by_bias_give_zero(splits):
    # A -inf bias over a whole row (what the lowering makes of a boolean padding mask).
    spec = AttentionSpec(
        1, 2, 2, S=7, M=40, D=8, Dv=8, scale=0.3, bias_shape=(1, 1, 7, 40), bias_dtype="float32", kv_splits=splits
    )
    bias = np.random.default_rng(1).standard_normal((1, 1, 7, 40)).astype(np.float32)
    bias[0, 0, 2] = -np.inf
    bias[0, 0, 4, :20] = -np.inf  # half the keys (a whole split chunk) masked
    got = check_kernel(spec, bias=bias)
    assert not got[:, :, 2].any()
    assert np.isfinite(got).all()


@pytest.mark.parametrize(("hq", "hkv", "s"), [(4, 2, 1), (6, 1, 3)])
def test_decode_split_matches_no_split(hq, hkv, s):
    # Decode form (few query rows, the query heads of a group packed into one unit's rows).
    base = {"B": 1, "Hq": hq, "Hkv": hkv, "S": s, "M": 1000, "D": 64, "Dv": 64, "scale": 0.125}
    base["causal"] = "bottom_right"
    q, k, v, _ = random_inputs(AttentionSpec(**base), np.random.default_rng(3))
    one = compile_attention(AttentionSpec(**base))(q, k, v)
    split = compile_attention(AttentionSpec(**base, kv_splits=8))(q, k, v)
    assert choose_tiling(AttentionSpec(**base, kv_splits=8)).splits == 8
    np.testing.assert_allclose(split, one, rtol=1e-5, atol=1e-6)
    want = softmax_attention(q, k, v, scale=0.125, causal="bottom_right")
    np.testing.assert_allclose(split, want, rtol=2e-5, atol=2e-5)


# -- memory -------------------------------------------------------------------------------------


def test_workspace_independent_of_s_times_m():
    def spec(n, splits=1):
        return AttentionSpec(1, 12, 12, S=n, M=n, D=64, Dv=64, scale=0.125, causal="top_left", kv_splits=splits)

    small, large = (attention_primfunc(spec(n)) for n in (512, 4096))
    # Only O(tile) buffers: the same allocations at 512^2 and 4096^2 logits.
    assert allocations(small) == allocations(large)
    assert workspace_bytes(large, threads=2) < 256 * 1024
    assert all(nbytes < 4096 * 4096 for _, nbytes, _ in allocations(large))
    # The decode split keeps (max, sum, numerator) per split and query row: O(S * splits * Dv).
    decode = attention_primfunc(AttentionSpec(1, 12, 12, S=1, M=32768, D=64, Dv=64, scale=0.125, kv_splits=16))
    partials = sum(n for name, n, _ in allocations(decode) if name in ("pm", "pl", "pacc"))
    assert partials == 12 * 16 * 1 * (64 + 2) * 4
    assert workspace_bytes(decode, threads=2) < partials + 64 * 1024


# -- through the backend (the einsum_cascade op and its reference) ---------------------------------


def cascade_node(spec: AttentionSpec, form: str):
    """A fused node holding one einsum_cascade of `spec` (dims B and M symbolic)."""
    dt = IR_DTYPES[spec.dtype]
    B, M = sympy.Symbol("B"), sympy.Symbol("M")
    shapes = {
        "q": (B, spec.Hq, spec.S, spec.D),
        "k": (B, spec.Hkv, M, spec.D),
        "v": (B, spec.Hkv, M, spec.Dv),
    }
    types = {n: TensorType(s, dt) for n, s in shapes.items()}
    if spec.bias_shape is not None:
        types["bias"] = TensorType(spec.bias_shape, IR_DTYPES[spec.bias_dtype])
    cascade = attention_cascade(
        form,
        causal=spec.causal,
        has_bias=spec.bias_shape is not None,
        grouped=spec.Hq != spec.Hkv,
        kv_tile=spec.kv_tile,
        kv_splits=spec.kv_splits,
    )
    region = Graph("region")
    vals = [region.add_input(n, t) for n, t in types.items()]
    attrs = {"scale": spec.scale, "causal": spec.causal, "kv_tile": spec.kv_tile, "kv_splits": spec.kv_splits}
    region.outputs = [Builder(region).op("einsum_cascade", vals, cascade=cascade.lines(), **attrs)]
    outer = Graph("main")
    operands = [outer.add_input(n, t) for n, t in types.items()]
    Builder(outer).op("fused", operands, region=region, kind="opaque")
    return outer.nodes[-1], region


@KERNEL_EXAMPLES
@given(spec=specs(dtypes=("float32", "float16")), seed=st.integers(0, 2**16))
def test_backend_matches_cascade_reference(spec, seed):
    bias_shape = None if spec.bias_shape is None else (1, *spec.bias_shape[1:])
    spec = AttentionSpec(**{**spec.__dict__, "B": 1, "kv_tile": spec.kv_tile or 16, "bias_shape": bias_shape})
    form = "split" if spec.kv_splits > 1 else "1-pass"
    node, region = cascade_node(spec, form)
    kernel = get_backend("tvm").compile(node, dims={"B": spec.B, "M": spec.M})
    arrays = [x for x in random_inputs(spec, np.random.default_rng(seed)) if x is not None]
    want = next(iter(reference.run(region, {v.name: a for v, a in zip(region.inputs, arrays)}).values()))
    got = np.empty_like(want)
    kernel(arrays, [got])
    rtol, atol = TOL[spec.dtype]
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)
    assert kernel.flops > 0 and kernel.bytes_moved > 0


def test_backend_kernel_allocates_no_s_by_m_buffer():
    spec = AttentionSpec(1, 2, 2, S=300, M=700, D=16, Dv=16, scale=0.25, causal="bottom_right", kv_tile=32)
    node, _ = cascade_node(spec, "1-pass")
    kernel = get_backend("tvm").compile(node, dims={"B": 1, "M": spec.M})
    shapes = re.findall(r"alloc_buffer\(\(([\d, ]+)\)", kernel.meta["source"])
    assert shapes, "the kernel's TIR should show its tile buffers"
    sizes = [math.prod(int(d) for d in s.split(",") if d.strip()) for s in shapes]
    assert max(sizes) < spec.S * spec.M // 16
    assert kernel.flops == 2 * 2 * (16 + 16) * sum(min(700, i + 400 + 1) for i in range(300))


def test_f64_is_a_lowering_error():
    spec = AttentionSpec(1, 1, 1, S=4, M=4, D=4, Dv=4, scale=0.5, kv_tile=4)
    dt = DType.f64
    region = Graph("region")
    vals = [
        region.add_input(n, TensorType(s, dt))
        for n, s in (("q", (1, 1, 4, 4)), ("k", (1, 1, 4, 4)), ("v", (1, 1, 4, 4)))
    ]
    cascade = attention_cascade("1-pass", causal="none", has_bias=False, grouped=False, kv_tile=4, kv_splits=1)
    region.outputs = [Builder(region).op("einsum_cascade", vals, cascade=cascade.lines(), scale=spec.scale, kv_tile=4)]
    outer = Graph("main")
    operands = [outer.add_input(v.name, v.type) for v in vals]
    Builder(outer).op("fused", operands, region=region, kind="opaque")
    with pytest.raises(LoweringError, match="einsum_cascade.*f32/f16/bf16, not float64"):
        get_backend("tvm").compile(outer.nodes[-1])


@pytest.mark.parametrize("bias_shape", [(1, 1, 5, 9), (1, 1, 1, 1)])
def test_backend_constant_bias(bias_shape):
    # The lowering turns a constant attention mask into a constant bias: a kernel parameter
    # (an array) or a value baked into the code (a scalar).
    region = Graph("region")
    shapes = {"q": (1, 2, 5, 8), "k": (1, 2, 9, 8), "v": (1, 2, 9, 8)}
    vals = [region.add_input(n, TensorType(s, DType.f32)) for n, s in shapes.items()]
    if bias_shape[2] > 1:
        bias = np.triu(np.full(bias_shape, -np.inf, np.float32), 1)  # a causal mask, written out
    else:
        bias = np.full(bias_shape, 0.5, np.float32)
    cascade = attention_cascade("1-pass", causal="none", has_bias=True, grouped=False, kv_tile=4, kv_splits=1)
    operands = [*vals, region.add_constant("bias", bias)]
    region.outputs = [Builder(region).op("einsum_cascade", operands, cascade=cascade.lines(), scale=0.3, kv_tile=4)]
    outer = Graph("main")
    Builder(outer).op("fused", [outer.add_input(v.name, v.type) for v in vals], region=region, kind="opaque")
    kernel = get_backend("tvm").compile(outer.nodes[-1])
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes.values()]
    got = np.empty((1, 2, 5, 8), np.float32)
    kernel(arrays, [got])
    want = softmax_attention(*arrays, bias, scale=0.3)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [TensorProto.BFLOAT16, TensorProto.FLOAT16])
def test_16_bit_attention_model_compiles_without_fallback(dtype, tmp_path):
    """An ONNX Attention model in bf16/f16 runs its cascade on this kernel end to end (bf16
    arrays reach TVM as bfloat16 tensors), matching the reference to the dtype's rounding."""
    import einfuse
    from einfuse.codegen import reference
    from einfuse.frontends.onnx import convert_model

    b, h, s, d = 1, 4, 37, 16
    ins = [helper.make_tensor_value_info(n, dtype, [b, h, s, d]) for n in "qkv"]
    out = helper.make_tensor_value_info("y", dtype, None)
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)
    model = helper.make_model(helper.make_graph([node], "g", ins, [out]), opset_imports=[helper.make_opsetid("", 23)])
    np_dtype = BF16 if dtype == TensorProto.BFLOAT16 else np.dtype(np.float16)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((b, h, s, d)).astype(np_dtype) for n in "qkv"}
    compiled = einfuse.compile(model, target="llvm", cache_dir=tmp_path, progress=False)
    assert compiled.report.fallbacks == [], str(compiled.report)
    launches = [compiled.executable.kernels[ln.kernel].info for ln in compiled.executable.launches]
    assert [tuple(info["ops"]) for info in launches] == [("einsum_cascade",)]
    assert launches[0]["backend"] == "tvm"
    got = compiled(**feeds)["y"]
    want = reference.run(convert_model(model), feeds)["y"]
    assert got.dtype == np_dtype
    rtol, atol = TOL["bfloat16" if dtype == TensorProto.BFLOAT16 else "float16"]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=rtol, atol=atol)
