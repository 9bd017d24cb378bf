"""Input checks shared by the laws and selectors; each raises a typed error naming the culprit."""

from collections.abc import Sequence

import numpy as np

from lensllm.errors import CurveError, FitError


def check_sizes(sizes: Sequence[float] | np.ndarray, *, what: str = "sizes") -> np.ndarray:
    """Return sizes as a float array after checking they are finite, non-negative and increasing."""
    arr = np.asarray(sizes, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise CurveError(f"{what} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise CurveError(f"{what} must be finite and non-negative, got {arr.tolist()}")
    if np.any(np.diff(arr) <= 0):
        raise CurveError(f"{what} must be strictly increasing, got {arr.tolist()}")
    return arr


def check_losses(losses: Sequence[float] | np.ndarray, *, what: str = "losses") -> np.ndarray:
    """Return losses as a float array after checking they are finite and positive."""
    arr = np.asarray(losses, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise CurveError(f"{what} must be finite, got {np.asarray(losses).tolist()}")
    if np.any(arr <= 0):
        raise CurveError(f"{what} must be positive (a cross-entropy), got {arr.tolist()}")
    return arr


def check_curve(
    sizes: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray, *, min_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check one learning curve and that it holds enough points to fit a law."""
    x = check_sizes(sizes)
    y = check_losses(losses)
    if y.shape != x.shape:
        raise CurveError(f"got {x.size} sizes but {y.size} losses")
    if x.size < min_points:
        raise FitError(f"need at least {min_points} points to fit, got {x.size} (sizes {x.tolist()})")
    return x, y


def check_positive(value: float, *, what: str) -> float:
    """Return value as float after checking it is finite and > 0."""
    out = float(value)
    if not np.isfinite(out) or out <= 0:
        raise CurveError(f"{what} must be a finite positive number, got {value!r}")
    return out
