"""Typed errors shared by the science core, the CLI, the runner and the operator.

Every error here is the user's fault (bad input): callers show its message on one
line and do not retry. The CLI maps them to exit code 2.
"""

from collections.abc import Iterator
from contextlib import contextmanager


class LensLLMError(ValueError):
    """Base class of every input error this package raises on purpose."""


class CurveError(LensLLMError):
    """A learning curve (sizes and losses) is malformed: NaN, negative, unordered, too short."""


class CurvesFileError(LensLLMError):
    """A curves table (CSV) cannot be read or violates the table format."""


class FitError(LensLLMError):
    """A law cannot be fitted to a curve (too few usable points, no finite optimum)."""


class NotFittedError(LensLLMError):
    """`predict` or a fitted attribute was used before `fit`."""


class UnknownMethodError(LensLLMError):
    """A selection method name is not one of the known ones."""


@contextmanager
def naming(where: object) -> Iterator[None]:
    """Prefix the message of an input error raised inside with `where` (the file it concerns), keeping its type: a
    check deep in the science core does not know which of several tables it was given."""
    try:
        yield
    except LensLLMError as err:
        raise type(err)(f"{where}: {err}") from None
