"""Signal transforms (docs/design.md §2): arcsinh in, sinh out, negatives clipped on output."""

from __future__ import annotations

import numpy as np

from .errors import PredictdError

TRANSFORMS = ("arcsinh", "none")


def forward(x: np.ndarray, transform: str) -> np.ndarray:
    """Raw signal -> model space (float32)."""
    x = np.asarray(x, dtype=np.float32)
    if transform == "arcsinh":
        return np.arcsinh(x, dtype=np.float32)
    if transform == "none":
        return x
    raise PredictdError(f"unknown transform {transform!r} (expected one of {TRANSFORMS})")


def inverse(y: np.ndarray, transform: str) -> np.ndarray:
    """Model space -> the input's units, negatives clipped to 0 (float32)."""
    y = np.asarray(y, dtype=np.float32)
    if transform == "arcsinh":
        out = np.sinh(y, dtype=np.float32)
    elif transform == "none":
        out = y.copy(order="K")   # a track-major block stays track-major for the writers
    else:
        raise PredictdError(f"unknown transform {transform!r} (expected one of {TRANSFORMS})")
    np.maximum(out, 0.0, out=out)
    return out
