"""The torch.export frontend: small nn.Modules exported, imported, run on the reference
evaluator and compared with torch's own output on the same seeded inputs.

Exporting costs about a second per program, so each program is exported once per module
(module-scoped fixtures) and shared by the tests that read it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from einfuse.codegen import reference
from einfuse.errors import ModelLoadError, UnsupportedOpError
from einfuse.frontends.torch_export import import_torch
from einfuse.ir.verifier import verify

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

# float32 on both sides; different summation orders in <= 64-term dot products and a
# float32 erf/tanh keep differences near 1e-6. A wrong scale, mask or missing bias moves
# values by 1e-2 or more.
RTOL = 1e-4
ATOL = 1e-5


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights AND batch-norm statistics (fresh ones are 0/1: a slip in how
    they are read would go unseen)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module.eval()


class _Case:
    """An exported module, its einfuse graph and the example inputs."""

    def __init__(self, module: nn.Module, args: tuple, dynamic_shapes=None):
        self.module = module
        self.args = args
        with torch.no_grad():
            self.ep = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
        self.graph = import_torch(self.ep)
        verify(self.graph)
        self.input_names = [v.name for v in self.graph.inputs]

    def feeds(self, args=None) -> dict:
        return {n: a.numpy() for n, a in zip(self.input_names, args or self.args)}

    def check(self, args=None, rtol=RTOL, atol=ATOL, graph=None) -> dict:
        args = args or self.args
        with torch.no_grad():
            want = self.module(*args)
        want = list(_flatten(want))
        got = reference.run(graph or self.graph, self.feeds(args))
        assert len(got) == len(want)
        for (name, g), w in zip(got.items(), want):
            w = w.numpy()
            assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.dtype, w.shape)
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"output {name!r}")
        return got

    def ops(self) -> list[str]:
        return [n.op for n in self.graph.nodes]


def _flatten(x):
    if isinstance(x, (tuple, list)):
        for y in x:
            yield from _flatten(y)
    else:
        yield x


def _randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 5, bias=False)

    def forward(self, x):
        h = F.gelu(self.fc1(x))
        h = F.gelu(self.fc2(h), approximate="tanh")
        h = F.silu(h) * 0.5 - 1.0
        left, right = h.chunk(2, dim=-1)  # split
        h = torch.cat([F.leaky_relu(left, 0.2), right], dim=-1)
        return torch.log_softmax(self.fc3(h), dim=-1), torch.sigmoid(h).mean(dim=-1, keepdim=True)


class ConvBlock(nn.Module):
    """conv-bn-relu, maxpool, a grouped/strided/dilated conv, conv1d, a transposed conv,
    avg pool with padding, adaptive pooling to 1x1 and to an even 2x2 grid."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.conv1d = nn.Conv1d(4, 6, 3, padding=1)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)  # [N, 8, 8, 8]
        g = torch.tanh(self.grouped(h))  # [N, 8, 4, 4]
        u = self.up(g)  # [N, 4, 8, 8]
        a = F.avg_pool2d(u, 3, stride=2, padding=1)  # count_include_pad=True
        pooled = F.adaptive_avg_pool2d(h, 1).flatten(1)
        grid = F.adaptive_avg_pool2d(u, 2)
        seq = self.conv1d(u.flatten(2))  # [N, 6, 64]
        return pooled, grid, a, seq.amax(dim=2)


