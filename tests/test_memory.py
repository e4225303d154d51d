"""Imputation streams over blocks: its peak memory does not grow with the number of bins.

The same imputation (solve the genome factors of every block, then write every track) runs in a
fresh child process — in-process, no Spark, as ``predictd run --no-spark`` does — on two
synthetic tensors that differ only in length (10x the bins). The child reports its own peak
resident memory (VmHWM). No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from predictd import synthetic
from predictd.model import Model

pytestmark = pytest.mark.slow

CELLS = ["E003", "E017"]
ASSAYS = ["H3K4me3", "H3K27me3", "H3K36me3", "H3K9me3"]
OBSERVED = [("E003", "H3K4me3"), ("E003", "H3K27me3"), ("E003", "H3K36me3"),
            ("E017", "H3K4me3"), ("E017", "H3K9me3"), ("E003", "H3K9me3")]
BLOCK_BINS = 16_384

CHILD = r"""
import json, sys
from predictd import impute, tensor
from predictd.config import Config
from predictd.model import Model
root, model_dir, out = sys.argv[1:4]
cfg = Config().replace(block_bins=%d)
header = tensor.read_header(root)
model = Model.load(model_dir)
gf = out + "/gf"
impute.solve_genome(None, header, root, gf, model, cfg)
written = impute.write_tracks(None, header, out, gf, model, cfg)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"peak_kb": hwm, "tracks": len(written)}))
""" % BLOCK_BINS


def _model(path) -> None:
    rng = np.random.default_rng(0)
    L = 20
    Model(cell_types=CELLS, assays=ASSAYS, mu=0.3, bC=rng.normal(size=2) * 0.05,
          bA=rng.normal(size=4) * 0.05, C=rng.normal(size=(2, L)) * 0.3,
          A=rng.normal(size=(4, L)) * 0.3, observed=OBSERVED).save(str(path))


def _impute_peak(tmp_path, n_bins: int) -> dict:
    root = tmp_path / f"tensor-{n_bins}"
    synthetic.write_tensor(str(root), n_bins, CELLS, ASSAYS, OBSERVED, block_bins=BLOCK_BINS)
    out = tmp_path / f"out-{n_bins}"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), str(tmp_path / "model"),
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["tracks"] == len(CELLS) * len(ASSAYS)
    for c in CELLS:
        for a in ASSAYS:
            assert (out / "tracks" / f"{c}.{a}.imputed.bw").stat().st_size > 0
    return res


def test_imputation_peak_memory_does_not_grow_with_bins(tmp_path):
    try:
        open("/proc/self/status").close()
    except OSError:
        pytest.skip("needs /proc to read the child's peak memory")
    _model(tmp_path / "model")
    small_bins, large_bins = 10 * BLOCK_BINS, 100 * BLOCK_BINS  # 163,840 and 1,638,400
    small = _impute_peak(tmp_path, small_bins)
    large = _impute_peak(tmp_path, large_bins)
    # What may grow: each open track's first-zoom-level sums for its current chromosome (40
    # bytes per 16 bins, predictd.bigwig.write) — 8 tracks x 1.47 M more bins = 28 MiB here.
    # Beyond that, the large run's imputed values alone (8 tracks x 1.6 M bins x 4 bytes = 52 MB)
    # would show up if anything held a whole track or the whole genome's factors in memory.
    zoom_kb = 8 * (large_bins - small_bins) // 16 * 40 / 1024
    grown = large["peak_kb"] - small["peak_kb"] - zoom_kb
    assert grown < 15_000, (small, large, zoom_kb)
