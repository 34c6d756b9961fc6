"""The vision op group (einfuse/ir/ops/vision.py + frontends/onnx_ops/vision.py): GridSample,
AffineGrid, Col2Im, CenterCropPad, MaxUnpool, RoiAlign, NonMaxSuppression, Unique and Det
against onnxruntime on seeded random data, their symbolic shape inference and clean errors,
and the ONNX conformance cases for these ops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sympy

from einfuse.errors import ExecutionError, ShapeError, UnsupportedOpError
from einfuse.frontends.onnx import DynamicOperandError
from tests.onnx_helpers import (
    OnnxModel,
    assert_bool_flags,
    case_ids,
    check_conformance_case,
    conformance_cases,
    i64,
    run_ort,
    seeded_rng,  # noqa: F401 (the rng fixture)
    uniform_tol,
)


class Model(OnnxModel):
    default_opset = 22
    tol = uniform_tol(1e-5, 1e-6)


# ---------------------------------------------------------------------------
# GridSample


def _grid(rng, shape, spread=1.6):
    # Positions a little outside [-1, 1] too, so that every padding mode matters.
    return (rng.random(shape) * 2 * spread - spread).astype(np.float32)


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_grid_sample_2d(rng, mode, padding_mode, align_corners):
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    grid = _grid(rng, (2, 6, 7, 2), spread=2.5)
    m = Model("GridSample", [("x", x), ("g", grid)], mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    m.check(atol=1e-5)


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_grid_sample_3d(rng, mode, padding_mode, align_corners):
    x = rng.standard_normal((1, 2, 3, 5, 4)).astype(np.float32)
    grid = _grid(rng, (1, 2, 4, 3, 3))
    m = Model("GridSample", [("x", x), ("g", grid)], mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    m.check(atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_grid_sample_opset16_names(rng, mode):
    x = rng.standard_normal((2, 2, 4, 6)).astype(np.float32)
    m = Model("GridSample", [("x", x), ("g", _grid(rng, (2, 3, 5, 2)))], opset=16, mode=mode)
    m.check(atol=1e-5)
    assert m.graph().nodes[0].attrs["mode"] == {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)


def test_grid_sample_f64_and_nearest_ties(rng):
    x = rng.standard_normal((1, 1, 4, 4))
    Model("GridSample", [("x", x), ("g", rng.random((1, 3, 3, 2)) * 2 - 1)]).check(rtol=1e-12, atol=1e-12)
    # Grid points halfway between pixels: nearest rounds half to even, like onnxruntime.
    half = np.asarray([-0.75, -0.25, 0.25, 0.75], np.float32)  # pixel coordinates 0.5, 1.5, 2.5, 3.5 - 0.5
    grid = np.stack(np.meshgrid(half, half), axis=-1)[None]
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    Model("GridSample", [("x", x), ("g", grid)], mode="nearest").check()


def test_grid_sample_symbolic_and_errors(rng):
    x, grid = np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 5, 6, 2), np.float32)
    m = Model("GridSample", [("x", x), ("g", grid)], input_shapes={"x": ["N", 3, "H", "W"], "g": ["N", "P", 6, 2]})
    assert m.out_types() == ["f32[N,3,P,6]"]
    with pytest.raises(ShapeError, match="last dim of grid"):
        Model("GridSample", [("x", x), ("g", np.zeros((2, 5, 6, 3), np.float32))]).graph()
    with pytest.raises(ShapeError, match="batch size"):
        Model("GridSample", [("x", x), ("g", np.zeros((3, 5, 6, 2), np.float32))]).graph()
    with pytest.raises(ShapeError, match="needs a float input"):
        Model("GridSample", [("x", x.astype(np.int32)), ("g", grid)]).graph()
    with pytest.raises(UnsupportedOpError, match="mode 'area'"):
        Model("GridSample", [("x", x), ("g", grid)], mode="area").graph()
    # Nearest sampling only moves values, so integer inputs are fine.
    xi = rng.integers(0, 9, (2, 3, 4, 4)).astype(np.int32)
    got = Model("GridSample", [("x", xi), ("g", _grid(rng, (2, 5, 6, 2)))], mode="nearest").einfuse()[0]
    assert got.dtype == np.int32 and got.shape == (2, 3, 5, 6)


# ---------------------------------------------------------------------------
# AffineGrid


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("size", [(2, 3, 5, 7), (2, 1, 2, 4), (2, 3, 4, 3, 5)])
def test_affine_grid(rng, size, align_corners):
    r = len(size) - 2
    theta = rng.standard_normal((2, r, r + 1)).astype(np.float32)
    Model("AffineGrid", [("theta", theta), ("@size", i64(*size))], opset=20, align_corners=align_corners).check()


@pytest.mark.parametrize("align_corners", [0, 1])
def test_affine_grid_single_pixel_dims_follow_pytorch(rng, align_corners):
    # A size-1 dim with align_corners: onnxruntime says 1, the ONNX reference -1; einfuse
    # follows PyTorch's affine_grid (the op's definition), which puts the pixel at 0.
    theta = rng.standard_normal((2, 2, 3)).astype(np.float32)
    got = Model("AffineGrid", [("theta", theta), ("@size", i64(2, 3, 1, 3))], opset=20, align_corners=align_corners)
    xs = np.asarray([-1, 0, 1] if align_corners else [-2 / 3, 0, 2 / 3], np.float32)
    base = np.stack([xs, np.zeros(3), np.ones(3)], axis=1).astype(np.float32)  # (x, y=0, 1) per pixel
    want = np.einsum("pk,njk->npj", base, theta)[:, None]
    np.testing.assert_allclose(got.einfuse()[0], want, rtol=1e-6, atol=1e-6)


def test_affine_grid_symbolic_and_errors():
    theta = np.zeros((2, 2, 3), np.float32)
    m = Model(
        "AffineGrid", [("theta", theta), ("@size", i64(2, 3, 5, 7))], opset=20, input_shapes={"theta": ["N", 2, 3]}
    )
    assert m.out_types() == ["f32[N,5,7,2]"]
    with pytest.raises(ShapeError, match=r"theta .* must have shape \(N, 3, 4\)"):
        Model("AffineGrid", [("theta", theta), ("@size", i64(2, 3, 4, 5, 7))], opset=20).graph()
    with pytest.raises(ShapeError, match="batch size"):
        Model("AffineGrid", [("theta", theta), ("@size", i64(3, 3, 5, 7))], opset=20).graph()
    with pytest.raises(DynamicOperandError, match="must be a constant"):
        Model("AffineGrid", [("theta", theta), ("size", i64(2, 3, 5, 7))], opset=20).graph()


# ---------------------------------------------------------------------------
# Col2Im


@pytest.mark.parametrize(
    "image, block, attrs",
    [
        ((5, 5), (1, 5), {}),
        ((5, 5), (3, 3), {"strides": [2, 2]}),
        ((5, 5), (1, 5), {"pads": [0, 1, 0, 1]}),
        ((6, 6), (2, 2), {"dilations": [2, 2], "pads": [1, 0, 1, 2], "strides": [1, 2]}),
        ((3, 4, 5), (2, 2, 3), {"strides": [1, 2, 1]}),
    ],
)
def test_col2im(rng, image, block, attrs):
    r = len(image)
    dil, st = attrs.get("dilations", [1] * r), attrs.get("strides", [1] * r)
    pads = attrs.get("pads", [0] * 2 * r)
    blocks = [(image[i] + pads[i] + pads[i + r] - dil[i] * (block[i] - 1) - 1) // st[i] + 1 for i in range(r)]
    x = rng.standard_normal((2, 3 * int(np.prod(block)), int(np.prod(blocks)))).astype(np.float32)
    Model("Col2Im", [("x", x), ("@image", i64(*image)), ("@block", i64(*block))], opset=18, **attrs).check()


def test_col2im_symbolic_and_errors():
    x = np.zeros((2, 10, 5), np.float32)
    m = Model(
        "Col2Im", [("x", x), ("@image", i64(5, 5)), ("@block", i64(1, 5))], opset=18, input_shapes={"x": ["N", 10, 5]}
    )
    assert m.out_types() == ["f32[N,2,5,5]"]
    with pytest.raises(ShapeError, match="number of blocks"):
        Model(
            "Col2Im", [("x", np.zeros((2, 10, 24), np.float32)), ("@image", i64(5, 5)), ("@block", i64(1, 5))], opset=18
        ).graph()
    with pytest.raises(ShapeError, match="not a multiple"):
        Model(
            "Col2Im", [("x", np.zeros((2, 11, 5), np.float32)), ("@image", i64(5, 5)), ("@block", i64(1, 5))], opset=18
        ).graph()
    with pytest.raises(ShapeError, match="smaller than one dilated block"):
        Model("Col2Im", [("x", x), ("@image", i64(2, 2)), ("@block", i64(1, 5))], opset=18).graph()


# ---------------------------------------------------------------------------
# CenterCropPad


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
@pytest.mark.parametrize(
    "shape, target, axes",
    [
        ((20, 10, 3), (10, 7, 3), None),
        ((10, 7, 3), (20, 10, 3), None),
        ((20, 8, 3), (10, 11, 3), None),
        ((20, 8, 3), (9, 5), (0, 1)),
        ((20, 8, 3), (9, 5), (-3, -2)),
        ((3, 7, 8), (4, 11), (2, 1)),
    ],
)
def test_center_crop_pad(rng, dtype, shape, target, axes):
    x = rng.integers(-5, 5, shape).astype(dtype)
    attrs = {} if axes is None else {"axes": list(axes)}
    Model("CenterCropPad", [("x", x), ("@s", i64(*target))], opset=18, **attrs).check()


def test_center_crop_pad_symbolic_and_errors():
    x = np.zeros((4, 10, 3), np.float32)
    m = Model("CenterCropPad", [("x", x), ("@s", i64(8))], opset=18, axes=[1], input_shapes={"x": ["B", "W", 3]})
    assert m.out_types() == ["f32[B,8,3]"]
    with pytest.raises(ShapeError, match="one size per axis"):
        Model("CenterCropPad", [("x", x), ("@s", i64(8, 2))], opset=18, axes=[1]).graph()
    with pytest.raises(ShapeError, match="out of range"):
        Model("CenterCropPad", [("x", x), ("@s", i64(8))], opset=18, axes=[3]).graph()


# ---------------------------------------------------------------------------
# MaxUnpool


def _max_pool_with_indices(x, kernel, strides, pads):
    """MaxPool's values and indices, from onnxruntime."""
    return Model("MaxPool", [("x", x)], outputs=2, kernel_shape=kernel, strides=strides, pads=pads).ort()


