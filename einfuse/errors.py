"""User-facing errors.

Every error einfuse raises on bad input is an `EinfuseError`: one clear line that
names the model element at fault, plus an optional hint. The CLI prints
`error: <message>` and the hint, never a traceback (unless --debug).
"""

from __future__ import annotations


class EinfuseError(Exception):
    """Base of all einfuse errors meant for users."""

    def __init__(self, message: str, *, hint: str | None = None, context: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Nearby IR text with a marker, shown under the message when present.
        self.context = context

    def __str__(self) -> str:
        text = self.message
        if self.context:
            text += "\n" + self.context
        return text


class ModelLoadError(EinfuseError):
    """The model file is missing, truncated, not ONNX, or too large."""


class UnsafeModelError(ModelLoadError):
    """The model asks for something einfuse refuses to do (escaping paths, huge constants)."""


class UnsupportedOpError(EinfuseError):
    """One or more ops (or op variants) have no einfuse lowering."""


class ShapeError(EinfuseError):
    """Shape or dtype inference failed: wrong ranks, mismatched dims, bad dtypes."""


class VerifyError(EinfuseError):
    """The graph breaks an IR invariant (types, order, single definition, schemas)."""


class ParseError(EinfuseError):
    """The IR text could not be parsed."""


class ExecutionError(EinfuseError):
    """A kernel or reference op failed at run time (e.g. bad input values)."""


class InputError(EinfuseError):
    """Inputs given to a model do not match its signature."""
