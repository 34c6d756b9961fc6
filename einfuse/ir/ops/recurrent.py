"""Recurrent ops: rnn, gru and lstm (one layer, ONNX semantics, newest opset).

One canonical form, written by the ONNX converter:
- time-major layout: X [seq, batch, input], initial_h/initial_c [dirs, batch, hidden],
  outputs Y [seq, dirs, batch, hidden], Y_h/Y_c [dirs, batch, hidden] (ONNX layout=1 is
  transposes around the op);
- `activations` lists every function of every direction (rnn: f; gru: f, g; lstm: f, g, h),
  named as in ONNX (`Sigmoid`, `LeakyRelu`...), and `activation_alpha`/`activation_beta`
  hold one value per activation (0 where the function takes none), defaults filled;
- `clip` 0.0 means no clipping (ONNX requires a positive threshold otherwise);
- every output is produced (Y, Y_h, and Y_c for lstm).

Gate layouts follow ONNX: W [dirs, G*hidden, input], R [dirs, G*hidden, hidden],
B [dirs, 2*G*hidden] (W biases then R biases), G = 1 (rnn), 3 (gru: z, r, h) or
4 (lstm: i, o, f, c); lstm peepholes P [dirs, 3*hidden] (i, o, f).

sequence_lens (int32 [batch]) as onnxruntime implements it: batch entry b runs its first
lens[b] steps (the reverse direction runs them backwards from lens[b]-1); Y is zero past
them, Y_h/Y_c hold the state after the last step run (zero when lens[b] is 0). The clip
threshold bounds every gate pre-activation (bias and peephole terms included), not the
cell state fed to h. Arithmetic is f32 (f64 for f64 inputs); 16-bit floats round back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from einfuse.errors import ExecutionError
from einfuse.ir.ops import OPAQUE, Attr, register
from einfuse.ir.types import DType, TensorType, dim_known_ne, simplify_dim

RNN_DTYPES = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16})
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}

# Activation name -> (uses alpha, uses beta, default alpha, default beta). The defaults are
# those of the ONNX operators of the same name (LeakyRelu 0.01, HardSigmoid 0.2/0.5, Elu 1,
# ThresholdedRelu 1); Affine and ScaledTanh have no operator left, so the converter
# requires their values.
ACTIVATIONS = {
    "Relu": (False, False, 0.0, 0.0),
    "Tanh": (False, False, 0.0, 0.0),
    "Sigmoid": (False, False, 0.0, 0.0),
    "Affine": (True, True, None, None),
    "LeakyRelu": (True, False, 0.01, 0.0),
    "ThresholdedRelu": (True, False, 1.0, 0.0),
    "ScaledTanh": (True, True, None, None),
    "HardSigmoid": (True, True, 0.2, 0.5),
    "Elu": (True, False, 1.0, 0.0),
    "Softsign": (False, False, 0.0, 0.0),
    "Softplus": (False, False, 0.0, 0.0),
}

# Default activation functions per direction, and gates per op.
DEFAULT_ACTIVATIONS = {"rnn": ("Tanh",), "gru": ("Sigmoid", "Tanh"), "lstm": ("Sigmoid", "Tanh", "Tanh")}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def activation_fn(name: str, alpha: float, beta: float) -> Callable[[np.ndarray], np.ndarray]:
    """The numpy function of one ONNX recurrent activation."""
    if name == "Relu":
        return lambda x: np.maximum(x, 0)
    if name == "Tanh":
        return np.tanh
    if name == "Sigmoid":
        return _sigmoid
    if name == "Affine":
        return lambda x: alpha * x + beta
    if name == "LeakyRelu":
        return lambda x: np.where(x >= 0, x, alpha * x)
    if name == "ThresholdedRelu":
        return lambda x: np.where(x > alpha, x, 0)
    if name == "ScaledTanh":
        return lambda x: alpha * np.tanh(beta * x)
    if name == "HardSigmoid":
        return lambda x: np.clip(alpha * x + beta, 0, 1)
    if name == "Elu":
        return lambda x: np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0)))
    if name == "Softsign":
        return lambda x: x / (1 + np.abs(x))
    if name == "Softplus":
        return lambda x: np.logaddexp(x, 0)
    raise ValueError(f"unknown activation {name!r}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a large -x overflows to inf, giving the right limit 0 (warnings are off in the evaluator).
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


# ---------------------------------------------------------------------------
# inference


def _infer_recurrent(ctx, op: str) -> list:
    """Checks operands and attributes of rnn/gru/lstm; returns the output types."""
    a = ctx.attrs
    gates = GATES[op]
    x = ctx.type(0)
    if x.dtype not in RNN_DTYPES:
        raise ctx.error(f"X must be f64/f32/f16/bf16, got {x}")
    if x.rank != 3:
        raise ctx.error(f"X {x} must be [seq_length, batch_size, input_size]")
    direction = a["direction"]
    if direction not in DIRECTIONS:
        raise ctx.error(f"direction={direction!r} must be forward, reverse or bidirectional")
    dirs, hidden = DIRECTIONS[direction], a["hidden_size"]
    if hidden < 1:
        raise ctx.error(f"hidden_size={hidden} must be positive")
    seq, batch, inputs = x.shape

    n_funcs = len(DEFAULT_ACTIVATIONS[op])
    acts, alphas, betas = a["activations"], a["activation_alpha"], a["activation_beta"]
    if len(acts) != n_funcs * dirs:
        raise ctx.error(f"activations={acts} should name {n_funcs} function(s) per direction ({n_funcs * dirs})")
    for name in acts:
        if name not in ACTIVATIONS:
            raise ctx.error(f"unknown activation {name!r}; one of {', '.join(ACTIVATIONS)}")
    if len(alphas) != len(acts) or len(betas) != len(acts):
        raise ctx.error("activation_alpha and activation_beta need one value per activation")
    if a["clip"] < 0:
        raise ctx.error(f"clip={a['clip']} must be positive (0 for no clipping)")

    def check(i: int, what: str, shape: tuple, dtype: DType = x.dtype) -> None:
        if not ctx.has(i):
            return
        t = ctx.type(i)
        if t.dtype != dtype:
            raise ctx.error(f"{what} {t} must have dtype {dtype}")
        if t.rank != len(shape) or any(dim_known_ne(d, e) for d, e in zip(t.shape, shape)):
            want = ",".join(str(d) for d in shape)
            raise ctx.error(f"{what} {t} should have shape [{want}] (dirs={dirs}, hidden_size={hidden})")

    check(1, "W", (dirs, gates * hidden, inputs))
    check(2, "R", (dirs, gates * hidden, hidden))
    check(3, "B", (dirs, 2 * gates * hidden))
    check(4, "sequence_lens", (batch,), DType.i32)
    check(5, "initial_h", (dirs, batch, hidden))
    if op == "lstm":
        check(6, "initial_c", (dirs, batch, hidden))
        check(7, "P", (dirs, 3 * hidden))
    state = TensorType((dirs, batch, hidden), x.dtype)
    outs = [TensorType((seq, dirs, batch, simplify_dim(hidden)), x.dtype), state]
    return outs + [state] if op == "lstm" else outs


_COMMON_ATTRS = {
    "hidden_size": Attr("int"),
    "direction": Attr("str", "forward"),
    "activations": Attr("strs"),
    "activation_alpha": Attr("floats"),
    "activation_beta": Attr("floats"),
    "clip": Attr("float", 0.0),
}


# ---------------------------------------------------------------------------
# the time loop shared by the three ops


def _work(dtype: np.dtype) -> type:
    return np.float64 if dtype == np.float64 else np.float32


def _time_order(seq: int, lens: np.ndarray, reverse: bool) -> np.ndarray:
    """idx[t, b]: the time step batch entry b reads at iteration t (clamped when t >= lens[b])."""
    t = np.arange(seq)[:, None]
    if reverse:
        idx = lens[None, :] - 1 - t
    else:
        idx = np.broadcast_to(t, (seq, lens.shape[0]))
    return np.clip(idx, 0, max(seq - 1, 0))


def _run_direction(step, xs: np.ndarray, lens: np.ndarray, reverse: bool, states: tuple):
    """Runs `step(x_t, *states) -> new states` over time for one direction.

    xs: [seq, batch, ...] inputs (already projected); states: tuple of [batch, hidden].
    Returns (Y [seq, batch, hidden], final states): Y[t] is the hidden state after reading
    time step t, zero past lens[b]; finals are zero for lens[b] == 0."""
    seq, batch = xs.shape[:2]
    idx = _time_order(seq, lens, reverse)
    hidden = states[0].shape[-1]
    y = np.zeros((seq, batch, hidden), states[0].dtype)
    cols = np.arange(batch)
    for it in range(seq):
        active = (it < lens)[:, None]
        if not active.any():
            break
        x_t = xs[idx[it], cols]
        new = step(x_t, *states)
        states = tuple(np.where(active, n, s) for n, s in zip(new, states))
        rows = idx[it][active[:, 0]]
        y[rows, cols[active[:, 0]]] = states[0][active[:, 0]]
    empty = (lens == 0)[:, None]
    states = tuple(np.where(empty, 0, s).astype(s.dtype) for s in states)
    return y, states


def _run(op: str, X, W, R, B, sequence_lens, initial, extra, attrs: dict, make_step):
    """Shared driver: per direction, project the inputs, run the loop, stack the outputs."""
    wt = _work(X.dtype)
    seq, batch, _ = X.shape
    hidden, direction = attrs["hidden_size"], attrs["direction"]
    dirs = DIRECTIONS[direction]
    gates = GATES[op]
    n_funcs = len(DEFAULT_ACTIVATIONS[op])
    lens = np.full((batch,), seq, np.int64) if sequence_lens is None else sequence_lens.astype(np.int64)
    if np.any(lens < 0) or np.any(lens > seq):
        raise ExecutionError(f"{op}: sequence_lens {lens.tolist()} must lie in [0, {seq}]")
    n_states = len(initial)
    ys, finals = [], [[] for _ in range(n_states)]
    for d in range(dirs):
        funcs = [
            activation_fn(attrs["activations"][k], attrs["activation_alpha"][k], attrs["activation_beta"][k])
            for k in range(d * n_funcs, (d + 1) * n_funcs)
        ]
        w, r = W[d].astype(wt), R[d].astype(wt)
        b = np.zeros((2 * gates * hidden,), wt) if B is None else B[d].astype(wt)
        xs = X.astype(wt) @ w.T + b[: gates * hidden]  # [seq, batch, G*hidden]: input projections at once
        states = tuple(np.zeros((batch, hidden), wt) if s is None else s[d].astype(wt) for s in initial)
        step = make_step(r, b[gates * hidden :], funcs, None if extra is None else extra[d].astype(wt))
        reverse = direction == "reverse" or d == 1
        y, states = _run_direction(step, xs, lens, reverse, states)
        ys.append(y)
        for k, s in enumerate(states):
            finals[k].append(s)
    out = [np.stack(ys, axis=1).astype(X.dtype)]
    out += [np.stack(f, axis=0).astype(X.dtype) for f in finals]
    return tuple(out)


def _clipper(clip: float):
    if clip > 0:
        return lambda x: np.clip(x, -clip, clip)
    return lambda x: x


# ---------------------------------------------------------------------------
# rnn


@register(
    "rnn",
    family=OPAQUE,
    inputs=(3, 6),
    attrs=_COMMON_ATTRS,
    outputs=2,
    infer=lambda ctx: _infer_recurrent(ctx, "rnn"),
)
def rnn(X, W, R, B=None, sequence_lens=None, initial_h=None, **attrs):
    """Simple RNN: H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb); outputs (Y, Y_h)."""
    clip = _clipper(attrs["clip"])

    def make_step(r, rb, funcs, _):
        (f,) = funcs

        def step(x_t, h):
            return (f(clip(x_t + h @ r.T + rb)),)

        return step

    return _run("rnn", X, W, R, B, sequence_lens, (initial_h,), None, attrs, make_step)


# ---------------------------------------------------------------------------
# gru


@register(
    "gru",
    family=OPAQUE,
    inputs=(3, 6),
    attrs={**_COMMON_ATTRS, "linear_before_reset": Attr("bool", False)},
    outputs=2,
    infer=lambda ctx: _infer_recurrent(ctx, "gru"),
)
def gru(X, W, R, B=None, sequence_lens=None, initial_h=None, **attrs):
    """GRU (gates z, r, h); linear_before_reset applies R_h before the reset gate. Outputs (Y, Y_h)."""
    clip = _clipper(attrs["clip"])
    linear_before_reset = attrs["linear_before_reset"]

    def make_step(r, rb, funcs, _):
        f, g = funcs
        r_zr, r_h = np.split(r, [2 * r.shape[1]])  # [2H, H] (z, r) and [H, H]
        rb_zr, rb_h = np.split(rb, [2 * r.shape[1]])

        def step(x_t, h):
            x_zr, x_h = np.split(x_t, [2 * h.shape[1]], axis=-1)
            z, reset = np.split(f(clip(x_zr + h @ r_zr.T + rb_zr)), 2, axis=-1)
            if linear_before_reset:
                candidate = g(clip(x_h + reset * (h @ r_h.T + rb_h)))
            else:
                candidate = g(clip(x_h + (reset * h) @ r_h.T + rb_h))
            return ((1 - z) * candidate + z * h,)

        return step

    return _run("gru", X, W, R, B, sequence_lens, (initial_h,), None, attrs, make_step)


# ---------------------------------------------------------------------------
# lstm


@register(
    "lstm",
    family=OPAQUE,
    inputs=(3, 8),
    attrs={**_COMMON_ATTRS, "input_forget": Attr("bool", False)},
    outputs=3,
    infer=lambda ctx: _infer_recurrent(ctx, "lstm"),
)
def lstm(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, **attrs):
    """LSTM (gates i, o, f, c; peepholes i, o, f); input_forget couples f = 1 - i. Outputs (Y, Y_h, Y_c)."""
    clip = _clipper(attrs["clip"])
    input_forget = attrs["input_forget"]

    def make_step(r, rb, funcs, p):
        f, g, h_act = funcs
        hidden = r.shape[1]
        p_i, p_o, p_f = (np.zeros((hidden,), r.dtype),) * 3 if p is None else np.split(p, 3)

        def step(x_t, h, c):
            i, o, fg, cand = np.split(x_t + h @ r.T + rb, 4, axis=-1)
            i = f(clip(i + p_i * c))
            fg = 1 - i if input_forget else f(clip(fg + p_f * c))
            c_new = fg * c + i * g(clip(cand))
            o = f(clip(o + p_o * c_new))  # the output peephole reads the new cell state
            return o * h_act(c_new), c_new

        return step

    return _run("lstm", X, W, R, B, sequence_lens, (initial_h, initial_c), P, attrs, make_step)
