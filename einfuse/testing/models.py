"""Real models for end-to-end tests, the demo and benchmarks.

Two sources, both available offline:

- the ONNX "light" model zoo shipped inside the onnx package
  (onnx/backend/test/data/light): ResNet-50, DenseNet-121, Inception v1/v2,
  ShuffleNet, SqueezeNet, VGG-19, AlexNet and ZFNet-512 with their real topology.
  Their weights were stripped to `ConstantOfShape(0.02)` nodes (plus a few real
  BatchNorm statistics), so the stored expected outputs are nearly constant
  (softmax of equal logits = 0.001). `randomize_weights` gives them seeded random
  weights of a sane scale, which makes a comparison against onnxruntime informative.
- BERT-like and GPT-2-like transformers built with `transformers` from a config
  (random weights, never downloaded), exported by `torch.onnx.export(dynamo=True)`
  at opset 18 with static shapes, cached on disk keyed by their arguments.

    model = load_light("light_resnet50")
    got = reference.run(convert_model(model), light_input(model))
    want = light_expected("light_resnet50")
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = [
    "LIGHT_MODELS",
    "bert_like",
    "expose_outputs",
    "gpt2_like",
    "light_expected",
    "light_input",
    "light_model_dir",
    "light_random_input",
    "light_tolerance",
    "load_light",
    "logits_names",
    "metadata",
    "model_cache_dir",
    "op_types",
    "ort_run",
    "randomize_weights",
    "token_inputs",
]

# -------------------------------------------------------------------- light zoo

# The nine model-zoo graphs that onnx ships (file stems in light_model_dir()).
LIGHT_MODELS: tuple[str, ...] = (
    "light_resnet50",
    "light_densenet121",
    "light_inception_v1",
    "light_inception_v2",
    "light_shufflenet",
    "light_squeezenet",
    "light_vgg19",
    "light_bvlc_alexnet",
    "light_zfnet512",
)


def light_model_dir() -> Path:
    """onnx/backend/test/data/light inside the installed onnx package."""
    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"


def _light_stem(name: str) -> str:
    stem = name if name.startswith("light_") else f"light_{name}"
    if stem not in LIGHT_MODELS:
        raise ValueError(f"unknown light model {name!r}; expected one of {LIGHT_MODELS}")
    return stem


def load_light(name: str) -> onnx.ModelProto:
    """The light model `name` ("light_resnet50" or "resnet50")."""
    return onnx.load(str(light_model_dir() / f"{_light_stem(name)}.onnx"))


def _data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    # IR-version-3 models also list every initializer as a graph input.
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    # Like the onnx runner: a dimension without a value becomes 1.
    return tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)


def light_input(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The inputs the onnx backend test runner feeds light models.

    Mirrors `Runner.generate_dummy_data(x, seed=0, random=False)` in
    onnx/backend/test/runner/__init__.py: arange(n) / n as float32, reshaped.
    """
    feeds = {}
    for vi in _data_inputs(model):
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ValueError(f"light model input {vi.name!r} is not float32")
        shape = _static_shape(vi)
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def light_random_input(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal float32 inputs (an image-like scale after normalisation)."""
    rng = np.random.default_rng(seed)
    return {vi.name: rng.standard_normal(_static_shape(vi)).astype(np.float32) for vi in _data_inputs(model)}


def light_expected(name: str) -> list[np.ndarray]:
    """The expected outputs stored beside the model (light_X_output_<i>.pb).

    The onnx runner copies these files when they exist and otherwise computes the
    outputs with onnx.reference.ReferenceEvaluator on `light_input`; we do the same.
    """
    stem = _light_stem(name)
    model = load_light(stem)
    outs = []
    for i in range(len(model.graph.output)):
        path = light_model_dir() / f"{stem}_output_{i}.pb"
        if not path.exists():
            from onnx.reference import ReferenceEvaluator

            return list(ReferenceEvaluator(model).run(None, light_input(model)))
        tensor = onnx.TensorProto()
        tensor.ParseFromString(path.read_bytes())
        outs.append(numpy_helper.to_array(tensor))
    return outs


@functools.cache
def _light_tolerances() -> dict[str, tuple[float, float]]:
    from onnx.backend.test.case.model import collect_testcases

    return {
        f"light_{case.model_name}": (float(case.rtol), float(case.atol))
        for case in collect_testcases()
        if case.kind == "real"
    }


def light_tolerance(name: str) -> tuple[float, float]:
    """(rtol, atol) the onnx backend tests use for this model
    (onnx/backend/test/case/model/__init__.py: 1e-3/1e-7, DenseNet 2e-3/1e-7)."""
    return _light_tolerances().get(_light_stem(name), (1e-3, 1e-7))


# ------------------------------------------------------------ random weights

# Gain of a BatchNorm that ends a residual branch: 0.5 keeps the logits of the light
# ResNet-50 and ShuffleNet at a standard deviation of 3 to 20 (1/sqrt(2) left 30 to 70).
RESIDUAL_BRANCH_GAIN = 0.5

# Ops a weight may flow through unchanged on its way to the op that uses it
# (the light DenseNet/Inception-v2 unsqueeze their BatchNorm scale and shift).
_PASSTHROUGH = {"Unsqueeze", "Reshape", "Identity", "Transpose", "Cast", "Flatten", "Squeeze"}

# Ops whose output is still (a rearrangement of) non-negative ReLU outputs.
_KEEPS_RELU = {
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
    "Reshape",
    "Transpose",
    "Flatten",
    "Dropout",
    "Identity",
    "LRN",
    "Squeeze",
    "Unsqueeze",
}


def _role(name: str, uses: Mapping[str, list[tuple[onnx.NodeProto, int]]]) -> tuple[onnx.NodeProto, int, str] | None:
    """The first (node, operand index, tensor name there) that uses `name` as a
    weight, looking through reshapes; None when nothing does."""
    seen = set()
    frontier = [name]
    while frontier:
        current = frontier.pop()
        if current in seen:
            continue
        seen.add(current)
        for node, i in uses.get(current, []):
            if node.op_type in _PASSTHROUGH and i == 0:
                frontier.extend(o for o in node.output if o)
            else:
                return node, i, current
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _fan_in(node: onnx.NodeProto, i: int, shape: tuple[int, ...]) -> int | None:
    """Inputs per output of the weight operand i of `node` (shape as `node` sees it)."""
    op = node.op_type
    if op == "Conv" and i == 1 and len(shape) >= 2:
        return int(np.prod(shape[1:]))  # (M, C/group, k...)
    if op == "ConvTranspose" and i == 1 and len(shape) >= 2:
        return max(1, shape[0] // int(_attr(node, "group", 1))) * int(np.prod(shape[2:]))
    if op == "Gemm" and i == 1 and len(shape) == 2:
        return shape[1] if _attr(node, "transB", 0) else shape[0]
    if op == "Gemm" and i == 0 and len(shape) == 2:
        return shape[0] if _attr(node, "transA", 0) else shape[1]
    if op == "MatMul" and i == 1 and len(shape) >= 2:
        return shape[-2]
    if op == "MatMul" and i == 0 and len(shape) >= 2:
        return shape[-1]
    return None


def _unit_gain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # Uniform in [0.75, 1.25] divided by sqrt(E[u^2]) = sqrt(49/48): E[out^2] = 1, so a
    # chain of a hundred channel scales neither grows nor shrinks on average.
    return rng.uniform(0.75, 1.25, shape) / math.sqrt(49 / 48)


def _random_weight(
    node: onnx.NodeProto,
    i: int,
    shape: tuple[int, ...],
    seen_shape: tuple[int, ...],
    after_relu: bool,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """A random value of `shape` for operand i of `node` (which sees it with shape
    `seen_shape`, after any reshape), or None to keep the original.

    Scales keep activations O(1) through deep ReLU networks: He-uniform weights
    (std sqrt(2 / fan_in) when the data operand comes out of a ReLU, which halves
    its mean square, else sqrt(1 / fan_in)); small biases, shifts and running means
    (std 0.1); positive channel scales and BatchNorm variances (no NaN, no sign
    flips), the scales with unit mean square; `randomize_weights` then ties
    BatchNorm scales to their variances.
    """
    op = node.op_type
    fan_in = _fan_in(node, i, seen_shape)
    if fan_in is not None:
        gain = 2.0 if after_relu else 1.0
        # Uniform with that std: drawing float32 uniforms is 4x faster than normals,
        # which matters for VGG-19's 140 M weights.
        bound = np.float32(math.sqrt(3.0 * gain / max(fan_in, 1)))
        w = rng.random(shape, dtype=np.float32)
        w *= 2 * bound
        w -= bound
        return w
    if op in ("Conv", "ConvTranspose", "Gemm") and i == 2:
        return _small(rng, shape)
    if op == "BatchNormalization":
        if i in (2, 3):
            return _small(rng, shape)
        if i == 1:
            return _unit_gain(rng, shape)
        if i == 4:
            return rng.uniform(0.5, 1.5, shape)
        return None
    if op in ("LayerNormalization", "InstanceNormalization", "GroupNormalization"):
        return {1: _unit_gain, 2: _small}[i](rng, shape) if i in (1, 2) else None
    if op == "PRelu" and i == 1:
        return rng.uniform(0.0, 0.3, shape)
    if op == "Mul":
        return _unit_gain(rng, shape)
    if op in ("Add", "Sum", "Sub"):
        return _small(rng, shape)
    return None


def _small(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape) * 0.1


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of `model` whose float weights are seeded random values of a sensible scale.

    `ConstantOfShape` nodes with a constant shape and a float value (how the light
    zoo stores its stripped weights) become initializers. Float weights with at
    least two elements are redrawn by the role of the op that uses them (see
    `_random_weight`); anything else (scalars, shapes, resize scales, weights of ops
    not listed) keeps its value, so the graph's meaning is unchanged apart from the
    weight values. Then two adjustments keep deep networks at a sane scale: each
    BatchNorm scale is multiplied by sqrt(variance) (gain about 1), and a BatchNorm
    that ends a residual branch gets gain RESIDUAL_BRANCH_GAIN.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}

    # Every float weight: name -> (shape, dtype), plus the fill value of ConstantOfShape ones.
    weights: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    fills: dict[str, np.ndarray] = {}
    nodes = []
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx") and node.input[0] in inits:
            value = _attr(node, "value", None)
            fill = numpy_helper.to_array(value).reshape(-1)[:1] if value is not None else np.zeros(1, np.float32)
            if np.issubdtype(fill.dtype, np.floating):
                shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
                weights[node.output[0]] = (shape, fill.dtype)
                fills[node.output[0]] = fill
                continue
        nodes.append(node)
    for t in g.initializer:
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        if np.issubdtype(dtype, np.floating) and int(np.prod(t.dims)) >= 2:
            weights[t.name] = (tuple(int(d) for d in t.dims), dtype)

    uses = _consumers_of(nodes)
    producer = {o: node for node in nodes for o in node.output}
    shapes = _tensor_shapes(model, nodes, weights)

    # 1. Redraw by role; one generator, visited in a fixed order (the model's).
    rng = np.random.default_rng(seed)
    new: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in weights.items():
        role = _role(name, uses)
        if role is None:
            continue
        node, i, seen_as = role
        relu = i != 0 and _after_relu(node.input[0], producer)
        value = _random_weight(node, i, shape, shapes.get(seen_as, shape), relu, rng)
        if value is not None:
            new[name] = value.astype(dtype, copy=False)

    for node in nodes:
        if node.op_type != "BatchNormalization" or not all(x in new for x in node.input[1:5]):
            continue
        # 2. BatchNorm gain = scale / sqrt(var): tie the scale to the variance.
        new[node.input[1]] = new[node.input[1]] * np.sqrt(new[node.input[4]])
        # 3. Residual sums add their operands' variances (fifty blocks: 2**16 growth),
        # so the BatchNorms that end a branch get a smaller gain.
        if any(_is_residual_sum(user, producer) for user, _ in uses.get(node.output[0], [])):
            for j in (1, 2):
                new[node.input[j]] = new[node.input[j]] * np.asarray(RESIDUAL_BRANCH_GAIN, new[node.input[j]].dtype)

    # 4. Assemble the copy: kept initializers as they were, new and materialised ones.
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g2 = out.graph
    del g2.node[:]
    g2.node.extend(nodes)
    used = {x for node in nodes for x in node.input} | {o.name for o in g2.output}
    tensors = []
    for t in g.initializer:
        if t.name not in used:
            continue  # the shape operand of a materialised ConstantOfShape
        tensors.append(numpy_helper.from_array(new[t.name], t.name) if t.name in new else t)
    for name, fill in fills.items():
        shape, dtype = weights[name]
        value = new[name] if name in new else np.full(shape, fill[0], dtype)
        tensors.append(numpy_helper.from_array(value, name))
    del g2.initializer[:]
    g2.initializer.extend(tensors)
    inputs = [vi for vi in g2.input if vi.name in used or vi.name not in inits]
    if out.ir_version < 4:
        # Before IR 4 every initializer must also be a graph input.
        for name in fills:
            shape, dtype = weights[name]
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape))
    del g2.input[:]
    g2.input.extend(inputs)
    return out


def _consumers_of(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in nodes:
        for i, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append((node, i))
    return uses


def _is_residual_sum(node: onnx.NodeProto, producer: Mapping[str, onnx.NodeProto]) -> bool:
    """An Add/Sum of two or more computed tensors (not a bias add)."""
    return node.op_type in ("Add", "Sum") and sum(1 for x in node.input if x in producer) >= 2


def _after_relu(name: str, producer: Mapping[str, onnx.NodeProto]) -> bool:
    """Whether tensor `name` is (a rearrangement of) ReLU outputs."""
    node = producer.get(name)
    for _ in range(64):  # a chain of pools and reshapes is short; the bound guards cycles
        if node is None:
            return False
        if node.op_type == "Relu":
            return True
        if node.op_type not in _KEEPS_RELU or not node.input:
            return False
        node = producer.get(node.input[0])
    return False


def _tensor_shapes(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], weights: Mapping[str, tuple[tuple[int, ...], np.dtype]]
) -> dict[str, tuple[int, ...]]:
    """Static shapes of the model's tensors from ONNX shape inference (best effort:
    only a hint for fan-in), run on a copy whose float weights are declared inputs
    rather than data, so that large models are not copied."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = max(model.ir_version, 4)
    skeleton.opset_import.extend(model.opset_import)
    g = skeleton.graph
    g.node.extend(nodes)
    g.initializer.extend(t for t in model.graph.initializer if t.name not in weights)
    g.input.extend(vi for vi in model.graph.input if vi.name not in weights)
    for name, (shape, dtype) in weights.items():
        g.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape))
    g.output.extend(model.graph.output)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def logits_names(model: onnx.ModelProto) -> list[str]:
    """Inputs of the Softmax nodes that produce graph outputs (the logits).

    Comparing logits as well as probabilities keeps a test informative when the
    softmax saturates (one-hot) or flattens (uniform)."""
    outputs = {o.name for o in model.graph.output}
    return [n.input[0] for n in model.graph.node if n.op_type == "Softmax" and n.output[0] in outputs]


