"""einfuse: a deep-learning compiler (graph IR, fusion passes, TVM/Triton codegen, runtime).

    import einfuse

    model = einfuse.compile("model.onnx", target="llvm")   # -> CompiledModel
    outputs = model(x=array)                               # numpy in, numpy out (by name)
    model.save("model.einf")
    model = einfuse.load("model.einf")                     # no recompiling

The heavy parts (TVM, the importer) load on first use, so `import einfuse.ir` stays light.
"""

from __future__ import annotations

__all__ = ["CompiledModel", "compile", "load"]


def __getattr__(name: str):
    if name in __all__:
        from einfuse import compiler

        return getattr(compiler, name)
    raise AttributeError(f"module 'einfuse' has no attribute {name!r}")
