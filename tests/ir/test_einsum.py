"""Extended Einsums: the cascade notation (einfuse.ir.einsum: parse/print round trip, parse
errors, the numpy evaluator, FuseMax pass counting, the 3->2->1-pass and split rewrites,
each checked by evaluation), the `einsum` core op's combine/reduce operators, and the
`einsum_cascade` op (inference errors, reference vs the `attention` reference)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from einfuse.codegen import reference
from einfuse.errors import VerifyError
from einfuse.ir.einsum import (
    CAUSAL,
    FORMS,
    Access,
    Binary,
    Call,
    CascadeError,
    Name,
    Num,
    Unary,
    attention_cascade,
    causal_of,
    count_passes,
    describe,
    evaluate,
    format_expr,
    parse_cascade,
    parse_statement,
    split_kv,
    to_one_pass,
    to_two_pass,
)
from einfuse.ir.ops.attention import attention
from einfuse.ir.parser import parse
from einfuse.ir.printer import print_graph
from einfuse.ir.types import DType
from einfuse.ir.verifier import verify

# -- notation: round trip -----------------------------------------------------------------


def all_attention_cascades():
    for form in FORMS:
        for causal in CAUSAL:
            for has_bias in (False, True):
                for grouped in (False, True):
                    yield attention_cascade(form, causal=causal, has_bias=has_bias, grouped=grouped, kv_tile=8)


def test_attention_cascades_round_trip():
    for c in all_attention_cascades():
        assert parse_cascade(c.lines()) == c
        assert parse_cascade(str(c)) == c  # one multi-line string works too
        assert parse_cascade(c.lines()).lines() == c.lines()


def test_iterative_form_prints_as_fusemax_writes_it():
    c = attention_cascade("1-pass", kv_tile=64)
    lines = c.lines()
    assert lines[:2] == ("M0 = 64", "M1 = ceil(M / M0)")
    assert "RM[b,h,p,m1+1] = max(RM[b,h,p,m1], LM[b,h,p,m1])" in lines
    assert "PRM[b,h,p,m1] = exp(RM[b,h,p,m1] - SM[b,h,p,m1])" in lines
    assert "RD[b,h,p,m1+1] = RD[b,h,p,m1] * PRM[b,h,p,m1] + SLD[b,h,p,m1]" in lines
    assert lines[-1] == "A[b,h,p,f] = RNV[b,h,p,M1,f] / where(RD[b,h,p,M1] == 0, 1, RD[b,h,p,M1])"
    assert c.iterative_ranks == {"m1"}


@pytest.mark.parametrize(
    "text, canonical",
    [
        # implicit sum over ranks on the right only (classic Einsum): the printer makes it explicit
        ("QK[b,h,p,m] = Q[b,h,p,e] * K[b,h,m,e]", "QK[b,h,p,m] = sum(e) Q[b,h,p,e] * K[b,h,m,e]"),
        ("GM[b,h,p] = max(m) QK[b,h,p,m]", None),
        ("Z[i,k] = min(j, l) X[i,j,l] + Y[j,k]", "Z[i,k] = min(j,l) X[i,j,l] + Y[j,k]"),
        ("X[i] = -(A[i] + B[i]) * 2", None),
        ("X[i] = A[i] - (B[i] - C[i])", None),
        ("X[i] = A[i] / (B[i] * C[i])", None),
        ("X[i] = (A[i] - B[i]) - C[i]", "X[i] = A[i] - B[i] - C[i]"),
        ("X[i] = where(i < 3 and i >= 1 or i == 5, A[i], -inf)", None),
        ("X[i] = where((i < 3) == (i > 1), A[i//2], 1.5e-3)", "X[i] = where((i < 3) == (i > 1), A[i//2], 0.0015)"),
        ("X[i] = max(A[i], 0) + min(A[i], B[i]) * exp(-A[i])", None),
        ("X[i] = A[i] * -1", "X[i] = A[i] * (-1)"),
        ("R[i+1] = R[i] + A[i]", None),
        ("X[i] = max(j) (-A[i,j])", None),
        ("M1 = ceil(M / M0)", None),
        ("X[i] = A[(i%3)*K0+2] + A[i%(3*K0)]", "X[i] = A[i%3*K0+2] + A[i%(3*K0)]"),
    ],
)
def test_statement_round_trip(text, canonical):
    s = parse_statement(text)
    assert str(s) == (canonical or text)
    assert parse_statement(str(s)) == s


# Random expression trees print and parse back to the same tree.
_leaf = st.one_of(
    st.builds(Num, st.integers(0, 9)),
    st.builds(Num, st.sampled_from([0.5, 2.25, math.inf, -math.inf, -3])),
    st.builds(Name, st.sampled_from(["i", "j", "scale", "N"])),
    st.builds(lambda t, i: Access(t, (Name(i),)), st.sampled_from(["A", "B"]), st.sampled_from(["i", "j"])),
)
_ops = ["+", "-", "*", "/", "//", "%", "<", "<=", "==", "and", "or"]


def _extend(children):
    return st.one_of(
        st.builds(Binary, st.sampled_from(_ops), children, children),
        st.builds(lambda a: Unary("-", a), children.filter(lambda x: not isinstance(x, Num))),
        st.builds(lambda a, b: Call("max", (a, b)), children, children),
        st.builds(lambda a, b, c: Call("where", (a, b, c)), children, children, children),
        st.builds(lambda a: Call("exp", (a,)), children),
    )


@given(st.recursive(_leaf, _extend, max_leaves=12))
def test_random_expressions_round_trip(e):
    # Comparisons do not chain: the printer must parenthesise a comparison operand.
    text = "X[i,j] = " + format_expr(e)
    s = parse_statement(text)
    assert s.expr == e
    assert str(s) == text


# -- notation: errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, match",
    [
        ("X[i] = foo(A[i])", r"unknown function 'foo'.*X\[i\] = foo"),
        ("X[i] = A[i] $ 2", r"unexpected character '\$' at column 13"),
        ("X[i] = A[i", r"missing '\]' at column 11"),
        ("X[i] = A[i) + 1", r"expected ',' or '\]', got '\)'"),
        ("X[i] = sum(i) A[i]", r"rank 'i' is reduced but also on the left"),
        ("X[i] = sum(j) A[i,j,k]", r"rank\(s\) k appear on the right but are neither on the left nor reduced"),
        ("X[i] = sum(k) A[i,j]", r"rank 'k' is reduced but does not appear on the right"),
        ("x[i] = A[i]", r"starts with a tensor or size name"),
        ("X[i] = a[i]", r"tensor names start with an uppercase letter"),
        ("X[i*2] = A[i]", r"output index 'i\*2' must be a rank"),
        ("X[i,i] = A[i]", r"an output rank is repeated"),
        ("X[i] = A[i] < B[i] < 3", r"comparisons do not chain"),
        ("X[i] = max(A[i])", r"max\(\) takes 2 arguments"),
        ("X[i] = max(j) -A[i,j]", r"max\(\) takes 2 arguments"),  # needs max(j) (-A[i,j])
        ("M1 = ceil(M / m0)", r"size M1 may only use sizes"),
        ("", r"empty statement"),
    ],
)
def test_parse_errors_quote_the_statement(text, match):
    with pytest.raises(CascadeError, match=match):
        parse_statement(text)


def test_cascade_level_errors():
    with pytest.raises(CascadeError, match=r"Y is read before it is written.*Z\[i\] = Y\[i\]"):
        parse_cascade(["Z[i] = Y[i]", "Y[i] = A[i]"])
    with pytest.raises(CascadeError, match=r"M.* used both as a tensor and as a size"):
        parse_cascade(["M[i] = A[i]", "Z[i] = M[i] * M"])
    c = parse_cascade(["Z[i] = A[i] * scale"])
    with pytest.raises(CascadeError, match=r"input tensor\(s\) A are not bound"):
        evaluate(c)
    with pytest.raises(CascadeError, match=r"parameter 'scale' is not bound.*Z\[i\] = A\[i\] \* scale"):
        evaluate(c, A=np.ones(3, np.float32))
    with pytest.raises(CascadeError, match=r"A has 2 dims, but is indexed with 1"):
        evaluate(c, A=np.ones((3, 2), np.float32), scale=1.0)
    with pytest.raises(
        CascadeError, match=r"size M is not bound .*pass M=\.\.\. to evaluate.* in 'M1 = ceil\(M / M0\)'"
    ):
        evaluate(
            attention_cascade("1-pass", kv_tile=4),
            Q=np.ones((1, 1, 1, 2)),
            K=np.ones((1, 1, 3, 2)),
            V=np.ones((1, 1, 3, 2)),
            scale=1.0,
            P=1,
        )


# -- evaluation ---------------------------------------------------------------------------


def test_evaluate_matches_numpy(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = rng.standard_normal((4, 5)).astype(np.float32)
    b = rng.standard_normal((1, 5)).astype(np.float32)
    np.testing.assert_allclose(evaluate(["Z[i,k] = X[i,j] * Y[j,k]"], X=x, Y=y), x @ y, rtol=1e-5, atol=1e-6)
    # tropical (max-plus) product: combine +, reduce max
    want = (x[:, :, None] + y[None]).max(axis=1)
    np.testing.assert_allclose(evaluate(["Z[i,k] = max(j) X[i,j] + Y[j,k]"], X=x, Y=y), want, rtol=1e-6)
    # a size-1 dimension broadcasts; parameters are scalars; the reduction covers the whole
    # right-hand side (B is added at each of the 4 values of j)
    got = evaluate(["Z[i,k] = sum(j) X[i,j] * Y[j,k] * s + B[i,k]"], X=x, Y=y, B=b, s=0.5)
    np.testing.assert_allclose(got, x @ y * 0.5 + 4 * b, rtol=1e-5, atol=1e-6)
    # a size-1 dimension broadcasts along a reduced rank too (general and product paths)
    got = evaluate(["Z[k] = sum(j) B[j,k] + Y[j,k] * 0"], B=b, Y=y)
    np.testing.assert_allclose(got, 4 * b[0], rtol=1e-6)
    np.testing.assert_allclose(evaluate(["Z[k] = sum(j) B[j,k] * Y[j,k]"], B=b, Y=y), b[0] * y.sum(0), rtol=1e-5)
    # reads outside a tensor are 0 (zero-filled partitioned ranks)
    got = evaluate(["N = 2", "Z[i,n] = X[i,n*3+1]"], X=x, I=3)
    np.testing.assert_array_equal(got, np.stack([x[:, 1], np.zeros(3, np.float32)], axis=1))
    # an index map and a value that depends on ranks
    got = evaluate(["Z[i,j] = where(j <= i, X[i//2,j], -1)"], X=x[:2], I=4)
    want = np.where(np.arange(4)[None, :] <= np.arange(4)[:, None], x[np.arange(4) // 2], -1)
    np.testing.assert_array_equal(got, want)


def test_evaluate_iterative_rank_is_a_recurrence(rng):
    x = rng.standard_normal(7).astype(np.float64)
    # running sum and running max: FuseMax's RM[m1+1] = max(RM[m1], ...) shape of statement
    c = parse_cascade(
        ["R[0] = 0", "R[i+1] = R[i] + X[i]", "Q[0] = -inf", "Q[i+1] = max(Q[i], X[i])", "Z[i] = R[i+1] * Q[i+1]"]
    )
    assert c.iterative_ranks == {"i"}
    got = evaluate(c, X=x)
    np.testing.assert_allclose(got, np.cumsum(x) * np.maximum.accumulate(x), rtol=1e-12)
    assert got.dtype == np.float64  # f64 inputs evaluate in f64


def _attention_inputs(rng, b=2, hq=4, hkv=2, s=3, m=11, d=5, dv=6, bias_shape=None):
    q = rng.standard_normal((b, hq, s, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, m, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, m, dv)).astype(np.float32)
    bias = None if bias_shape is None else rng.standard_normal(bias_shape).astype(np.float32)
    return q, k, v, bias


def _bind(q, k, v, bias, scale):
    return {
        "Q": q,
        "K": k,
        "V": v,
        "BIAS": bias,
        "scale": scale,
        "G": q.shape[1] // k.shape[1],
        "M": k.shape[2],
        "P": q.shape[2],
    }


def _attention_ref(q, k, v, bias, scale, causal):
    past = None
    if causal == "bottom_right":  # the KV-cache alignment: the last S keys are new
        s = q.shape[2]
        past = (k[:, :, :-s], v[:, :, :-s])
        k, v = k[:, :, -s:], v[:, :, -s:]
    args = [q, k, v, bias] + (list(past) if past else [])
    return attention(
        *args,
        scale=scale,
        is_causal=causal != "none",
        softcap=0.0,
        softmax_precision=DType.f32,
        left_window_size=-1,
        right_window_size=-1,
        qk_output="none",
    )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("causal", CAUSAL)
def test_attention_forms_match_the_attention_reference(rng, form, causal):
    q, k, v, bias = _attention_inputs(rng, bias_shape=(2, 1, 3, 11))
    c = attention_cascade(form, causal=causal, has_bias=True, grouped=True, kv_tile=4, kv_splits=2)
    got = evaluate(c, **_bind(q, k, v, bias, 0.3))
    np.testing.assert_allclose(got, _attention_ref(q, k, v, bias, 0.3, causal), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("form", FORMS)
def test_fully_masked_rows_give_zero(rng, form):
    q, k, v, bias = _attention_inputs(rng, bias_shape=(2, 4, 3, 11))
    bias[:, :, 1, :] = -np.inf  # every key of query 1 masked
    bias[0, 0, 2, :9] = -np.inf  # the first tiles of a row masked, the last ones not
    c = attention_cascade(form, has_bias=True, grouped=True, kv_tile=4, kv_splits=3)
    got = evaluate(c, **_bind(q, k, v, bias, 0.3))
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got[:, :, 1], 0)
    np.testing.assert_allclose(got, _attention_ref(q, k, v, bias, 0.3, "none"), rtol=1e-5, atol=2e-6)


# -- pass counting ---------------------------------------------------------------------------


def test_count_passes_of_the_three_forms():
    for form, passes in (("3-pass", 3), ("2-pass", 2), ("1-pass", 1), ("split", 1)):
        for causal in CAUSAL:
            assert count_passes(attention_cascade(form, causal=causal, has_bias=True, grouped=True)) == passes
    # the split's merge is a second traversal of the chunk rank, not of the keys
    assert count_passes(attention_cascade("split"), rank="c") == 2
    assert count_passes(attention_cascade("3-pass"), rank="e") == 1
    assert count_passes(attention_cascade("3-pass"), rank="x") == 0


def test_causal_of_reads_the_mask_of_every_form():
    for form in FORMS:
        for causal in CAUSAL:
            assert causal_of(attention_cascade(form, causal=causal, has_bias=True, grouped=True)) == causal


def test_count_passes_sees_a_read_of_a_finished_recurrence():
    one = attention_cascade("1-pass").lines()
    # Normalising each tile by the FINAL running max needs the whole traversal first.
    cheat = [line.replace("- SM[b,h,p,m1])", "- RM[b,h,p,M1])") for line in one]
    assert cheat != list(one)
    assert count_passes(cheat) == 2
    assert count_passes(["GM[p] = max(m) X[p,m]", "Y[p,m] = X[p,m] - GM[p]", "Z[p] = sum(m) Y[p,m]"]) == 2


# -- rewrites, each checked by evaluation --------------------------------------------------------


def test_to_two_pass_hoists_the_division():
    c3 = attention_cascade("3-pass")
    c2 = to_two_pass(c3)
    assert c2.lines()[-2:] == (
        "AN[b,h,p,f] = sum(m) SN[b,h,p,m] * V[b,h,m,f]",
        "A[b,h,p,f] = AN[b,h,p,f] / where(SD[b,h,p] == 0, 1, SD[b,h,p])",
    )
    assert to_two_pass(c2) == c2  # nothing left to hoist
    # generic: any factor constant along the reduced rank moves out
    g = to_two_pass(["Z[i] = sum(j) X[i,j] * Y[i] / W[i] * U[j]"])
    assert g.lines() == ("ZN[i] = sum(j) X[i,j] * U[j]", "Z[i] = ZN[i] * Y[i] / W[i]")
    # a factor that uses the reduced rank as a value stays inside
    g = to_two_pass(["Z[i] = sum(j) X[i,j] * where(j <= i, 1, 0) / W[i]"])
    assert g.lines() == ("ZN[i] = sum(j) X[i,j] * where(j <= i, 1, 0)", "Z[i] = ZN[i] / W[i]")


@given(
    m=st.integers(1, 23),
    s=st.integers(1, 4),
    tile=st.integers(1, 9),
    splits=st.integers(1, 5),
    causal=st.sampled_from(CAUSAL),
    seed=st.integers(0, 2**16),
)
def test_each_rewrite_preserves_the_value(m, s, tile, splits, causal, seed):
    rng = np.random.default_rng(seed)
    s = min(s, m) if causal == "bottom_right" else s
    q, k, v, bias = _attention_inputs(rng, b=1, hq=2, hkv=1, s=s, m=m, d=3, dv=2, bias_shape=(1, 2, s, m))
    bias[rng.random(bias.shape) < 0.2] = -np.inf
    bind = _bind(q, k, v, bias, 0.7)
    c3 = attention_cascade("3-pass", causal=causal, has_bias=True, grouped=True)
    c2 = to_two_pass(c3)
    c1 = to_one_pass(c2, tile)
    cs = split_kv(c1, splits)
    base = evaluate(c3, **bind)
    for c in (c2, c1, cs):
        np.testing.assert_allclose(evaluate(c, **bind), base, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(base, _attention_ref(q, k, v, bias, 0.7, causal), rtol=2e-5, atol=2e-6)


def test_rewrites_refuse_what_they_do_not_know():
    with pytest.raises(CascadeError, match="no GM statement"):
        to_one_pass(["Z[i] = X[i] * 2"], 4)
    two = list(attention_cascade("2-pass").lines())
    two[4] = two[4].replace("sum(m)", "max(m)")  # SD is no longer a sum
    with pytest.raises(CascadeError, match="the softmax part is not the form this rewrite knows"):
        to_one_pass(two, 4)
    with pytest.raises(CascadeError, match="no LM statement"):
        split_kv(attention_cascade("2-pass"), 2)
    with pytest.raises(CascadeError, match="tile must be a positive int"):
        to_one_pass(attention_cascade("2-pass"), 0)


# -- the einsum core op's combine and reduce --------------------------------------------------------

COMBINE = {"mul": np.multiply, "add": np.add, "sub": np.subtract, "max": np.maximum, "min": np.minimum}
REDUCE = {"sum": np.sum, "max": np.max, "min": np.min}


def checked(text: str):
    """Parses and verifies (which runs every node's type inference)."""
    g = parse(text)
    verify(g)
    return g


def _run(text: str, inputs: dict) -> np.ndarray:
    g = parse(text)
    return reference.run(g, inputs)[g.outputs[0].name]


@pytest.mark.parametrize("combine", list(COMBINE))
@pytest.mark.parametrize("reduce", list(REDUCE))
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_einsum_combine_reduce(rng, combine, reduce, dtype):
    npdt = np.float32 if dtype == "f32" else np.float16
    x = rng.standard_normal((3, 4)).astype(npdt)
    y = rng.standard_normal((4, 5)).astype(npdt)
    text = f"""
    graph @main(%x: {dtype}[3,4], %y: {dtype}[4,5]) -> (%z: {dtype}[3,5]) {{
      %z = einsum(%x, %y) {{equation="ij,jk->ik", combine="{combine}", reduce="{reduce}"}} : {dtype}[3,5]
      return %z
    }}"""
    got = _run(text, {"x": x, "y": y})
    want = REDUCE[reduce](COMBINE[combine](x.astype(np.float32)[:, :, None], y.astype(np.float32)[None]), axis=1)
    tol = 1e-5 if dtype == "f32" else 2e-3
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=tol, atol=tol * 4)
    assert got.dtype == npdt


