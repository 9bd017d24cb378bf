"""Argument types and readers shared by the subcommands."""

import argparse
import math
import sys
from pathlib import Path

from lensllm.curves_io import read_curves
from lensllm.errors import CurvesFileError, LensLLMError
from lensllm.output_paths import check_file
from lensllm.science.curves import Curves
from lensllm.science.selectors import SELECTORS


def method_list(text: str) -> list[str]:
    """`a,b,c` or `all` -> method names, each checked."""
    names = list(SELECTORS) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one method, or 'all'")
    for name in names:
        method_name(name)
    return names


def method_name(text: str) -> str:
    if text not in SELECTORS:
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; choose from {', '.join(SELECTORS)}")
    return text


def int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _int_at_least(text: str, lowest: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def seed(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def load_curves(path: str) -> Curves:
    """Read a curves CSV, or standard input for '-'."""
    return read_curves(path, stdin_text=sys.stdin.read() if path == "-" else None)


def resolve_target(curves: Curves, target: int | None) -> int:
    """The target size: the given one, else the table's ground truth, else the largest size column."""
    if target is None:
        return int(curves.target_size if curves.target_size is not None else curves.sizes[-1])
    if target <= 0:
        raise CurvesFileError(f"--target must be positive, got {target}")
    return target


def check_plot_path(path: Path | None) -> None:
    """Fail before any work if the plot cannot be written where asked."""
    if path is None:
        return
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise LensLLMError(f"--plot {path}: use a .png, .svg or .pdf file name")
    if not path.parent.exists():
        raise LensLLMError(f"--plot {path}: folder {path.parent} does not exist")
    check_file(path, "--plot")

