"""Which tracks a run or an extension writes, and where (``--targets``, ``--cell-type``,
``--assay``, ``--regions``).

One home for the selection options of ``predictd run``/``impute`` and ``predictd extend``:

- :func:`parse_pairs` reads ``CELL:ASSAY`` values (``--targets``, ``--holdout``);
- :func:`select_pairs` narrows a list of (cell type, assay) pairs by exact targets and by shell
  patterns on cell type and assay (as ``predictd download`` matches them);
- :class:`Regions` is a BED of regions checked against the genome; a write task asks it which
  bins of a block to compute (:meth:`Regions.block_mask`), and a track holds no data elsewhere.

Examples
--------
>>> pairs = [("E003", "H3K4me3"), ("E003", "H3K27me3"), ("E116", "H3K4me3")]
>>> select_pairs(pairs, assays=["H3K4*"])
[('E003', 'H3K4me3'), ('E116', 'H3K4me3')]
>>> select_pairs(pairs, targets=[("E116", "H3K4me3")], cell_types=["E003"])
[('E003', 'H3K4me3'), ('E003', 'H3K27me3'), ('E116', 'H3K4me3')]
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import numpy as np

from . import storage
from .errors import PredictdError
from .names import check_cell_type, check_name

log = logging.getLogger(__name__)


def parse_pairs(values, option: str) -> list[tuple[str, str]]:
    """``CELL:ASSAY`` (or ``CELL.ASSAY``) values of ``option`` → (cell type, assay) pairs,
    validated, each at most once."""
    out = []
    for v in values or ():
        sep = ":" if ":" in v else "."
        if sep not in v:
            raise PredictdError(f"{option} {v!r}: expected CELL:ASSAY")
        cell, assay = v.split(sep, 1)
        check_cell_type(cell, "cell type", f"{option} {v}: ")
        check_name(assay, "assay", f"{option} {v}: ")
        if (cell, assay) in out:
            raise PredictdError(f"{option} {v}: given twice")
        out.append((cell, assay))
    return out


def patterns(values) -> list[str]:
    """Names or shell patterns from repeatable, comma-separated option values."""
    return [v.strip() for value in values or () for v in str(value).split(",") if v.strip()]


def matches(value: str, pats: list[str]) -> bool:
    """Whether ``value`` matches one of the shell patterns (an empty list matches all)."""
    return not pats or any(fnmatch.fnmatchcase(value, p) for p in pats)


def select_pairs(pairs, targets=(), cell_types=(), assays=()) -> list[tuple[str, str]]:
    """The pairs to write, in the order of ``pairs``.

    With no selection, every pair. Otherwise the union of the exact ``targets`` and of the
    pairs whose cell type and assay match the patterns (``cell_types`` and ``assays``; a filter
    not given matches every value). A target that is not a pair, or a pattern that matches
    nothing, is an error naming it.
    """
    pairs = [tuple(p) for p in pairs]
    cells, assay_pats = patterns(cell_types), patterns(assays)
    targets = [tuple(t) for t in targets or ()]
    for t in targets:
        if t not in pairs:
            raise PredictdError(f"--targets {t[0]}:{t[1]}: not a (cell type, assay) pair of "
                                "the model")
    for option, pats, values in (("--cell-type", cells, {c for c, _ in pairs}),
                                 ("--assay", assay_pats, {a for _, a in pairs})):
        for p in pats:
            if not any(fnmatch.fnmatchcase(v, p) for v in values):
                raise PredictdError(f"{option} {p}: matches no {option[2:].replace('-', ' ')} "
                                    f"of the model ({', '.join(sorted(values)[:8])}...)")
    if not (targets or cells or assay_pats):
        return pairs
    want = set(targets)
    if cells or assay_pats:
        want |= {p for p in pairs if matches(p[0], cells) and matches(p[1], assay_pats)}
    return [p for p in pairs if p in want]


@dataclass(frozen=True)
class Regions:
    """A BED of regions on a genome: per chromosome, the intervals' starts and ends (bp)."""

    source: str
    intervals: dict  # chrom -> (starts, ends) int64 arrays

    def block_mask(self, chrom: str, start_bin: int, n: int, bin_size: int) -> np.ndarray:
        """Bins ``start_bin … start_bin + n − 1`` of ``chrom`` overlapping a region (≥ 1 bp)."""
        from .annotations import interval_mask
        iv = self.intervals.get(chrom)
        if iv is None:
            return np.zeros(n, dtype=bool)
        offset = int(start_bin) * bin_size
        return interval_mask(n, bin_size, n * bin_size, iv[0] - offset, iv[1] - offset)

    def to_json(self) -> dict:
        return {"source": storage.display_uri(self.source),
                "intervals": int(sum(s.size for s, _ in self.intervals.values())),
                "bp": int(sum((e - s).sum() for s, e in self.intervals.values()))}


