"""What the standard run and the scale-out run start from: tracks, their bigWigs and manifest,
and the configuration.

The tracks are the 20 shared Roadmap pilot tracks (``$PREDICTD_SHARED/data/roadmap_pilot``) when
present, else synthetic tracks of the same shape.
"""

from __future__ import annotations

import os

import numpy as np

from .. import synthetic
from ..bigwig import BigWigWriter
from ..config import Config
from ..names import experiment_name, split_experiment

#: the pilot's epigenomes and marks
CELLS = ["E003", "E017", "E116", "E117"]
MARKS = ["H3K4me3", "H3K4me1", "H3K27me3", "H3K36me3", "H3K9me3"]


def shared_dir() -> str:
    """``$PREDICTD_SHARED/data``, by default ``shared/data`` beside the repository."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    root = os.environ.get("PREDICTD_SHARED") or os.path.join(os.path.dirname(repo), "shared")
    return os.path.join(root, "data")


def bench_tracks(n_bins: int | None = None) -> tuple[dict[str, np.ndarray], str]:
    """``({"cell.mark": float32 arcsinh values}, source)``: the 20 shared Roadmap pilot tracks
    (4 epigenomes × 5 marks, 1,126,469 bins) if present, else synthetic tracks of that shape."""
    pilot = os.path.join(shared_dir(), "roadmap_pilot")
    if os.path.isdir(pilot):
        out = {}
        for c in CELLS:
            for m in MARKS:
                with np.load(os.path.join(pilot, f"{c}.{m}.pilot.arcsinh.npz")) as z:
                    arr = z["arr_0"]
                out[experiment_name(c, m)] = np.ascontiguousarray(arr[:n_bins] if n_bins else arr)
        return out, "shared Roadmap pilot tracks (roadmap_pilot/)"
    n = n_bins or 1_126_469
    obs = [(c, m) for c in CELLS for m in MARKS]
    return synthetic.synthetic_tracks(n, CELLS, MARKS, obs), "synthetic (shared data absent)"


def write_inputs(tracks: dict[str, np.ndarray], directory: str, bin_size: int = 25
                 ) -> tuple[str, str, list[str]]:
    """Write the tracks as bigWigs in input units (sinh of arcsinh) on one pseudo-chromosome;
    returns (manifest, chrom.sizes, bigWig paths). The manifest names the bigWigs by absolute
    path (a relative one would be read relative to the manifest's directory)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    n = next(iter(tracks.values())).size
    length = n * bin_size
    sizes = os.path.join(directory, "bench.chrom.sizes")
    with open(sizes, "w") as fh:
        fh.write(f"pilot\t{length}\n")
    rows, paths = ["cell_type\tassay\turi\n"], []
    for name, y in tracks.items():
        path = os.path.join(directory, f"{name}.bw")
        if not os.path.exists(path):
            with BigWigWriter(path, [("pilot", length)], bin_size) as w:
                w.add_block("pilot", 0, np.sinh(y.astype(np.float64)).astype(np.float32))
        cell, mark = split_experiment(name)
        rows.append(f"{cell}\t{mark}\t{path}\n")
        paths.append(path)
    manifest = os.path.join(directory, "manifest.tsv")
    with open(manifest, "w") as fh:
        fh.writelines(rows)
    return manifest, sizes, paths


def bench_config(quick: bool, **overrides) -> Config:
    """The configuration of the standard and scale-out runs (4 partitions; 30 iterations quick,
    60 full), with ``overrides``."""
    base = {"partitions": 4, "max_iterations": 30 if quick else 60}
    base.update(overrides)
    return Config().replace(**base)

