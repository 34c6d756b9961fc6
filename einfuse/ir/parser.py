"""Parser for the IR text form written by einfuse.ir.printer.

`parse(text, constants=None)` returns a Graph. Elided constants (`@w = const : f32[..]`)
take their value from `constants` ({name: array} or a Graph's constants). Dimension
expressions are parsed by a small recursive-descent parser, never by eval/sympify, so
IR text from anywhere is safe to read.
"""

from __future__ import annotations

import json
import re

import numpy as np
import sympy

from einfuse.errors import ParseError
from einfuse.ir.graph import Attrs, Graph, Node, Value
from einfuse.ir.ops import REQUIRED, get_op
from einfuse.ir.types import DType, TensorType, simplify_dim, sym

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<comment>//[^\n]*)
  | (?P<hex>hex"[0-9a-fA-F]*")
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<ref>[%@](?:"(?:[^"\\\n]|\\.)*"|[A-Za-z0-9_.]+))
  | (?P<num>(?:\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?|\d+))
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<arrow>->)
  | (?P<hash>\#)
  | (?P<punct>[()\[\]{},:=+\-*/^])
    """,
    re.VERBOSE,
)


class _Tok:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind, text, line, col):
        self.kind, self.text, self.line, self.col = kind, text, line, col

    def __repr__(self):
        return f"{self.kind}:{self.text!r}"


def _lex(text: str) -> list[_Tok]:
    toks = []
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ParseError(f"line {line}, column {pos - line_start + 1}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        s = m.group()
        if kind not in ("ws", "comment"):
            toks.append(_Tok(kind, s, line, pos - line_start + 1))
        nl = s.count("\n")
        if nl:
            line += nl
            line_start = pos + s.rindex("\n") + 1
        pos = m.end()
    toks.append(_Tok("eof", "", line, pos - line_start + 1))
    return toks


def _unquote(s: str) -> str:
    if s.startswith('"'):
        try:
            out = json.loads(s)
        except json.JSONDecodeError as e:
            raise ParseError(f"bad quoted name {s}: {e}") from None
        return out
    return s


class _Parser:
    def __init__(self, text: str, constants):
        self.toks = _lex(text)
        self.i = 0
        self.lines = text.splitlines()
        if isinstance(constants, Graph):
            constants = {k: a for k, (_, a) in constants.constants.items()}
        self.constants = constants or {}

    # -- token helpers -----------------------------------------------------

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def error(self, msg: str, tok: _Tok | None = None) -> ParseError:
        tok = tok or self.tok
        ctx = None
        if 0 < tok.line <= len(self.lines):
            ctx = "> " + self.lines[tok.line - 1] + "\n  " + " " * (tok.col - 1) + "^"
        return ParseError(f"line {tok.line}, column {tok.col}: {msg}", context=ctx)

    def next(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at(self, text: str) -> bool:
        return self.tok.text == text and self.tok.kind != "str"

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> _Tok:
        if not self.at(text):
            raise self.error(f"expected {text!r}, found {self.tok.text or 'end of input'!r}")
        return self.next()

    def word(self) -> str:
        if self.tok.kind != "word":
            raise self.error(f"expected a name, found {self.tok.text or 'end of input'!r}")
        return self.next().text

    # -- types -------------------------------------------------------------

    def type_(self) -> TensorType:
        name = self.word()
        try:
            dtype = DType(name)
        except ValueError:
            raise self.error(f"unknown dtype {name!r}") from None
        self.expect("[")
        dims = []
        if not self.at("]"):
            dims.append(self.dim())
            while self.accept(","):
                dims.append(self.dim())
        self.expect("]")
        try:
            return TensorType(tuple(dims), dtype)
        except (ValueError, TypeError) as e:
            raise self.error(str(e)) from None

    def dim(self):
        tok = self.tok
        try:
            return simplify_dim(self._sum())
        except (ValueError, TypeError) as e:
            raise self.error(f"bad dimension: {e}", tok) from None

    def _sum(self):
        e = self._product()
        while self.at("+") or self.at("-"):
            op = self.next().text
            rhs = self._product()
            e = e + rhs if op == "+" else e - rhs
        return e

    def _product(self):
        e = self._unary()
        while self.at("*") or self.at("/"):
            op = self.next().text
            rhs = self._unary()
            e = e * rhs if op == "*" else e / rhs
        return e

    def _unary(self):
        if self.accept("-"):
            return -self._unary()
        return self._power()

    def _power(self):
        base = self._atom()
        if self.accept("^"):
            return base ** self._unary()
        return base

    _FUNCS = {"floor": sympy.floor, "ceil": sympy.ceiling, "max": sympy.Max, "min": sympy.Min, "mod": sympy.Mod}

    def _atom(self):
        t = self.tok
        if t.kind == "num":
            self.next()
            if not t.text.isdigit():
                raise self.error("dimensions are integers", t)
            return sympy.Integer(int(t.text))
        if self.accept("("):
            e = self._sum()
            self.expect(")")
            return e
        if t.kind == "word":
            self.next()
            if t.text in self._FUNCS and self.at("("):
                self.expect("(")
                args = [self._sum()]
                while self.accept(","):
                    args.append(self._sum())
                self.expect(")")
                return self._FUNCS[t.text](*args)
            return sym(t.text)
        raise self.error(f"expected a dimension, found {t.text or 'end of input'!r}")

    # -- values and attributes ---------------------------------------------

    def ref(self, sigil: str) -> str:
        t = self.tok
        if t.kind != "ref" or t.text[0] != sigil:
            raise self.error(f"expected a {sigil}name, found {t.text or 'end of input'!r}")
        self.next()
        return _unquote(t.text[1:])

    def attr_value(self):
        t = self.tok
        if t.kind == "str":
            self.next()
            return _unquote(t.text)
        if self.at("("):
            self.next()
            items = []
            while not self.at(")"):
                items.append(self.attr_value())
                if not self.accept(","):
                    break
            self.expect(")")
            return tuple(items)
        if t.kind == "word" and t.text == "graph":
            return self.graph()
        return self.scalar()

    def scalar(self):
        neg = self.accept("-")
        t = self.next()
        if t.kind == "num":
            is_float = any(c in t.text for c in ".eE")
            v = float(t.text) if is_float else int(t.text)
            return -v if neg else v
        if t.kind == "word":
            if t.text == "inf":
                return float("-inf") if neg else float("inf")
            if t.text == "nan" and not neg:
                return float("nan")
            if not neg and t.text in ("true", "false"):
                return t.text == "true"
            if not neg:
                try:
                    return DType(t.text)
                except ValueError:
                    pass
        raise self.error(f"expected a value, found {t.text!r}", t)

    # -- graph -------------------------------------------------------------

    def graph(self) -> Graph:
        self.expect("graph")
        g = Graph(self.ref("@"))
        env: dict[str, Value] = {}

        def define(name: str, v: Value, tok: _Tok):
            if name in env:
                raise self.error(f"value {name!r} is defined twice", tok)
            env[name] = v

        self.expect("(")
        while not self.at(")"):
            tok = self.tok
            name = self.ref("%")
            self.expect(":")
            ty = self.type_()
            if name in env:
                raise self.error(f"value {name!r} is defined twice", tok)
            define(name, g.add_input(name, ty), tok)
            if not self.accept(","):
                break
        self.expect(")")
        self.expect("->")
        self.expect("(")
        declared = []
        while not self.at(")"):
            tok = self.tok
            sigil = tok.text[:1]
            name = self.ref(sigil if sigil in "%@" else "%")
            self.expect(":")
            declared.append((name, self.type_(), tok))
            if not self.accept(","):
                break
        self.expect(")")
        self.expect("{")
        while True:
            tok = self.tok
            if tok.kind == "word" and tok.text == "return":
                self.next()
                outs = [self._use(env, self.tok)]
                while self.accept(","):
                    outs.append(self._use(env, self.tok))
                break
            if tok.kind == "ref" and tok.text[0] == "@":
                self.constant(g, env)
            else:
                self.node(g, env)
        self.expect("}")
        if len(outs) != len(declared):
            raise self.error(f"graph declares {len(declared)} results but returns {len(outs)}")
        for v, (name, ty, tok) in zip(outs, declared):
            if v.name != name or v.type != ty:
                raise self.error(f"result {name!r}: {ty} does not match the returned value {v.name!r}: {v.type}", tok)
        g.outputs = outs
        return g

    def _use(self, env, tok) -> Value:
        sigil = tok.text[:1] if tok.kind == "ref" else "%"
        name = self.ref(sigil)
        try:
            return env[name]
        except KeyError:
            raise self.error(f"value {sigil}{name} is used before it is defined", tok) from None

    def constant(self, g: Graph, env):
        tok = self.tok
        name = self.ref("@")
        self.expect("=")
        self.expect("const")
        data = None
        if self.tok.kind == "hex":
            data = ("hex", self.next().text[4:-1])
        elif self.at("["):
            self.next()
            items = []
            while not self.at("]"):
                items.append(self.scalar())
                if not self.accept(","):
                    break
            self.expect("]")
            data = ("list", items)
        self.expect(":")
        ty = self.type_()
        if not ty.is_static:
            raise self.error(f"constant @{name} must have a static shape", tok)
        shape = ty.static_shape
        if data is None:
            if name not in self.constants:
                raise self.error(f"constant @{name} is elided; pass its value in constants=", tok)
            arr = np.asarray(self.constants[name])
            if arr.dtype != ty.dtype.np or arr.shape != shape:
                raise self.error(f"constant @{name}: given value {arr.dtype}{list(arr.shape)} is not {ty}", tok)
        elif data[0] == "hex":
            raw = bytes.fromhex(data[1])
            if len(raw) != int(np.prod(shape, dtype=np.int64)) * ty.dtype.itemsize:
                raise self.error(f"constant @{name}: {len(raw)} bytes do not fill {ty}", tok)
            arr = np.frombuffer(raw, dtype=ty.dtype.np).reshape(shape).copy()
        else:
            if len(data[1]) != int(np.prod(shape, dtype=np.int64)):
                raise self.error(f"constant @{name}: {len(data[1])} values do not fill {ty}", tok)
            arr = np.array(data[1], dtype=ty.dtype.np).reshape(shape) if data[1] else np.zeros(shape, ty.dtype.np)
        if name in env:
            raise self.error(f"value {name!r} is defined twice", tok)
        env[name] = g.add_constant(name, arr)

    def node(self, g: Graph, env):
        first = self.tok
        out_names = [(self.tok, self.ref("%"))]
        while self.accept(","):
            out_names.append((self.tok, self.ref("%")))
        self.expect("=")
        op_tok = self.tok
        op = self.word()
        try:
            d = get_op(op)
        except KeyError:
            raise self.error(f"unknown op {op!r}", op_tok) from None
        self.expect("(")
        inputs = []
        while not self.at(")"):
            if self.accept("none"):
                inputs.append(None)
            else:
                inputs.append(self._use(env, self.tok))
            if not self.accept(","):
                break
        self.expect(")")
        attrs = {}
        if self.accept("{"):
            while not self.at("}"):
                key_tok = self.tok
                key = self.word()
                self.expect("=")
                if key in attrs:
                    raise self.error(f"attribute {key!r} given twice", key_tok)
                if key not in d.attrs:
                    raise self.error(f"op {op!r} has no attribute {key!r}", key_tok)
                val = self.attr_value()
                if d.attrs[key].kind == "float" and isinstance(val, int):
                    val = float(val)
                attrs[key] = val
                if not self.accept(","):
                    break
            self.expect("}")
        for k, spec in d.attrs.items():
            if k not in attrs:
                if spec.default is REQUIRED:
                    raise self.error(f"op {op!r} needs attribute {k!r}", op_tok)
                attrs[k] = spec.default
        name = ""
        if self.accept("#"):
            t = self.next()
            if t.kind != "str":
                raise self.error("expected a quoted node name after '#'", t)
            name = _unquote(t.text)
        self.expect(":")
        types = [self.type_()]
        while self.accept(","):
            types.append(self.type_())
        if len(types) != len(out_names):
            raise self.error(f"{len(out_names)} results but {len(types)} types", first)
        outs = []
        for (tok, n), ty in zip(out_names, types):
            if n in env:
                raise self.error(f"value {n!r} is defined twice", tok)
            v = Value(n, ty)
            env[n] = v
            outs.append(v)
        g.add_node(Node(op=op, inputs=tuple(inputs), outputs=tuple(outs), attrs=Attrs(attrs), name=name))


def parse(text: str, constants=None) -> Graph:
    """Parses one graph in IR text form."""
    p = _Parser(text, constants)
    g = p.graph()
    if p.tok.kind != "eof":
        raise p.error("text after the end of the graph")
    return g


def parse_type(text: str) -> TensorType:
    p = _Parser(text, None)
    t = p.type_()
    if p.tok.kind != "eof":
        raise p.error("text after the type")
    return t


def parse_dim(text: str):
    p = _Parser(text, None)
    d = p.dim()
    if p.tok.kind != "eof":
        raise p.error("text after the dimension")
    return d