def read_regions(path: str, chroms) -> Regions:
    """Read a BED (local or any URI predictd reads) of regions on a genome given as
    ``[(chrom, length), ...]``; a chromosome the genome lacks is an error naming it."""
    from .annotations import read_bed
    local = path
    if storage.is_remote(path):
        from .ingest import scratch_dir
        local = storage.fetch_to_local(path, scratch_dir())
    try:
        bed = read_bed(local)
    except PredictdError as e:
        raise PredictdError(f"--regions: {e}") from None
    sizes = {c: int(n) for c, n in chroms}
    unknown = sorted(set(bed.chrom.tolist()) - set(sizes))
    if unknown:
        raise PredictdError(f"--regions {path}: chromosome {unknown[0]} is not in the genome "
                            f"({', '.join(list(sizes)[:4])}...)")
    if len(bed) == 0:
        raise PredictdError(f"--regions {path}: no region in the file")
    ends = np.array([sizes[c] for c in bed.chrom.tolist()])
    past = np.flatnonzero(bed.end > ends)
    if past.size:
        i = past[0]
        if bed.start[i] >= ends[i]:
            raise PredictdError(f"--regions {path}: region {bed.chrom[i]}:{bed.start[i]}-"
                                f"{bed.end[i]} starts past the chromosome's end ({ends[i]})")
        log.warning("--regions %s: %d region(s) run past their chromosome's end, e.g. %s:%d-%d "
                    "(%d bp); clipped there", path, past.size, bed.chrom[i], bed.start[i],
                    bed.end[i], ends[i])
    intervals = {}
    for c in sizes:
        sel = bed.chrom == c
        if sel.any():
            intervals[c] = (bed.start[sel], bed.end[sel])
    return Regions(path, intervals)


@dataclass(frozen=True)
class Selection:
    """What the write stage of ``predictd run``/``impute`` produces: the chosen pairs (exact
    ``targets`` and ``cell_types``/``assays`` patterns; none = every pair) and ``regions``."""

    targets: tuple = ()
    cell_types: tuple = ()
    assays: tuple = ()
    regions: Regions | None = None

    def __bool__(self) -> bool:
        return bool(self.targets or self.cell_types or self.assays or self.regions)

    def track_indices(self, cell_types: list[str], assays: list[str]) -> list[int] | None:
        """Indices (cell-type-major, as :meth:`Model.track_names`) of the chosen tracks, or
        None for every track."""
        if not (self.targets or self.cell_types or self.assays):
            return None
        pairs = [(c, a) for c in cell_types for a in assays]
        chosen = set(select_pairs(pairs, self.targets, self.cell_types, self.assays))
        return [i for i, p in enumerate(pairs) if p in chosen]

    def to_json(self) -> dict:
        return {"targets": [f"{c}:{a}" for c, a in self.targets],
                "cell_types": list(self.cell_types), "assays": list(self.assays),
                "regions": None if self.regions is None else self.regions.to_json()}


def open_selection(targets=(), cell_types=(), assays=(), regions: str | None = None, *,
                   cell_type_names, assay_names, chroms) -> Selection:
    """Validate the selection options against a manifest's cell types and assays and a
    genome's chromosomes, before anything is written."""
    sel = Selection(tuple(parse_pairs(targets, "--targets")), tuple(patterns(cell_types)),
                    tuple(patterns(assays)),
                    read_regions(regions, chroms) if regions else None)
    sel.track_indices(list(cell_type_names), list(assay_names))  # raises naming a bad one
    return sel