class EncoderLayer(nn.Module):
    """A transformer encoder layer by hand: pre-LN, fused QKV projection, SDPA, MLP."""

    def __init__(self, d=32, heads=4, kv_heads=4, mode="plain"):
        super().__init__()
        self.h, self.kvh, self.dh, self.mode = heads, kv_heads, d // heads, mode
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d, eps=1e-6)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * kv_heads * self.dh)
        self.o = nn.Linear(d, d)
        self.ff1 = nn.Linear(d, 4 * d)
        self.ff2 = nn.Linear(4 * d, d)

    def forward(self, x, mask=None):
        b, s, d = x.shape
        h = self.ln1(x)
        q = self.q(h).view(b, s, self.h, self.dh).transpose(1, 2)
        k, v = self.kv(h).view(b, s, 2, self.kvh, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        kw = {}
        if self.mode == "causal":
            kw["is_causal"] = True
        if self.kvh != self.h:
            kw["enable_gqa"] = True
            kw["scale"] = 0.3
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class BasicBlock(nn.Module):
    """The ResNet basic block with a downsampling shortcut (torchvision's, without torchvision)."""

    def __init__(self, cin=4, cout=8):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.down(x))


class TokenModel(nn.Module):
    """Embedding + cumsum, with the index/shape ops token models use: select, slice,
    index_select, cat, where on a comparison, a dtype change, arange and full."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.register_buffer("pick", torch.tensor([3, 0, 2]))
        self.register_buffer("bias", torch.linspace(-1, 1, 8), persistent=False)  # in ep.constants
        self.scale = torch.tensor([0.5, -2.0, 1.5])  # a plain attribute: a lifted tensor constant

    def forward(self, ids):
        e = self.emb(ids)  # [B, S, 8]
        c = torch.cumsum(e, dim=1)
        first = c[:, 0]  # select
        tail = c[:, 1:, ::2]  # slices with a step
        picked = torch.index_select(e, 2, self.pick)
        pos = torch.arange(ids.shape[1], dtype=torch.float32)
        counts = torch.cumsum((ids > 9).to(torch.int32), dim=1)  # int cumsum is i64 in torch
        gated = torch.where(ids.unsqueeze(-1) % 2 == 0, e, torch.full((1,), -1.0))
        both = torch.cat([first.unsqueeze(1), tail.sum(dim=2, keepdim=True).transpose(1, 2)], dim=2)
        return both, picked * self.scale + pos.view(1, -1, 1), counts, (gated + self.bias).clamp(min=-0.5)


class Extras(nn.Module):
    """The other ops conv nets and decoders use: group norm, constant and reflect padding,
    argmax, max over a dim, hard activations, softplus/mish, elu, index with a tensor,
    nearest and bilinear upsampling, variance."""

    def __init__(self):
        super().__init__()
        self.gn = nn.GroupNorm(2, 4)
        self.register_buffer("idx", torch.tensor([2, 0, 2]))

    def forward(self, x):  # [2, 4, 3, 5]
        h = self.gn(x)
        best = h.max(dim=-1)
        acts = F.hardswish(h) + F.hardsigmoid(h) + F.softplus(h) + F.mish(h) + F.elu(h, 0.7) + torch.log1p(h.abs())
        return (
            F.pad(h, (1, 2, 0, 1), value=0.5),
            F.pad(h, (1, 1, 1, 1), mode="reflect"),
            torch.argmax(h, dim=1),
            best.values,
            best.indices,
            acts,
            h[:, self.idx],
            ~(h > 0),
            F.interpolate(h, scale_factor=2, mode="nearest"),
            F.interpolate(h, size=(6, 10), mode="bilinear", align_corners=False),
            torch.var_mean(h, dim=(1, 3)),
        )


class Dynamic(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):  # x: [B, S, 6]
        b = x.shape[0]
        h = torch.relu(self.fc(x))
        tail = x[:, 1:].sum(dim=1)  # a slice of a symbolic dim
        return h.reshape(b, -1).softmax(dim=-1), h.permute(1, 0, 2).flatten(1), tail


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mlp():
    return _Case(_randomize(MLP(), 1), (_randn(3, 12),))


@pytest.fixture(scope="module")
def conv_block():
    return _Case(_randomize(ConvBlock(), 2), (_randn(2, 3, 16, 16),))


@pytest.fixture(scope="module")
def basic_block():
    return _Case(_randomize(BasicBlock(), 3), (_randn(2, 4, 10, 10),))


@pytest.fixture(scope="module")
def token_model():
    ids = torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(4))
    return _Case(_randomize(TokenModel(), 4), (ids,))


@pytest.fixture(scope="module")
def extras():
    return _Case(_randomize(Extras(), 10), (_randn(2, 4, 3, 5, seed=11),))


@pytest.fixture(scope="module")
def dynamic():
    b, s = Dim("batch"), Dim("seq", min=3)
    return _Case(_randomize(Dynamic(), 5), (_randn(3, 5, 6),), dynamic_shapes=({0: b, 1: s},))


ENCODER_VARIANTS = ["plain", "causal", "float_mask", "bool_mask", "gqa"]


@pytest.fixture(scope="module", params=ENCODER_VARIANTS)
def encoder(request):
    mode = request.param
    b, s, d = 2, 6, 32
    module = EncoderLayer(d=d, kv_heads=2 if mode == "gqa" else 4, mode=mode)
    args = (_randn(b, s, d, seed=6),)
    if mode == "float_mask":
        args += (_randn(b, 1, s, s, seed=7),)
    if mode == "bool_mask":
        keep = torch.rand(s, s, generator=torch.Generator().manual_seed(8)) > 0.4
        keep |= torch.eye(s, dtype=torch.bool)  # every row sees a key (torch gives NaN otherwise)
        args += (keep,)
    return _Case(_randomize(module, 9), args)


# ----------------------------------------------------------------------------- numbers


def test_mlp(mlp):
    mlp.check()
    ops = mlp.ops()
    assert ops.count("gelu") == 2 and "log_softmax" in ops and "reduce_mean" in ops
    assert {n.attrs["approximate"] for n in mlp.graph.nodes if n.op == "gelu"} == {"none", "tanh"}
    assert "split" in ops and "leaky_relu" in ops


def test_conv_block(conv_block):
    conv_block.check()
    ops = conv_block.ops()
    for op in ("conv", "conv_transpose", "batch_norm", "max_pool", "average_pool"):
        assert op in ops, op
    grouped = [n for n in conv_block.graph.nodes if n.op == "conv" and n.attrs["group"] == 4]
    assert len(grouped) == 1 and grouped[0].attrs["dilations"] == (2, 2) and grouped[0].attrs["strides"] == (2, 2)


def test_basic_block(basic_block):
    basic_block.check()
    assert basic_block.ops().count("batch_norm") == 3 and basic_block.ops().count("conv") == 3


def test_token_model(token_model):
    token_model.check()
    assert "gather" in token_model.ops() and "cumsum" in token_model.ops()
    # the same program on other ids (the graph does not depend on the example's values)
    other = torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(40))
    token_model.check((other,))


def test_extras(extras):
    extras.check()
    ops = set(extras.ops())
    for op in ("group_norm", "pad", "argmax", "reduce_max", "elu", "gather", "resize", "not"):
        assert op in ops, op


def test_encoder_layer(encoder):
    encoder.check()


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_encoder_layer_16_bit(dtype, tol):
    """f16/bf16 weights and activations keep their dtype through the import; tolerances
    are a few ulps of the output's magnitude (~25)."""
    module = _randomize(EncoderLayer(mode="causal"), 9).to(dtype)
    x = _randn(2, 6, 32, seed=6).to(dtype)
    g = import_torch(module, (x,))
    assert {v.dtype for v in g.inputs} | {v.dtype for v in g.outputs} == {g.inputs[0].dtype}
    assert str(g.inputs[0].dtype) == {torch.float16: "f16", torch.bfloat16: "bf16"}[dtype]
    with torch.no_grad():
        want = module(x).float().numpy()
    (got,) = reference.run(g, {"x": x.float().numpy().astype(g.inputs[0].dtype.np)}).values()
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=tol, atol=tol * np.abs(want).max())


