"""Ingest: bigWig tracks of a manifest → the binned, transformed tensor (Parquet + header).

Two steps, each idempotent and resumable:

1. *check* — per track: fetch (http, s3, gs, Azure) or locate the file, verify its md5 when the
   manifest gives one, open it and list its chromosomes. Every problem is reported before any heavy work
   starts. A Spark job of one task per track; under a local master with local files, the driver
   checks them itself (checking a local file costs far less than a Spark job's latency).
2. *build* — one task per tensor block (chromosome, bin range): read that range of every track
   in chunks, bin to ``bin_size`` (docs/design.md §1: mean over the bin's bases, no data = 0),
   transform, and write the Parquet block (a genome chromosome missing from a track stays
   missing, not zero). A small JSON marker per block records completion and the per-track
   statistics. Block-major, so nothing is staged: each value is read once and written once.

The header is written last: its presence means the tensor is complete.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import storage, tensor
from .bigwig import nonfinite_summary, open_bigwig, read_binned
from .errors import PredictdError
from .genome import Genome
from .manifest import Track
from .spark import default_parallelism, map_tasks
from .transform import forward

log = logging.getLogger("predictd.ingest")


def scratch_dir() -> str:
    d = os.environ.get("PREDICTD_SCRATCH") or os.path.join(tempfile.gettempdir(),
                                                           "predictd-cache")
    os.makedirs(d, exist_ok=True)
    return d


def _shown(track: Track) -> str:
    """The track's URI for messages and stored metadata: a pre-signed URL's signature and any
    password are masked (they are credentials)."""
    return storage.display_uri(track.uri)


def local_copy(track: Track) -> str:
    """A local path for the track's file (downloaded to scratch if remote), md5-checked."""
    if track.is_remote:
        return storage.fetch_to_local(track.uri, scratch_dir(), md5=track.md5)
    path = track.uri
    storage.check_readable(path, f"manifest row {track.row} ({track.name}): ")
    if track.md5:
        got = storage.file_md5(path)
        if got != track.md5.lower():
            raise PredictdError(f"md5 mismatch for {path} (manifest row {track.row}): "
                                f"expected {track.md5}, got {got}")
    return path


# --------------------------------------------------------------------------- task functions
def _check_task(track: Track, payload) -> dict:
    path = local_copy(track)
    bw = open_bigwig(path)
    try:
        chroms = dict(bw.chroms())
    except RuntimeError:
        raise PredictdError(f"corrupt bigWig file {_shown(track)}: cannot read chromosome list") \
            from None
    finally:
        bw.close()
    # the header's summary covers every value, so NaN/inf are caught here instead of after
    # hours of binning (the binning still refuses inf: old files may have no summary)
    bad = nonfinite_summary(path)
    if bad:
        raise PredictdError(f"{_shown(track)} (manifest row {track.row}): bigWig has NaN or "
                            f"infinite values (header summary: {bad}); no-data stretches must "
                            "be left out, not NaN")
    return {"chroms": chroms, "bytes": os.path.getsize(path)}


def _marker(root: str, chrom: str, block: int) -> str:
    return storage.join(root, "_staging", f"chrom={chrom}", f"block={block:06d}.json")


# Each worker process remembers the tracks it has located (and, for remote ones, fetched and
# verified) so that a task of many blocks does not hash or HEAD every file once per block.
_LOCATED: dict[str, str] = {}


def _located(track: Track) -> str:
    path = _LOCATED.get(track.uri)
    if path is None or not os.path.exists(path):
        path = _LOCATED[track.uri] = local_copy(track)
    return path


def _block_task(item, payload) -> list[dict]:
    """Read, bin and transform one genome block of every track, and write it as one Parquet
    block; then a small marker with the block's per-track statistics (its presence means the
    block is done)."""
    chrom, length, block, start, n = item
    root, tracks, listed, bin_size, transform = payload
    marker = _marker(root, chrom, block)
    if storage.exists(marker):
        return json.loads(storage.read_text(marker))
    # column-major: each track fills, and Parquet encodes, one contiguous column
    X = np.full((n, len(tracks)), np.nan, dtype=np.float32, order="F")
    stats = []
    for j, track in enumerate(tracks):
        if chrom not in listed[j]:
            continue  # a genome chromosome the track lacks stays missing, not zero
        values = read_binned(_located(track), chrom, length, bin_size, source=_shown(track),
                             bins=(start, start + n))
        if values is None:  # listed in the check, so the file changed under us
            raise PredictdError(f"{_shown(track)}: chromosome {chrom} disappeared from the file")
        y = forward(values, transform)
        if not np.isfinite(y).all():
            raise PredictdError(f"{_shown(track)}: {chrom} has values that are not finite after "
                                f"the {transform} transform")
        X[:, j] = y
        stats.append({"exp": track.name, "chrom": chrom, "bins": int(n),
                      "sum": float(y.sum(dtype=np.float64)), "max": float(y.max(initial=0.0)),
                      "nonzero": int(np.count_nonzero(y))})
    tensor.write_block(root, chrom, block, start, X, [t.name for t in tracks], bin_size)
    storage.write_text_atomic(marker, json.dumps(stats))
    return stats