def test_einsum_generic_path_handles_ellipsis_diagonals_and_broadcast(rng):
    x = rng.standard_normal((2, 3, 3)).astype(np.float32)
    y = rng.standard_normal((1, 3)).astype(np.float32)
    text = """
    graph @main(%x: f32[2,3,3], %y: f32[1,3]) -> (%z: f32[2]) {
      %z = einsum(%x, %y) {equation="...ii,...i->...", combine="add", reduce="max"} : f32[2]
      return %z
    }"""
    got = _run(text, {"x": x, "y": y})
    want = (np.diagonal(x, axis1=1, axis2=2) + y).max(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_einsum_defaults_print_as_before_and_bad_operators_are_refused():
    text = """graph @main(%x: f32[3,4], %y: f32[4,5]) -> (%z: f32[3,5]) {
  %z = einsum(%x, %y) {equation="ij,jk->ik"} : f32[3,5]
  return %z
}"""
    g = parse(text)
    assert print_graph(g) == text
    assert g.nodes[0].attrs["combine"] == "mul" and g.nodes[0].attrs["reduce"] == "sum"
    with pytest.raises(VerifyError, match=r"einsum %z: combine='pow' should be one of mul, add, sub, max, min"):
        checked(text.replace('equation="ij,jk->ik"', 'equation="ij,jk->ik", combine="pow"'))
    with pytest.raises(VerifyError, match=r"reduce='prod' should be one of sum, max, min"):
        checked(text.replace('equation="ij,jk->ik"', 'equation="ij,jk->ik", reduce="prod"'))


# -- the einsum_cascade op ----------------------------------------------------------------------------


def _cascade_graph(c, qt, kt, vt, ot, attrs="", bias_t=None):
    casc = "(" + ",".join(f'"{line}"' for line in c.lines()) + ")"
    bias_in = f", %bias: {bias_t}" if bias_t else ""
    bias_op = ", %bias" if bias_t else ""
    return f"""graph @main(%q: {qt}, %k: {kt}, %v: {vt}{bias_in}) -> (%o: {ot}) {{
  %o = einsum_cascade(%q, %k, %v{bias_op}) {{cascade={casc}, scale=0.3{attrs}}} : {ot}
  return %o
}}"""


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_einsum_cascade_reference_matches_attention(rng, dtype):
    npdt = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}[dtype]
    q, k, v, bias = _attention_inputs(rng, b=1, hq=4, hkv=2, s=2, m=9, d=4, dv=3, bias_shape=(1, 1, 2, 9))
    q, k, v, bias = (x.astype(npdt) for x in (q, k, v, bias))
    c = attention_cascade("split", causal="bottom_right", has_bias=True, grouped=True, kv_tile=2, kv_splits=3)
    text = _cascade_graph(
        c,
        f"{dtype}[1,4,2,4]",
        f"{dtype}[1,2,9,4]",
        f"{dtype}[1,2,9,3]",
        f"{dtype}[1,4,2,3]",
        ', causal="bottom_right", kv_tile=2, kv_splits=3',
        bias_t=f"{dtype}[1,1,2,9]",
    )
    g = parse(text)
    got = reference.run(g, {"q": q, "k": k, "v": v, "bias": bias})["o"]
    assert got.dtype == npdt
    want = _attention_ref(q, k, v, bias, 0.3, "bottom_right")
    tol = {"f32": 1e-5, "f16": 3e-3, "bf16": 3e-2}[dtype]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol)
    assert describe(g.nodes[0]) == "attention cascade %o: 3-pass -> 1-pass (kv_tile=2, kv_splits=3)"


