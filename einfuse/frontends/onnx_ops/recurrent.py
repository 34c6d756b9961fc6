"""Converters for the ONNX recurrent ops (see einfuse/ir/ops/recurrent.py): RNN, GRU, LSTM.

Normalisation into the core ops' one form:
- layout=1 (batch-major) becomes transposes of X, initial_h/initial_c and the outputs
  around the time-major core op;
- `activations` are written out for every direction (ONNX defaults: RNN Tanh; GRU Sigmoid,
  Tanh; LSTM Sigmoid, Tanh, Tanh; a forward RNN may list two, the schema default: the
  first counts), with ONNX's capitalisation (names are matched case-insensitively);
- `activation_alpha`/`activation_beta` are consumed in order by the activations that take
  them, as onnxruntime reads them, and spread to one value per activation; missing ones
  take the defaults of the ONNX operator of the same name;
- `hidden_size`, when absent, is read from R; `clip` absent becomes 0.0 (no clipping).
"""

from __future__ import annotations

from einfuse.frontends.onnx_ops import converter
from einfuse.ir.ops.recurrent import ACTIVATIONS, DEFAULT_ACTIVATIONS, DIRECTIONS, GATES

_CANONICAL = {name.lower(): name for name in ACTIVATIONS}


def _requested(node, i: int) -> bool:
    return i < len(node.output) and node.output[i] != ""


def _activations(ctx, node, op: str, dirs: int) -> tuple[tuple, tuple, tuple]:
    """(activations, alphas, betas), one entry per function per direction."""
    defaults = DEFAULT_ACTIVATIONS[op]
    n = len(defaults)
    names = tuple(ctx.attr(node, "activations", ()) or ())
    if not names:
        names = defaults * dirs
    elif op == "rnn" and dirs == 1 and len(names) == 2:
        names = names[:1]  # RNN's schema default lists two functions even for one direction (onnxruntime agrees)
    if len(names) != n * dirs:
        raise ctx.error(node, f"activations={list(names)} should name {n} function(s) per direction ({n * dirs})")
    canonical = []
    for name in names:
        if name.lower() not in _CANONICAL:
            raise ctx.unsupported(node, f"activation {name!r} (known: {', '.join(ACTIVATIONS)})")
        canonical.append(_CANONICAL[name.lower()])

    given_alpha = list(ctx.attr(node, "activation_alpha", ()) or ())
    given_beta = list(ctx.attr(node, "activation_beta", ()) or ())
    alphas, betas = [], []
    for name in canonical:
        uses_alpha, uses_beta, default_alpha, default_beta = ACTIVATIONS[name]
        alpha = given_alpha.pop(0) if uses_alpha and given_alpha else default_alpha
        beta = given_beta.pop(0) if uses_beta and given_beta else default_beta
        if alpha is None or beta is None:
            raise ctx.unsupported(node, f"activation {name} needs activation_alpha and activation_beta values")
        alphas.append(float(alpha if uses_alpha else 0.0))
        betas.append(float(beta if uses_beta else 0.0))
    return tuple(canonical), tuple(alphas), tuple(betas)


def _hidden_size(ctx, node, op: str, w, r) -> int:
    hidden = ctx.attr(node, "hidden_size")
    if hidden is not None:
        return hidden
    if r is not None and r.rank == 3 and isinstance(r.shape[2], int):
        return r.shape[2]
    if w is not None and w.rank == 3 and isinstance(w.shape[1], int) and w.shape[1] % GATES[op] == 0:
        return w.shape[1] // GATES[op]
    raise ctx.unsupported(node, "hidden_size is not given and the weights' shapes are symbolic")


def _recurrent(op: str, n_states: int):
    """Converter for rnn/gru (one state) and lstm (two states)."""

    def convert(ctx, node):
        operands = ctx.inputs(node)
        operands += [None] * (8 - len(operands))
        x, w, r = operands[:3]
        direction = ctx.attr(node, "direction", "forward")
        if direction not in DIRECTIONS:
            raise ctx.error(node, f"direction={direction!r} must be forward, reverse or bidirectional")
        layout = ctx.attr(node, "layout", 0)
        if layout not in (0, 1):
            raise ctx.error(node, f"layout={layout} must be 0 or 1")
        clip = ctx.attr(node, "clip")
        if clip is not None and clip <= 0:
            raise ctx.error(node, f"clip={clip} must be positive")
        activations, alphas, betas = _activations(ctx, node, op, DIRECTIONS[direction])
        attrs = {
            "hidden_size": _hidden_size(ctx, node, op, w, r),
            "direction": direction,
            "activations": activations,
            "activation_alpha": alphas,
            "activation_beta": betas,
            "clip": float(clip or 0.0),
        }
        if op == "gru":
            attrs["linear_before_reset"] = bool(ctx.attr(node, "linear_before_reset", 0))
        if op == "lstm":
            attrs["input_forget"] = bool(ctx.attr(node, "input_forget", 0))

        # Operand slots: X W R B sequence_lens initial_h (initial_c P for lstm).
        n_operands = 8 if op == "lstm" else 6
        operands = operands[:n_operands]
        if layout == 1:
            operands[0] = ctx.op("transpose", [x], perm=(1, 0, 2))
            for i in (5, 6)[:n_states]:
                if operands[i] is not None:
                    operands[i] = ctx.op("transpose", [operands[i]], perm=(1, 0, 2))
        outs = list(ctx.op(op, operands, **attrs))
        if layout == 1:
            perms = [(2, 0, 1, 3)] + [(1, 0, 2)] * n_states
            outs = [
                ctx.op("transpose", [v], perm=perm) if _requested(node, i) else None
                for i, (v, perm) in enumerate(zip(outs, perms))
            ]
        return outs

    return convert


converter("RNN")(_recurrent("rnn", 1))
converter("GRU")(_recurrent("gru", 1))
converter("LSTM")(_recurrent("lstm", 2))