def test_sdpa_is_one_attention_node(encoder):
    ops = encoder.ops()
    assert ops.count("attention") == 1
    assert "softmax" not in ops
    (node,) = [n for n in encoder.graph.nodes if n.op == "attention"]
    mode = encoder.module.mode
    assert node.attrs["is_causal"] == (mode == "causal")
    want_scale = 0.3 if mode == "gqa" else 1 / math.sqrt(8)
    assert node.attrs["scale"] == pytest.approx(want_scale)
    q, k = node.inputs[:2]
    assert q.shape[1] == 4 and k.shape[1] == (2 if mode == "gqa" else 4)
    if mode in ("float_mask", "bool_mask"):
        assert node.inputs[3].dtype.value == ("bool" if mode == "bool_mask" else "f32")
    else:
        assert len(node.inputs) == 3


def test_flash_attention_for_cpu_variant():
    """A program decomposed elsewhere may carry SDPA as the CPU flash op (two outputs):
    it still becomes one attention node."""

    class Attn(nn.Module):
        def forward(self, q, k, v):
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=True)[0]

    q, k, v = (_randn(1, 2, 5, 8, seed=i) for i in range(3))
    case = _Case(Attn(), (q, k, v))
    assert case.ops() == ["attention"]
    case.check()


def test_sdpa_3d_causal_is_top_left_aligned():
    """3-D q/k/v (one head per batch entry) and fewer queries than keys: torch's causal
    mask is top-left aligned (query i sees keys 0..i), and so is the attention node."""

    class Attn(nn.Module):
        def forward(self, q, k, v, flag: bool = True):
            return F.scaled_dot_product_attention(q, k, v, is_causal=flag)

    q, k, v = _randn(2, 3, 8, seed=1), _randn(2, 5, 8, seed=2), _randn(2, 5, 4, seed=3)
    case = _Case(Attn(), (q, k, v, True))
    assert [v.name for v in case.graph.inputs] == ["q", "k", "v"]  # the flag is baked in
    (node,) = [n for n in case.graph.nodes if n.op == "attention"]
    assert node.attrs["is_causal"] is True
    case.check()


