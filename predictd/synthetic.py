"""Synthetic data of realistic shape, for benchmarks and scale tests.

Two products:

* :func:`roadmap_pattern` — Roadmap Epigenomics' shape: 127 epigenomes × 24 marks with 1,014
  observed experiments. The 819 pairs whose files are confirmed by the bundled manifest
  (``data_manifests/roadmap_consolidated_pval.tsv``: five core marks everywhere, DNase / H3K27ac /
  H3K9ac where listed) are taken as they are; the other 195 are drawn among the 16 sparsely
  profiled marks, favouring the epigenomes that already have the most marks (in Roadmap the extra
  marks went to the ES, iPS and IMR-90 reference epigenomes).
* :func:`write_tensor` — a low-rank tensor with noise in arcsinh units (values ≥ 0, genome-wide
  mean ≈ 0.3, sparse peaks up to ≈ 5–7, as in the shared Roadmap pilot tracks), written directly
  as a predictd tensor (Parquet blocks + header), so training and imputation can run on
  Roadmap-sized data without bigWigs. Each block is generated from a generator seeded by
  ``(seed, block)``: the same arguments give the same bytes, block by block, in bounded memory.

Examples
--------
>>> cells, assays, observed = roadmap_pattern()
>>> len(cells), len(assays), len(observed)
(127, 24, 1014)
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import tensor
from .model import experiment_features
from .names import experiment_name

#: The 24 marks of the PREDICTD / Avocado Roadmap tensor: five core marks, the three widely
#: profiled extra assays, then the 16 sparse marks roughly by how many epigenomes have them.
ROADMAP_CORE = ("H3K4me1", "H3K4me3", "H3K27me3", "H3K36me3", "H3K9me3")
ROADMAP_EXTRA = ("DNase", "H3K27ac", "H3K9ac")
ROADMAP_SPARSE = ("H3K4me2", "H2A.Z", "H3K79me2", "H4K20me1", "H3K79me1", "H3K4ac", "H4K8ac",
                  "H3K23ac", "H3K18ac", "H2BK5ac", "H2BK120ac", "H2AK5ac", "H3K14ac",
                  "H2BK12ac", "H4K91ac", "H2BK15ac")
ROADMAP_ASSAYS = ROADMAP_CORE + ROADMAP_EXTRA + ROADMAP_SPARSE
ROADMAP_OBSERVED = 1014
#: Roadmap epigenome IDs E001–E129; E060 and E064 were never released.
ROADMAP_CELL_TYPES = tuple(f"E{i:03d}" for i in range(1, 130) if i not in (60, 64))

_MANIFEST = Path(__file__).resolve().parent.parent / "data_manifests" / \
    "roadmap_consolidated_pval.tsv"


def _confirmed_pairs(manifest: str | os.PathLike | None) -> list[tuple[str, str]]:
    """Pairs listed in the bundled Roadmap manifest, or, without it, the core marks of every
    epigenome (the part of the pattern that is certain)."""
    path = Path(manifest) if manifest else _MANIFEST
    if path.exists():
        with open(path, newline="") as fh:
            rows = csv.DictReader(fh, delimiter="\t")
            return [(r["cell_type"], r["assay"]) for r in rows]
    return [(c, a) for c in ROADMAP_CELL_TYPES for a in ROADMAP_CORE]


def roadmap_pattern(seed: int = 0, n_observed: int = ROADMAP_OBSERVED,
                    manifest: str | os.PathLike | None = None
                    ) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Roadmap's cell types, assays and a realistic set of observed (cell type, assay) pairs.

    Parameters
    ----------
    seed : int
        Seeds the draw of the pairs not confirmed by the manifest.
    n_observed : int
        Total observed pairs (Roadmap: 1,014 of 127 × 24).
    manifest : path, optional
        A Roadmap manifest (TSV with ``cell_type`` and ``assay``); defaults to the bundled one.

    Returns
    -------
    cell_types, assays : list of str
    observed : list of (cell_type, assay)
        Sorted by cell type, then by assay order.
    """
    cells, assays = list(ROADMAP_CELL_TYPES), list(ROADMAP_ASSAYS)
    ci = {c: i for i, c in enumerate(cells)}
    ai = {a: i for i, a in enumerate(assays)}
    obs = np.zeros((len(cells), len(assays)), dtype=bool)
    for c, a in _confirmed_pairs(manifest):
        if c in ci and a in ai:
            obs[ci[c], ai[a]] = True
    todo = n_observed - int(obs.sum())
    if todo < 0:
        raise ValueError(f"n_observed={n_observed} is below the {int(obs.sum())} confirmed pairs")
    if todo:
        # Cell weight grows steeply with the marks a cell already has; sparse marks earlier in
        # ROADMAP_SPARSE are more common. Gumbel top-k draws without replacement by weight.
        w_cell = obs.sum(axis=1).astype(np.float64) ** 8
        w_assay = np.zeros(len(assays))
        sparse = [ai[a] for a in ROADMAP_SPARSE]
        w_assay[sparse] = 1.0 / np.arange(1, len(sparse) + 1)
        logw = np.log(np.outer(w_cell, w_assay) + 1e-300)
        logw[obs] = -np.inf
        g = np.random.default_rng([seed, 1014]).gumbel(size=logw.shape)
        flat = np.argsort(-(logw + g), axis=None, kind="stable")[:todo]
        obs.flat[flat] = True
    observed = [(cells[j], assays[k]) for j, k in zip(*np.nonzero(obs))]
    return cells, assays, observed


