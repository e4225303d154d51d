"""The bundled demo: real Roadmap signal (4 cell types × 5 marks, 6.25 Mbp) written as bigWigs,
then the whole pipeline with one track held out.

The slice ships inside the package (``predictd/data/demo``, see PROVENANCE.md there); the demo
writes it out as real bigWig files in the input's units (−log10 p-values), so ingest, the
arcsinh transform and the bigWig writers all run exactly as on user data.
"""

from __future__ import annotations

import os

import numpy as np

from .bigwig import BigWigWriter
from .config import Config
from .names import split_experiment

DATA = os.path.join(os.path.dirname(__file__), "data", "demo", "roadmap_pilot_slice.npz")
CHROM = "pilot"
DEFAULT_HOLDOUT = "E116:H3K4me3"


def demo_tracks(pilot_dir: str | None = None) -> dict[str, np.ndarray]:
    """Experiment name -> arcsinh-space float32 values: the bundled slice, or with
    ``pilot_dir`` the full shared Roadmap pilot arrays (``{EID}.{mark}.pilot.arcsinh.npz``)."""
    if pilot_dir:
        import glob
        out = {}
        for path in sorted(glob.glob(os.path.join(pilot_dir, "*.pilot.arcsinh.npz"))):
            name = os.path.basename(path).split(".pilot.")[0]
            with np.load(path, allow_pickle=False) as z:
                out[name] = z["arr_0"].astype(np.float32)
        if not out:
            from .errors import PredictdError
            raise PredictdError(f"--pilot-dir {pilot_dir}: no *.pilot.arcsinh.npz files")
        return out
    with np.load(DATA, allow_pickle=False) as z:
        return {k: z[k].astype(np.float32) / 1000.0 for k in z.files}


def demo_config(**overrides) -> Config:
    """Settings sized for 250 k bins: a larger training fraction, smaller blocks."""
    base = dict(training_fraction=0.1, block_bins=32_768)
    base.update(overrides)
    return Config(**base)


def write_inputs(directory: str, bin_size: int = 25, pilot_dir: str | None = None
                 ) -> tuple[str, str]:
    """Write the demo bigWigs, a manifest and a chrom.sizes file into ``directory``.

    Returns (manifest path, chrom.sizes path). Existing complete files are kept.
    """
    os.makedirs(directory, exist_ok=True)
    tracks = demo_tracks(pilot_dir)
    n = next(iter(tracks.values())).size
    length = n * bin_size
    sizes = os.path.join(directory, "pilot.chrom.sizes")
    with open(sizes + ".tmp", "w") as fh:
        fh.write(f"{CHROM}\t{length}\n")
    os.replace(sizes + ".tmp", sizes)
    rows = []
    for name, y in sorted(tracks.items()):
        path = os.path.join(directory, f"{name}.bw")
        if not os.path.exists(path):
            with BigWigWriter(path, [(CHROM, length)], bin_size) as w:
                w.add_block(CHROM, 0, np.sinh(y))
        cell, assay = split_experiment(name)
        rows.append(f"{cell}\t{assay}\t{name}.bw\n")
    manifest = os.path.join(directory, "manifest.tsv")
    with open(manifest + ".tmp", "w") as fh:
        fh.write("cell_type\tassay\turi\n")
        fh.writelines(rows)
    os.replace(manifest + ".tmp", manifest)
    return manifest, sizes