@pytest.mark.parametrize(
    "shape, kernel, strides, pads, with_shape",
    [
        ((2, 3, 4, 4), [2, 2], [2, 2], [0, 0, 0, 0], False),
        ((2, 3, 5, 5), [2, 2], [2, 2], [0, 0, 0, 0], True),  # the odd size needs output_shape
        ((1, 2, 6, 7), [3, 3], [2, 2], [1, 1, 1, 1], True),
        ((1, 2, 9), [3], [3], [0, 0], False),
        ((1, 1, 4, 4, 6), [2, 2, 3], [2, 2, 3], [0] * 6, False),
    ],
)
def test_max_unpool(rng, shape, kernel, strides, pads, with_shape):
    x = rng.standard_normal(shape).astype(np.float32)
    values, indices = _max_pool_with_indices(x, kernel, strides, pads)
    operands = [("v", values), ("i", indices)] + ([("@shape", i64(*shape))] if with_shape else [])
    got = Model("MaxUnpool", operands, kernel_shape=kernel, strides=strides, pads=pads).check()[0]
    if with_shape:
        # MaxPool's maxima land back where they came from.
        assert got.shape == shape
        np.testing.assert_array_equal(got.reshape(-1)[indices.reshape(-1)], values.reshape(-1))


def test_max_unpool_symbolic_and_errors():
    x, i = np.zeros((2, 3, 2, 2), np.float32), np.zeros((2, 3, 2, 2), np.int64)
    m = Model(
        "MaxUnpool", [("x", x), ("i", i)], kernel_shape=[2, 2], strides=[2, 2], input_shapes={"x": ["N", 3, "H", 2]}
    )
    assert m.out_types() == ["f32[N,3,2*H,4]"]
    with pytest.raises(ShapeError, match="must be i64 with the shape"):
        Model("MaxUnpool", [("x", x), ("i", np.zeros((2, 3, 2, 3), np.int64))], kernel_shape=[2, 2]).graph()
    with pytest.raises(ShapeError, match="needs kernel_shape"):
        Model("MaxUnpool", [("x", x), ("i", i)]).graph()
    m = Model("MaxUnpool", [("x", x), ("i", np.full((2, 3, 2, 2), 99, np.int64))], kernel_shape=[2, 2], strides=[2, 2])
    with pytest.raises(ExecutionError, match="outside the output"):
        m.einfuse()