def expose_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` with the intermediate tensors `names` added as graph outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    return out


# --------------------------------------------------------------- transformers

# Bump when the export recipe changes, so stale cache entries are never reused.
_RECIPE_VERSION = 1
# At opset 17 the exporter's down-conversion leaves Split's opset-18 `num_outputs`
# attribute in GPT-2's graph, which onnxruntime refuses.
_OPSET = 18


def model_cache_dir() -> Path:
    """Where exported models are cached: $EINFUSE_MODEL_CACHE or <tmp>/einfuse-models."""
    env = os.environ.get("EINFUSE_MODEL_CACHE")
    path = Path(env) if env else Path(tempfile.gettempdir()) / "einfuse-models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _versions() -> dict[str, str]:
    import onnxscript
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnxscript": onnxscript.__version__}


def _cached(kind: str, params: dict, build) -> onnx.ModelProto:
    """Exports through `build()` once per (kind, params, library versions)."""
    key_src = json.dumps({"kind": kind, "params": params, "recipe": _RECIPE_VERSION, **_versions()}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    path = model_cache_dir() / f"{kind}-{key}.onnx"
    data = _memory_cache.get(path)
    if data is None and path.exists():
        data = path.read_bytes()
    if data is None:
        data = build().SerializeToString()
        # Write then rename: parallel test workers never read a half-written file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    _memory_cache[path] = data
    return onnx.load_from_string(data)


_memory_cache: dict[Path, bytes] = {}


def _perturb_small_params(module, std_bias: float = 0.02, std_gain: float = 0.1) -> None:
    """transformers initialises biases to 0 and norm gains to 1; randomise them so the
    test sees them (and the exporter cannot merge them into one shared constant)."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim != 1:
                continue
            if name.endswith("bias"):
                p.copy_(torch.randn_like(p) * std_bias)
            elif name.endswith("weight"):  # LayerNorm gains
                p.copy_(1.0 + torch.randn_like(p) * std_gain)


def _export(module, args: tuple, input_names: list[str], output_names: list[str]) -> onnx.ModelProto:
    """torch.onnx.export with the dynamo exporter (the legacy TorchScript exporter
    fails on transformers 5 models), static shapes, onnxscript's optimizer on."""
    import torch

    quiet = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        # The exporter prints progress to stdout; keep test output readable.
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                input_names=input_names,
                output_names=output_names,
                opset_version=_OPSET,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    return program.model_proto


def _set_metadata(model: onnx.ModelProto, **items) -> None:
    for key, value in items.items():
        entry = model.metadata_props.add()
        entry.key = f"einfuse.{key}"
        entry.value = str(value)


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The einfuse.* metadata this module stores in exported models."""
    return {p.key[len("einfuse.") :]: p.value for p in model.metadata_props if p.key.startswith("einfuse.")}


def _exporter_label() -> str:
    v = _versions()
    return f"torch.onnx.export(dynamo=True, opset={_OPSET}) torch {v['torch']}, onnxscript {v['onnxscript']}"


def bert_like(
    seq: int = 128,
    hidden: int = 384,
    layers: int = 6,
    heads: int = 12,
    batch: int = 1,
    seed: int = 0,
    vocab: int = 1000,
) -> onnx.ModelProto:
    """A BERT encoder (BertModel with pooler) with random weights, exported with
    static shapes. Inputs: input_ids, attention_mask (int64 [batch, seq]).
    Outputs: last_hidden_state [batch, seq, hidden], pooler_output [batch, hidden]."""
    params = {"seq": seq, "hidden": hidden, "layers": layers, "heads": heads, "batch": batch, "seed": seed}
    params["vocab"] = vocab

    def build() -> onnx.ModelProto:
        import torch
        from transformers import BertConfig, BertModel

        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=seq,
            # std 1/sqrt(hidden) keeps q.k/sqrt(d) of order 1, so attention is not flat.
            initializer_range=1.0 / math.sqrt(hidden),
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation="eager",  # sdpa exports extra IsNaN/Where guards
        )
        model = BertModel(config).eval()
        _perturb_small_params(model)
        ids = torch.zeros(batch, seq, dtype=torch.int64)
        # An example mask with padding, so no tracing shortcut for an all-ones mask applies.
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[:, seq - max(1, seq // 4) :] = 0
        proto = _export(model, (ids, mask), ["input_ids", "attention_mask"], ["last_hidden_state", "pooler_output"])
        _set_metadata(proto, vocab_size=vocab, exporter=_exporter_label(), source="transformers.BertModel")
        return proto

    return _cached("bert", params, build)


def gpt2_like(
    seq: int = 128,
    hidden: int = 384,
    layers: int = 6,
    heads: int = 12,
    batch: int = 1,
    seed: int = 0,
    vocab: int = 1000,
) -> onnx.ModelProto:
    """A GPT-2 decoder with LM head (GPT2LMHeadModel, causal mask, no KV cache) with
    random weights, exported with static shapes. Input: input_ids (int64
    [batch, seq]). Output: logits [batch, seq, vocab]."""
    params = {"seq": seq, "hidden": hidden, "layers": layers, "heads": heads, "batch": batch, "seed": seed}
    params["vocab"] = vocab

    def build() -> onnx.ModelProto:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=seq,
            initializer_range=1.0 / math.sqrt(hidden),
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            use_cache=False,
            bos_token_id=vocab - 1,  # the defaults (50256) lie outside a small vocabulary
            eos_token_id=vocab - 1,
            attn_implementation="eager",
        )
        model = GPT2LMHeadModel(config).eval()
        _perturb_small_params(model)
        ids = torch.zeros(batch, seq, dtype=torch.int64)
        proto = _export(model, (ids,), ["input_ids"], ["logits"])
        _set_metadata(proto, vocab_size=vocab, exporter=_exporter_label(), source="transformers.GPT2LMHeadModel")
        return proto

    return _cached("gpt2", params, build)


def token_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids (and an attention mask whose rows end in padding zeros) for a
    model made by bert_like / gpt2_like."""
    vocab = int(metadata(model).get("vocab_size", 1000))
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in _data_inputs(model):
        batch, seq = _static_shape(vi)
        if vi.name == "input_ids":
            feeds[vi.name] = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
        elif vi.name == "attention_mask":
            mask = np.ones((batch, seq), dtype=np.int64)
            for b in range(batch):
                # Row b keeps seq - (b+1)*seq/(4*batch) tokens: always some padding.
                pad = max(1, ((b + 1) * seq) // (4 * batch))
                mask[b, seq - pad :] = 0
            feeds[vi.name] = mask
        else:
            raise ValueError(f"unexpected model input {vi.name!r}")
    return feeds


# ------------------------------------------------------------------- helpers


def op_types(model: onnx.ModelProto) -> set[str]:
    """The op types a model uses ("domain.Op" outside the default domain)."""
    return {n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in model.graph.node}


def ort_run(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], *, threads: int = 0) -> dict[str, np.ndarray]:
    """Runs `model` with onnxruntime on the CPU; returns {output name: array}.

    threads=0 lets onnxruntime choose; tests pass 1 to share the machine politely."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: IR-3 models warn about initializers listed as inputs
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs))))