# ----------------------------------------------------------------------------- symbols


def test_dynamic_dims_are_symbols(dynamic):
    text = str(dynamic.graph)
    assert "%x: f32[batch,seq,6]" in text
    assert "f32[batch,4*seq]" in text  # the softmax output: a product of symbols
    dynamic.check()
    dynamic.check((_randn(5, 4, 6, seed=1),))  # other sizes, same graph


def test_module_with_dynamic_shapes_is_exported_here():
    b = Dim("n")
    g = import_torch(_randomize(Dynamic(), 5), (_randn(2, 3, 6),), dynamic_shapes={"x": {0: b}})
    assert str(g.inputs[0].type) == "f32[n,3,6]"
    x = _randn(4, 3, 6, seed=2)
    with torch.no_grad():
        want = Dynamic.forward(_randomize(Dynamic(), 5), x)
    got = list(reference.run(g, {"x": x.numpy()}).values())
    np.testing.assert_allclose(got[0], want[0].numpy(), rtol=RTOL, atol=ATOL)


def test_output_names_come_from_the_signature(mlp):
    names = [s.arg.name for s in mlp.ep.graph_signature.output_specs]
    assert [v.name for v in mlp.graph.outputs] == names
    assert [v.name for v in mlp.graph.inputs] == ["x"]
    # weights keep their state-dict names (a linear's weight is stored transposed, once)
    assert {"fc1.weight.T", "fc1.bias", "fc3.weight.T"} <= set(mlp.graph.constants)
    assert "fc3.bias" not in mlp.graph.constants


# ----------------------------------------------------------------------------- passes


def test_optimize_keeps_the_numbers(basic_block):
    from einfuse.passes.pipeline import optimize

    before = reference.run(basic_block.graph, basic_block.feeds())
    after_graph = optimize(basic_block.graph.copy(), verify=True)
    assert any(n.op == "fused" for n in after_graph.nodes)
    after = reference.run(after_graph, basic_block.feeds())
    for (name, a), b in zip(after.items(), before.values()):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=name)
    basic_block.check(graph=after_graph)