# ---------------------------------------------------------------------------
# RoiAlign


def _rois(rng, n, h, w):
    x1 = rng.uniform(-2, w, n)
    y1 = rng.uniform(-2, h, n)
    x2 = x1 + rng.uniform(-1, w, n)  # some malformed (x2 < x1) and out-of-map rois too
    y2 = y1 + rng.uniform(-1, h, n)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("coord", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align(rng, mode, coord, sampling_ratio):
    x = rng.standard_normal((2, 3, 10, 12)).astype(np.float32)
    rois = _rois(rng, 6, 20, 24)
    batch = rng.integers(0, 2, 6).astype(np.int64)
    m = Model(
        "RoiAlign",
        [("x", x), ("rois", rois), ("b", batch)],
        mode=mode,
        coordinate_transformation_mode=coord,
        output_height=3,
        output_width=4,
        sampling_ratio=sampling_ratio,
        spatial_scale=0.5,
        opset=16,  # onnxruntime has no opset-22 RoiAlign (which only adds bf16)
    )
    m.check(rtol=1e-4, atol=1e-5)


def test_roi_align_opset10_has_no_half_pixel_shift(rng):
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    m = Model("RoiAlign", [("x", x), ("rois", _rois(rng, 4, 8, 8)), ("b", i64(0, 0, 0, 0))], opset=10, output_height=2)
    m.check(rtol=1e-4, atol=1e-5)
    assert m.graph().nodes[0].attrs["coordinate_transformation_mode"] == "output_half_pixel"


def test_roi_align_symbolic_and_errors():
    x, rois, b = np.zeros((2, 3, 8, 8), np.float32), np.zeros((5, 4), np.float32), np.zeros(5, np.int64)
    m = Model(
        "RoiAlign",
        [("x", x), ("r", rois), ("b", b)],
        output_height=7,
        output_width=7,
        input_shapes={"r": ["R", 4], "b": ["R"]},
    )
    assert m.out_types() == ["f32[R,3,7,7]"]
    with pytest.raises(ShapeError, match="num_rois, 4"):
        Model("RoiAlign", [("x", x), ("r", np.zeros((5, 5), np.float32)), ("b", b)]).graph()
    with pytest.raises(ShapeError, match="one index per roi"):
        Model("RoiAlign", [("x", x), ("r", rois), ("b", np.zeros(4, np.int64))]).graph()
    with pytest.raises(UnsupportedOpError, match="mode 'min'"):
        Model("RoiAlign", [("x", x), ("r", rois), ("b", b)], mode="min").graph()
    with pytest.raises(ExecutionError, match="batch index 7"):
        Model("RoiAlign", [("x", x), ("r", rois), ("b", np.full(5, 7, np.int64))]).einfuse()


# ---------------------------------------------------------------------------
# NonMaxSuppression


def _boxes(rng, batches, n, center):
    if center:
        xy = rng.uniform(0, 10, (batches, n, 2))
        wh = rng.uniform(0.5, 4, (batches, n, 2))
        return np.concatenate([xy, wh], axis=2).astype(np.float32)
    a = rng.uniform(0, 10, (batches, n, 2))
    b = a + rng.uniform(-4, 4, (batches, n, 2))  # some corners flipped
    return np.concatenate([a, b], axis=2).astype(np.float32)


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("score_threshold", [None, 0.3])
@pytest.mark.parametrize("max_out, iou", [(3, 0.5), (100, 0.2), (0, 0.5)])
def test_nms(rng, center, score_threshold, max_out, iou):
    boxes = _boxes(rng, 2, 30, center)
    scores = rng.random((2, 3, 30)).astype(np.float32)
    scores[0, 0, :5] = 0.5  # equal scores: the lower box index goes first
    operands = [("boxes", boxes), ("scores", scores), ("max", i64(max_out)), ("iou", np.float32([iou]))]
    if score_threshold is not None:
        operands.append(("st", np.float32([score_threshold])))
    got = Model("NonMaxSuppression", operands, center_point_box=center).check()[0]
    assert got.ndim == 2 and got.shape[1] == 3 and (got.shape[0] > 0) == (max_out > 0)


def test_nms_optional_operands_and_inference(rng):
    boxes, scores = _boxes(rng, 1, 8, 0), rng.random((1, 2, 8)).astype(np.float32)
    # Without max_output_boxes_per_class nothing is selected (its default is 0).
    got = Model("NonMaxSuppression", [("b", boxes), ("s", scores)]).check()[0]
    assert got.shape == (0, 3)
    m = Model("NonMaxSuppression", [("b", boxes), ("s", scores), ("@max", i64(4)), None, ("st", np.float32([0.2]))])
    m.check()
    (t,) = m.graph().outputs
    assert t.type.rank == 2 and t.type.shape[1] == 3 and isinstance(t.type.shape[0], sympy.Symbol)


def test_nms_errors():
    boxes, scores = np.zeros((1, 8, 4), np.float32), np.zeros((1, 2, 8), np.float32)
    with pytest.raises(ShapeError, match=r"boxes must have shape \(batches, boxes, 4\)"):
        Model("NonMaxSuppression", [("b", np.zeros((1, 8, 5), np.float32)), ("s", scores)]).graph()
    with pytest.raises(ShapeError, match="scores"):
        Model("NonMaxSuppression", [("b", boxes), ("s", np.zeros((1, 2, 7), np.float32))]).graph()
    with pytest.raises(ShapeError, match="max_output_boxes_per_class must be one i64"):
        Model("NonMaxSuppression", [("b", boxes), ("s", scores), ("m", i64(1, 2))]).graph()


# ---------------------------------------------------------------------------
# Unique


def _unique_input(rng, shape, dtype):
    x = rng.integers(0, 3, shape)
    return x.astype(dtype) if dtype != np.float32 else (x * 0.5 - 0.5).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int8])