@dataclass
class SyntheticModel:
    """The generating factors of a synthetic tensor (ground truth for tests)."""

    C: np.ndarray          # cell types × rank
    A: np.ndarray          # assays × rank
    exp_bias: np.ndarray   # per observed experiment
    noise: float
    peak_rate: float


def synthetic_model(n_cell_types: int, n_assays: int, n_experiments: int, rank: int = 10,
                    noise: float = 0.12, peak_rate: float = 0.04, seed: int = 0
                    ) -> SyntheticModel:
    """Random non-negative loadings whose products put peaks at ≈ 3–6 arcsinh units."""
    rng = np.random.default_rng([seed, 11])
    C = rng.gamma(2.0, 0.5, size=(n_cell_types, rank))
    A = rng.gamma(2.0, 0.5, size=(n_assays, rank))
    b = rng.uniform(0.05, 0.3, size=n_experiments)
    return SyntheticModel(C, A, b, noise, peak_rate)


def synthetic_block(m: SyntheticModel, exp_cell: np.ndarray, exp_assay: np.ndarray, n: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``n`` bins × experiments (float32) of non-negative signal in arcsinh units.

    Each bin is active in a few latent "states" (sparse exponential genome factors). The signal
    is ``bias + 1.6 · log1p(G · (C_j ⊙ A_k)ᵀ)`` — low rank before a compressing link, as
    arcsinh compresses p-values — plus bell-shaped noise, clipped at 0 like −log10 p-values.
    The noise is a sum of two uniforms (triangular, std ``noise``): numpy draws uniforms ~5x
    faster than normals, and noise generation dominates the cost at Roadmap scale.
    """
    G = genome_states(m, n, rng)
    return _signal(m.C, m.A, m.exp_bias, m.noise, G, exp_cell, exp_assay, rng)


def genome_states(m: SyntheticModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """The bins' sparse latent states (``n`` × rank), the first draws of a block's generator."""
    rank = m.C.shape[1]
    active = rng.random((n, rank), dtype=np.float32) < m.peak_rate
    return rng.standard_exponential((n, rank), dtype=np.float32) * active


def _signal(C, A, exp_bias, noise, G, exp_cell, exp_assay, rng) -> np.ndarray:
    rank = C.shape[1]
    n, E = G.shape[0], len(exp_cell)
    Z = experiment_features(C, A, exp_cell, exp_assay).astype(np.float32) / rank ** 0.5
    X = G @ Z.T
    np.log1p(X, out=X)
    X *= np.float32(1.6)
    X += exp_bias.astype(np.float32)[None, :]
    half_width = np.float32(noise * 6 ** 0.5)
    u = rng.random((n, E), dtype=np.float32)
    u += rng.random((n, E), dtype=np.float32)
    u -= np.float32(1.0)
    u *= half_width
    X += u
    np.maximum(X, 0.0, out=X)
    return X


def write_tensor(root: str, n_bins: int, cell_types: list[str], assays: list[str],
                 observed: list[tuple[str, str]], *, rank: int = 10, seed: int = 0,
                 block_bins: int = 65_536, bin_size: int = 25, chrom: str = "synth",
                 noise: float = 0.12) -> tensor.TensorHeader:
    """Write a synthetic tensor (Parquet blocks + header) of ``n_bins`` bins on one chromosome.

    Parameters
    ----------
    root : str
        Tensor root (local directory or ``s3://``, ``gs://`` or Azure prefix).
    n_bins : int
        Genome bins; the pseudo-genome is one chromosome of ``n_bins * bin_size`` bp.
    cell_types, assays : list of str
    observed : list of (cell_type, assay)
        The experiments (columns), e.g. from :func:`roadmap_pattern`.
    rank, seed, noise
        Generating model (see :func:`synthetic_model`).
    block_bins, bin_size, chrom
        Tensor layout.

    Returns
    -------
    predictd.tensor.TensorHeader
        The header written last (``transform = "none"``: values are already arcsinh units).
    """
    ci = {c: i for i, c in enumerate(cell_types)}
    ai = {a: i for i, a in enumerate(assays)}
    exp_cell = np.array([ci[c] for c, _ in observed])
    exp_assay = np.array([ai[a] for _, a in observed])
    names = [experiment_name(c, a) for c, a in observed]
    m = synthetic_model(len(cell_types), len(assays), len(observed), rank=rank, noise=noise,
                        seed=seed)
    genome = {"name": "synthetic", "chroms": [[chrom, int(n_bins) * bin_size]]}
    header = tensor.TensorHeader(experiments=names, cell_types=list(cell_types),
                                 assays=list(assays), genome=genome, bin_size=bin_size,
                                 block_bins=block_bins, transform="none",
                                 sources={n: {"uri": "synthetic", "md5": "", "bytes": 0}
                                          for n in names},
                                 manifest_checksum=f"synthetic-{seed}-{rank}-{n_bins}")
    total = np.zeros(len(names))
    for chrom_name, block, start, n in header.blocks():
        rng = np.random.default_rng([seed, block])
        X = synthetic_block(m, exp_cell, exp_assay, n, rng)
        total += X.sum(axis=0, dtype=np.float64)
        tensor.write_block(root, chrom_name, block, start, X, names, bin_size)
    header.track_stats = {n: {"bins": int(n_bins), "mean": float(t / n_bins)}
                          for n, t in zip(names, total)}
    tensor.write_header(root, header)
    return header


def synthetic_tracks(n_bins: int, cell_types: list[str], assays: list[str],
                     observed: list[tuple[str, str]], *, rank: int = 10, seed: int = 0
                     ) -> dict[str, np.ndarray]:
    """``{"cell.assay": float32 arcsinh values}`` for each observed pair, in memory (benchmarks
    write them as bigWigs when the shared Roadmap tracks are absent)."""
    ci = {c: i for i, c in enumerate(cell_types)}
    ai = {a: i for i, a in enumerate(assays)}
    exp_cell = np.array([ci[c] for c, _ in observed])
    exp_assay = np.array([ai[a] for _, a in observed])
    m = synthetic_model(len(cell_types), len(assays), len(observed), rank=rank, seed=seed)
    X = synthetic_block(m, exp_cell, exp_assay, n_bins, np.random.default_rng([seed, 0]))
    return {experiment_name(c, a): np.ascontiguousarray(X[:, e])
            for e, (c, a) in enumerate(observed)}


def new_cell_type_tracks(n_bins: int, cell_types: list[str], assays: list[str],
                         observed: list[tuple[str, str]], marks: list[str], *, rank: int = 10,
                         seed: int = 0, block_bins: int = 65_536, noise: float = 0.12,
                         cell_seed: int = 1) -> dict[str, np.ndarray]:
    """``{assay: float32 values}`` of ``marks`` in one more cell type of the tensor
    :func:`write_tensor` writes with the same arguments — a new sample for reference imputation.

    Its loadings and biases are drawn as the tensor's cell types' are (from a stream of its own,
    ``cell_seed``); every bin keeps the tensor's latent states (each block's first draws), so
    the new cell type shares the tensor's genome and the tensor itself is unchanged."""
    m = synthetic_model(len(cell_types), len(assays), len(observed), rank=rank, noise=noise,
                        seed=seed)
    own = np.random.default_rng([seed, cell_seed, 13])
    C = own.gamma(2.0, 0.5, size=(1, rank))
    bias = own.uniform(0.05, 0.3, size=len(marks))
    ai = {a: i for i, a in enumerate(assays)}
    exp_assay = np.array([ai[a] for a in marks])
    exp_cell = np.zeros(len(marks), dtype=int)
    X = np.empty((int(n_bins), len(marks)), dtype=np.float32)
    for block, start in enumerate(range(0, int(n_bins), block_bins)):
        n = min(block_bins, int(n_bins) - start)
        G = genome_states(m, n, np.random.default_rng([seed, block]))
        X[start:start + n] = _signal(C, m.A, bias, noise, G, exp_cell, exp_assay,
                                     np.random.default_rng([seed, cell_seed, 13, block]))
    return {a: np.ascontiguousarray(X[:, i]) for i, a in enumerate(marks)}