def test_compile_imported_graph_for_llvm(basic_block):
    """End to end: einfuse.compile takes the imported Graph; the TVM kernels match torch."""
    import einfuse

    model = einfuse.compile(basic_block.graph, target="llvm", progress=False, cache=False)
    assert not model.report.fallbacks
    (got,) = model(**basic_block.feeds()).values()
    with torch.no_grad():
        want = basic_block.module(*basic_block.args).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("encoder", ["causal", "gqa"], indirect=True)
def test_compile_exported_program_runs_sdpa_on_the_attention_kernel(encoder, tmp_path):
    """einfuse.compile takes the ExportedProgram itself; its SDPA becomes a 1-pass attention
    cascade that the TVM backend compiles (no fallback), matching torch."""
    import einfuse

    model = einfuse.compile(encoder.ep, target="llvm", progress=False, cache_dir=tmp_path)
    assert not model.report.fallbacks, str(model.report)
    ex = model.executable
    ops = [tuple(ex.kernels[ln.kernel].info["ops"]) for ln in ex.launches]
    assert ("einsum_cascade",) in ops, ops
    got = list(model(**encoder.feeds()).values())
    with torch.no_grad():
        want = [w.numpy() for w in _flatten(encoder.module(*encoder.args))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("encoder", ["causal"], indirect=True)
def test_optimize_keeps_the_encoder_numbers(encoder):
    from einfuse.passes.pipeline import optimize

    after_graph = optimize(encoder.graph.copy(), verify=True)
    encoder.check(graph=after_graph)


# ----------------------------------------------------------------------------- errors


def test_unsupported_ops_are_listed_together():
    class Bad(nn.Module):
        def forward(self, x):
            top = torch.topk(x, 2, dim=1).values
            s = torch.sort(x, dim=1).values
            return top, s, torch.relu(x)

    ep = torch.export.export(Bad(), (_randn(3, 5),))
    with pytest.raises(UnsupportedOpError, match=r"2 unsupported op\(s\).*aten\.sort.*'sort'.*aten\.topk.*'topk'"):
        import_torch(ep)


def test_view_splitting_a_merged_symbolic_dim_is_refused():
    """(B*S, 6) -> (B, S, 6) needs two symbolic sizes in one reshape target, which einfuse's
    int-only reshape attribute cannot spell (0 copies a dim in place, one -1 is inferred)."""

    class Unflatten(nn.Module):
        def forward(self, x):
            y = x.reshape(-1, 6) * 2.0
            return y.view(x.shape[0], x.shape[1], 6)

    ep = torch.export.export(Unflatten(), (_randn(2, 3, 6),), dynamic_shapes=({0: Dim("b"), 1: Dim("s")},))
    with pytest.raises(UnsupportedOpError, match=r"aten\.view.*'view_1'.*view to \[b, s, 6\]"):
        import_torch(ep)


def test_dropout_in_sdpa_is_refused():
    class Drop(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=0.1)

    q = _randn(1, 2, 4, 8)
    with pytest.raises(UnsupportedOpError, match=r"scaled_dot_product_attention.*dropout_p=0.1"):
        import_torch(Drop(), (q, q, q))


def test_training_batch_norm_is_refused():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    with pytest.raises(
        UnsupportedOpError, match=r"_native_batch_norm_legit_functional.*writes buffer '1\.running_mean'.*eval mode"
    ):
        import_torch(m, (_randn(2, 3, 4, 4),))


def test_buffer_update_is_refused():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x):
            self.seen.add_(1)
            return x * 2

    with pytest.raises(UnsupportedOpError, match=r"the program writes buffer 'seen'"):
        import_torch(Counter(), (_randn(2, 3),))


def test_bad_arguments():
    with pytest.raises(ModelLoadError, match="ExportedProgram or an nn.Module"):
        import_torch("model.pt2")
    with pytest.raises(ModelLoadError, match="example_args"):
        import_torch(MLP())