@pytest.mark.parametrize("is_sorted", [0, 1])
@pytest.mark.parametrize("shape, axis", [((12,), None), ((3, 4), None), ((6, 2), 0), ((2, 6, 1), 1), ((3, 5), -1)])
def test_unique(rng, dtype, is_sorted, shape, axis):
    x = _unique_input(rng, shape, dtype)
    attrs = {"sorted": is_sorted} | ({} if axis is None else {"axis": axis})
    Model("Unique", [("x", x)], outputs=4, **attrs).check()


def test_unique_inference_and_constants():
    x = np.asarray([[1, 2], [1, 2], [3, 4]], np.int64)
    m = Model("Unique", [("x", x)], outputs=4, axis=0, input_shapes={"x": ["R", 2]})
    y, idx, inv, counts = (v.type for v in m.graph().outputs)
    u = idx.shape[0]
    assert isinstance(u, sympy.Symbol) and y.shape == (u, 2) and counts.shape == (u,)
    assert str(inv) == "i64[R]"
    # A constant input folds, with exact sizes.
    g = Model("Unique", [("@x", x)], outputs=4, axis=0).graph()
    assert [str(v.type) for v in g.outputs] == ["i64[2,2]", "i64[2]", "i64[3]", "i64[2]"]
    np.testing.assert_array_equal(g.const_value(g.outputs[2]), [0, 0, 1])
    with pytest.raises(ShapeError, match="out of range"):
        Model("Unique", [("x", x)], axis=2).graph()