# --------------------------------------------------------------------------- the stage
def _slices(sc) -> int | None:
    """Tasks per ingest job: one per core. Each task and job adds Spark latency comparable to
    the work of building a small block (docs/performance.md); the blocks keep their own resume
    markers, so coarse tasks lose nothing on a retry."""
    return None if sc is None else default_parallelism(sc)


def check_tracks(sc, tracks: list[Track], genome: Genome) -> list[dict]:
    """Validate every track (job 1). Returns per-track info; raises on the first problem.

    Local files under a local master are checked by the driver itself, a thread per core (md5
    hashing releases the GIL): checking a local file costs far less than a Spark job.
    """
    if sc is None:
        infos = [_check_task(t, None) for t in tracks]
    elif sc.master.startswith("local") and not any(t.is_remote for t in tracks):
        with ThreadPoolExecutor(default_parallelism(sc)) as pool:
            infos = list(pool.map(lambda t: _check_task(t, None), tracks))
    else:
        infos = map_tasks(sc, _check_task, tracks, n_slices=_slices(sc), desc="check inputs",
                          unit="track")
    gsizes = genome.sizes
    for t, info in zip(tracks, infos):
        chroms = info["chroms"]
        shared = [c for c in chroms if c in gsizes]
        if not shared:
            some = ", ".join(list(chroms)[:3])
            raise PredictdError(f"{_shown(t)} (manifest row {t.row}): no chromosome name matches "
                                f"genome {genome.name} (file has {some}...; genome has "
                                f"{', '.join(genome.names[:3])}...)")
        for c in shared:
            if chroms[c] > gsizes[c]:
                raise PredictdError(f"chromosome size mismatch: {_shown(t)} has {c} of {chroms[c]} "
                                    f"bp, genome {genome.name} says {gsizes[c]} bp "
                                    f"(wrong assembly?)")
        short = [c for c in shared if chroms[c] < gsizes[c]]
        if short:
            # tools write a bigWig's header from the chrom.sizes they were given: a shorter
            # chromosome is most often another assembly's (hg38's chr1 is hg19's less 294 kb)
            c = short[0]
            log.warning("%s: %s is %d bp in the file, %d bp in genome %s (wrong assembly?); "
                        "the bins past its end are missing%s", t.name, c, chroms[c], gsizes[c],
                        genome.name, f" (and {len(short) - 1} more chromosome(s))"
                        if len(short) > 1 else "")
        extra = [c for c in chroms if c not in gsizes]
        if extra:
            log.warning("%s: skipping %d chromosome(s) not in genome %s: %s", t.name,
                        len(extra), genome.name, ", ".join(extra[:5]))
    return infos


def ingest(sc, tracks: list[Track], genome: Genome, cfg, root: str,
           manifest_checksum: str = "", checked: list[dict] | None = None
           ) -> tensor.TensorHeader:
    """Build (or finish building) the tensor of ``tracks`` under ``root``; ``checked`` is
    :func:`check_tracks`' result when the caller has already run it."""
    infos = checked if checked is not None else check_tracks(sc, tracks, genome)
    experiments = [t.name for t in tracks]
    cell_types = sorted({t.cell_type for t in tracks})
    assays = sorted({t.assay for t in tracks})
    listed = [frozenset(info["chroms"]) for info in infos]
    sizes = genome.sizes
    blocks = [(chrom, sizes[chrom], b, start, n)
              for chrom, b, start, n in tensor.genome_blocks(genome, cfg.bin_size, cfg.block_bins)]
    # big blocks first (a chromosome's last block is short) so the tail of the job is short
    blocks.sort(key=lambda it: -it[4])
    stats = [s for per_block in map_tasks(sc, _block_task, blocks,
                                          (root, tracks, listed, cfg.bin_size, cfg.transform),
                                          n_slices=_slices(sc), desc="ingest", unit="block")
             for s in per_block]
    by_exp: dict[str, list[dict]] = {t.name: [] for t in tracks}
    for s in stats:
        by_exp[s["exp"]].append(s)
    track_stats = {}
    for t in tracks:
        mine = by_exp[t.name]
        bins = sum(s["bins"] for s in mine)
        chroms = sorted({s["chrom"] for s in mine})
        total = sum(s["sum"] for s in mine)
        nz = sum(s["nonzero"] for s in mine)
        track_stats[t.name] = {"bins": bins, "mean": total / max(bins, 1),
                               "max": max((s["max"] for s in mine), default=0.0),
                               "nonzero_fraction": nz / max(bins, 1),
                               "chroms": chroms}
        if nz == 0:
            log.warning("%s (%s) is all zeros over the genome: kept, but check the file",
                        t.name, _shown(t))
    header = tensor.TensorHeader(
        experiments=experiments, cell_types=cell_types, assays=assays,
        genome={"name": genome.name, "chroms": [list(c) for c in genome.chroms]},
        bin_size=cfg.bin_size, block_bins=cfg.block_bins, transform=cfg.transform,
        sources={t.name: {"uri": _shown(t), "md5": t.md5, "bytes": i["bytes"]}
                 for t, i in zip(tracks, infos)},
        track_stats=track_stats, manifest_checksum=manifest_checksum)
    tensor.write_header(root, header)
    storage.delete_prefix(storage.join(root, "_staging"))
    return header