def test_einsum_cascade_symbolic_shapes_and_errors():
    c = attention_cascade("1-pass", grouped=True, kv_tile=64)
    ok = _cascade_graph(c, "f32[B,8,S,64]", "f32[B,2,M,64]", "f32[B,2,M,32]", "f32[B,8,S,32]", ", kv_tile=64")
    checked(ok)  # symbolic B, S, M: fine
    with pytest.raises(VerifyError, match=r"einsum_cascade %o.*8 query heads are not a multiple of 3"):
        checked(ok.replace("f32[B,2,M,64]", "f32[B,3,M,64]").replace("f32[B,2,M,32]", "f32[B,3,M,32]"))
    with pytest.raises(VerifyError, match=r"kv_tile=0 but the cascade's key tile M0 is 64"):
        checked(ok.replace(", kv_tile=64", ""))
    with pytest.raises(VerifyError, match=r"the cascade reads Q, K, V, but the operands are Q, K, V, BIAS"):
        checked(
            _cascade_graph(
                c, "f32[B,8,S,64]", "f32[B,2,M,64]", "f32[B,2,M,32]", "f32[B,8,S,32]", ", kv_tile=64", "f32[B,1,S,M]"
            )
        )
    with pytest.raises(VerifyError, match=r"causal='top_left' but the cascade masks as 'none'"):
        checked(ok.replace(", kv_tile=64", ', kv_tile=64, causal="top_left"'))
    with pytest.raises(VerifyError, match=r"bad cascade: .*unknown function 'softmax'"):
        checked(ok.replace("exp(", "softmax("))
    plain = attention_cascade("3-pass")
    with pytest.raises(VerifyError, match=r"8 query heads share 2 kv heads, but the cascade reads K at head h"):
        checked(_cascade_graph(plain, "f32[1,8,3,4]", "f32[1,2,5,4]", "f32[1,2,5,4]", "f32[1,8,3,4]"))
    biased = attention_cascade("3-pass", has_bias=True)
    types = ("f32[1,2,3,4]", "f32[1,2,M,4]", "f32[1,2,M,4]", "f32[1,2,3,4]")
    with pytest.raises(VerifyError, match=r"bias f32\[1,1,7,M\] must have 1 or 3 in its query dim"):
        checked(_cascade_graph(biased, *types, "", "f32[1,1,7,M]"))
    with pytest.raises(VerifyError, match=r"bias must be f32, got i64"):
        checked(_cascade_graph(biased, *types, "", "i64[1,1,3,M]"))


def test_the_module_docstring_examples_are_what_the_builders_make():
    import einfuse.ir.einsum as module

    doc = module.__doc__
    textbook = doc[doc.index("    QK[b,h,p,m]") : doc.index("The notation")]
    assert parse_cascade(textbook) == attention_cascade("3-pass", causal="bottom_right", has_bias=True)
    online = doc[doc.index("    M0 = 64") : doc.index("(the `#` notes")]
    lines = [line.split("#")[0] for line in online.splitlines()]
    assert parse_cascade([x for x in lines if x.strip()]) == attention_cascade("1-pass", kv_tile=64)