# ---------------------------------------------------------------------------
# Det


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [(3, 3), (4, 2, 2), (2, 3, 5, 5), (0, 3, 3)])
def test_det(rng, dtype, shape):
    tol = 1e-4 if dtype == np.float32 else 1e-2
    Model("Det", [("x", rng.standard_normal(shape).astype(dtype))]).check(rtol=tol, atol=tol)


def test_det_f64(rng):
    # onnxruntime has no f64 Det. A triangular matrix's determinant is its diagonal's product;
    # swapping two rows flips its sign.
    tri = np.triu(rng.standard_normal((3, 4, 4)))
    x = tri[:, [1, 0, 2, 3]]
    got = Model("Det", [("x", x)]).einfuse()[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, -np.prod(np.diagonal(tri, axis1=1, axis2=2), axis=1), rtol=1e-12)


def test_det_symbolic_and_errors():
    m = Model("Det", [("x", np.zeros((2, 3, 3), np.float32))], input_shapes={"x": ["B", "M", "M"]})
    assert m.out_types() == ["f32[B]"]
    with pytest.raises(ShapeError, match="square"):
        Model("Det", [("x", np.zeros((2, 3, 4), np.float32))]).graph()
    with pytest.raises(ShapeError, match="float"):
        Model("Det", [("x", np.zeros((3, 3), np.int32))]).graph()


