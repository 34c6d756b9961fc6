"""A toy TVM backend for the runtime tests: it lowers one-op elementwise groups of equal
shapes (relu, add, mul, exp, neg) with TE and tvm.compile, and raises LoweringError for
anything else. It makes real compiled libraries (.so) quickly, so the runtime, the cache
and the .einf format are tested without depending on the full TVM backend."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from einfuse.codegen.backend import BACKENDS, Kernel, LoweringError, kernel_name, register_backend

TOY = "toytvm"


class ToyBackend:
    name = TOY
    compiles = 0  # how many times the backend compiled something (class-wide)

    def compile(self, node, target=None, dims=None) -> Kernel:
        import tvm
        from tvm import te

        from einfuse.runtime.executable import tvm_caller

        region = node.attrs["region"]
        if len(region.nodes) != 1:
            raise LoweringError("toy backend: one op per group only")
        (n,) = region.nodes
        if n.op not in ("relu", "add", "mul", "exp", "neg") or region.constants:
            raise LoweringError(f"toy backend: no lowering for {n.op}")
        shapes = {tuple(v.shape) for v in [*region.inputs, *region.outputs]}
        if len(shapes) != 1 or not all(isinstance(d, int) for d in next(iter(shapes))):
            raise LoweringError("toy backend: equal static shapes only")
        (shape,) = shapes
        dtype = str(region.inputs[0].dtype.np)
        ins = [te.placeholder(shape, dtype, name=f"in{i}") for i in range(len(region.inputs))]
        body = {
            "relu": lambda *i: te.max(ins[0](*i), tvm.tirx.const(0, dtype)),
            "add": lambda *i: ins[0](*i) + ins[1](*i),
            "mul": lambda *i: ins[0](*i) * ins[1](*i),
            "exp": lambda *i: te.exp(ins[0](*i)),
            "neg": lambda *i: -ins[0](*i),
        }[n.op]
        out = te.compute(shape, body, name="out")
        name = kernel_name(node, TOY)
        func = te.create_prim_func([*ins, out]).with_attr("global_symbol", name)
        lib = tvm.compile(tvm.IRModule({name: func}), target=tvm.target.Target({"kind": "llvm"}))
        folder = Path(tempfile.mkdtemp(prefix="einfuse-toy-"))
        path = folder / f"{name}.so"
        lib.export_library(str(path))
        ToyBackend.compiles += 1
        flops = int(np.prod(shape))
        mod = tvm.runtime.load_module(str(path))
        return Kernel(name, tvm_caller(mod[name]), TOY, str(node.attrs["kind"]), (n.op,), flops, artifact=str(path))


@pytest.fixture(scope="module")
def toy_backend():
    """Registers the toy backend as "toytvm" and maps the target name "toy" to it."""
    from einfuse import compiler

    register_backend(TOY)(ToyBackend)
    compiler.TARGETS["toy"] = TOY
    ToyBackend.compiles = 0
    yield ToyBackend
    compiler.TARGETS.pop("toy", None)
    BACKENDS.pop(TOY, None)
