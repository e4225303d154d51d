"""Agreement between two runs of the same job: largest differences of models and of tracks."""

from __future__ import annotations


import numpy as np

from .. import layout
from ..bigwig import read_binned


def model_diff(a, b) -> float:
    """Largest absolute difference between two models' factors, biases and μ."""
    return float(max(np.max(np.abs(a.C - b.C)), np.max(np.abs(a.A - b.A)),
                     np.max(np.abs(a.bC - b.bC)), np.max(np.abs(a.bA - b.bA)),
                     abs(a.mu - b.mu)))


def tracks_diff(out_a: str, out_b: str, names: list[str], chrom: str, length: int,
                bin_size: int) -> float:
    """Largest absolute difference between the imputed tracks ``names`` of two output
    directories, read back from their bigWigs."""
    worst = 0.0
    for name in names:
        pa = layout.track_file(out_a, name)
        pb = layout.track_file(out_b, name)
        ya = read_binned(pa, chrom, length, bin_size)
        yb = read_binned(pb, chrom, length, bin_size)
        worst = max(worst, float(np.max(np.abs(ya.astype(np.float64) - yb))))
    return worst