def test_center_point_box_is_a_bool_attribute():
    boxes, scores = np.zeros((1, 3, 4), np.float32), np.ones((1, 1, 3), np.float32)
    assert_bool_flags(
        Model("NonMaxSuppression", [("b", boxes), ("s", scores)], center_point_box=1), {"center_point_box": 1}
    )


# ---------------------------------------------------------------------------
# ONNX conformance cases

_CASE_OPS = {
    "GridSample", "AffineGrid", "Col2Im", "CenterCropPad", "MaxUnpool", "RoiAlign", "NonMaxSuppression", "Unique",
    "Det",
}  # fmt: skip

# Cases where einfuse follows onnxruntime and PyTorch rather than the expected output.
DEVIATIONS = {
    # The expected output scatters the indices into MaxPool's inferred 4x4 shape and then pads
    # to output_shape; onnxruntime and PyTorch read the indices in the output_shape (5x5)
    # layout, where MaxPool computed them.
    "test_maxunpool_export_with_output_shape",
}


CASES = conformance_cases(_CASE_OPS)


def _with_onnxruntime_outputs(case):
    """The case expecting onnxruntime's outputs, which differ from the case's own."""
    names = [i.name for i in case.model.graph.input]
    data_sets = []
    for inputs, expected in case.data_sets:
        want = run_ort(case.model, dict(zip(names, inputs)))
        assert any(not np.array_equal(w, e) for w, e in zip(want, expected))
        data_sets.append((inputs, want))
    return dataclasses.replace(case, data_sets=data_sets)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_conformance(case):
    if case.name in DEVIATIONS:
        case = _with_onnxruntime_outputs(case)
    check_conformance_case(case)


def test_conformance_cases_were_found():
    counts = {op: 0 for op in _CASE_OPS}
    for c in CASES:
        counts[c.model.graph.node[0].op_type] += 1
    assert counts == {
        "GridSample": 18, "AffineGrid": 4, "Col2Im": 5, "CenterCropPad": 6, "MaxUnpool": 2, "RoiAlign": 3,
        "NonMaxSuppression": 10, "Unique": 7, "Det": 2,
    }  # fmt: skip


def test_unsupported_variants_raise_clean_errors():
    x, grid = np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 2, 2, 2), np.float32)
    with pytest.raises(UnsupportedOpError, match="padding_mode 'wrap'"):
        Model("GridSample", [("x", x), ("g", grid)], padding_mode="wrap").graph()
    with pytest.raises(UnsupportedOpError, match="Col2Im"):
        # image_shape computed at run time: a clean refusal naming the node.
        Model("Col2Im", [("x", np.zeros((1, 5, 5), np.float32)), ("s", i64(5, 5)), ("@b", i64(1, 5))], opset=18).graph()
