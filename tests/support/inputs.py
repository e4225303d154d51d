"""Inputs and outputs written by tests: real bigWigs, manifests and genomes, small enough to
build in a test.

Four kinds, each reached through a fixture of ``tests/conftest.py``:

- the shared Roadmap pilot tracks as bigWigs (``write_roadmap_inputs``);
- a toy genome of two 100 kb chromosomes with five random tracks, C.y never observed (``toy``):
  the good inputs that the bad-input tests spoil one way at a time;
- a small learnable run on the same genome, six tracks of a shared signal plus noise, with the
  CLI settings that keep a run to seconds (``write_small_run_inputs``): inputs for
  kill-and-resume and cluster-fault runs, which compare outputs bit for bit;
- a finished run's output directory as predictd lays it out (``make_run``), for the commands
  that read one (download, hub).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictd.bigwig import BigWigWriter

# --------------------------------------------------------------------------- Roadmap pilot


def write_roadmap_inputs(roadmap, directory, leave_out=()):
    """The shared Roadmap tracks as real bigWigs (input units: sinh of the stored arcsinh).

    Parameters
    ----------
    roadmap : dict of str to numpy.ndarray
        ``{experiment: arcsinh values per 25 bp bin}``, all of one length (the ``roadmap``
        fixture, or a part of it).
    directory : path-like
        Created if missing; receives one bigWig per experiment, the manifest and the genome.
    leave_out : collection of str
        Experiments to write no bigWig and no manifest row for.

    Returns
    -------
    (str, str)
        The manifest and the chrom.sizes file of the one-chromosome ``pilot`` genome.
    """
    os.makedirs(directory, exist_ok=True)
    n = next(iter(roadmap.values())).size
    length = n * 25
    sizes = os.path.join(directory, "pilot.chrom.sizes")
    with open(sizes, "w") as fh:
        fh.write(f"pilot\t{length}\n")
    rows = ["cell_type\tassay\turi\n"]
    for name, y in roadmap.items():
        if name in leave_out:
            continue
        path = os.path.join(directory, f"{name}.bw")
        with BigWigWriter(path, [("pilot", length)]) as w:
            w.add_block("pilot", 0, np.sinh(y.astype(np.float64)).astype(np.float32))
        cell, mark = name.split(".")
        rows.append(f"{cell}\t{mark}\t{name}.bw\n")
    manifest = os.path.join(directory, "manifest.tsv")
    with open(manifest, "w") as fh:
        fh.writelines(rows)
    return manifest, sizes


# --------------------------------------------------------------------------- toy inputs

#: The toy genome: two chromosomes of 100 kb.
CHROMS = [("chr1", 100_000), ("chr2", 100_000)]
#: Every cell type and assay keeps a training track; C.y is never observed.
TRACKS = ["A.x", "A.y", "B.x", "B.y", "C.x"]


def write_track(path, values_per_chrom=None, chroms=CHROMS, seed=0):
    """A real bigWig of 25 bp bins (random gamma signal unless values are given)."""
    rng = np.random.default_rng(seed)
    with BigWigWriter(path, chroms) as w:
        for c, n in chroms:
            nb = -(-n // 25)
            v = rng.gamma(1.0, 2.0, nb) if values_per_chrom is None else \
                np.full(nb, values_per_chrom, dtype=np.float32)
            w.add_block(c, 0, v.astype(np.float32))
    return str(path)


def manifest_text(rows, header="cell_type\tassay\turi"):
    """A manifest's text: the header line, then one tab-separated line per row."""
    return header + "\n" + "".join("\t".join(r) + "\n" for r in rows)


# --------------------------------------------------------------------------- small learnable run


@dataclass(frozen=True)
class SmallRunInputs:
    """What :func:`write_small_run_inputs` wrote, and how to run on it."""

    manifest: str
    sizes: str
    #: Experiment names, one bigWig each.
    tracks: tuple[str, ...]
    #: CLI settings of a run of seconds: small blocks give several tensor blocks, staged pieces
    #: and genome-factor files per chromosome, and fixed partitions make in-process and Spark
    #: runs split the training bins the same way.
    args: tuple[str, ...] = ("--set", "latent_factors=3", "--set", "max_iterations=4",
                             "--set", "training_fraction=0.3", "--set", "block_bins=1024",
                             "--set", "partitions=2")


def write_small_run_inputs(d: Path) -> SmallRunInputs:
    """Six tracks (3 cell types x 2 assays) of a shared signal plus noise on the toy genome:
    the bigWigs, ``m.tsv`` and ``g.sizes``, written into ``d``."""
    tracks = ("A.x", "A.y", "B.x", "B.y", "C.x", "C.y")
    d.mkdir(parents=True, exist_ok=True)
    (d / "g.sizes").write_text("".join(f"{c}\t{n}\n" for c, n in CHROMS))
    rng = np.random.default_rng(5)
    shared = {c: rng.gamma(0.6, 3.0, -(-n // 25)) for c, n in CHROMS}
    rows = ["cell_type\tassay\turi\n"]
    for i, name in enumerate(tracks):
        with BigWigWriter(d / f"{name}.bw", CHROMS) as w:
            for c, n in CHROMS:
                # a shared signal plus noise, so the model has something to learn
                w.add_block(c, 0, (shared[c] * (1 + 0.3 * i) + rng.gamma(0.5, 1.0, shared[c].size)
                                   ).astype(np.float32))
        rows.append("\t".join(name.split(".")) + f"\t{name}.bw\n")
    (d / "m.tsv").write_text("".join(rows))
    return SmallRunInputs(str(d / "m.tsv"), str(d / "g.sizes"), tracks)


# --------------------------------------------------------------------------- a finished run


def make_run(root: Path, cells=("E003", "E017"), assays=("H3K27me3", "H3K4me3", "H3K9me3"),
             n_bins: int = 40_000) -> Path:
    """A run's output as predictd lays it out: real imputed bigWigs, model files, run.json."""
    cells, assays = list(cells), list(assays)
    rng = np.random.default_rng(7)
    (root / "tracks").mkdir(parents=True)
    for i, c in enumerate(cells):
        for k, a in enumerate(assays):
            with BigWigWriter(str(root / "tracks" / f"{c}.{a}.imputed.bw"),
                              [("chr1", n_bins * 25)]) as w:
                w.add_block("chr1", 0, rng.gamma(1.0 + i + k, size=n_bins).astype(np.float32))
    (root / "model" / "genome_factors").mkdir(parents=True)
    (root / "model" / "model.json").write_text(json.dumps(
        {"format": "predictd-model/1", "cell_types": cells, "assays": assays}))
    (root / "model" / "factors.npz").write_bytes(b"PK" + bytes(100))
    (root / "model" / "genome_factors" / "block=000000.parquet").write_bytes(bytes(1000))
    (root / "run.json").write_text(json.dumps({"genome": {"name": "hg38"}}))
    return root
