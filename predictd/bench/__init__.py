"""Benchmarks: predictd's stages timed against the limits of this machine, in the same run.

Three runs, each returning one JSON-ready dict (``predictd bench --json`` prints it):

* :func:`run` (:mod:`.standard`) — ingest, train and impute on the 20 Roadmap pilot tracks,
  in this process and through Spark, each stage against the plain operation it cannot beat;
* :func:`scale_out` (:mod:`.scaleout`) — the same train + impute job on a standalone cluster of
  1, 2, … workers, compared with local mode;
* :func:`roadmap_scale` (:mod:`.roadmap`) — a Roadmap-shaped synthetic tensor (127 × 24,
  1,014 experiments, 1.2 M bins) end to end, with whole-genome imputation extrapolated.

The parts they share: :mod:`.probes` (the machine's limits: pyBigWig read and write, numpy
GEMM), :mod:`.measure` (time, CPU time and peak memory of a stage), :mod:`.machine` (CPU, memory,
BLAS), :mod:`.inputs` (tracks, bigWigs, manifest, configuration) and :mod:`.compare` (agreement
of two runs' models and tracks).
"""

from .roadmap import ROADMAP_BINS, roadmap_scale
from .scaleout import scale_out, scale_out_in_child
from .standard import run

__all__ = ["ROADMAP_BINS", "roadmap_scale", "run", "scale_out", "scale_out_in_child"]
