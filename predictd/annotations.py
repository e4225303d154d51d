"""Per-bin region masks from annotation BEDs, for ``mseprom``/``msegene``/``mseenh``
(docs/design.md §8).

A bin belongs to a region when it overlaps at least one of the region's intervals by >= 1 bp.
Bin ``i`` of a chromosome covers ``[bin_size * i, bin_size * (i + 1))``, the last bin being
truncated at the chromosome end, as in the ingest contract (docs/design.md §1).

Regions
-------
- ``prom``: 2 kb upstream of every gene's TSS, strand-aware. On ``+`` the TSS is ``chromStart`` and
  the promoter is ``[chromStart - 2000, chromStart)``; on ``-`` the TSS is ``chromEnd`` and the
  promoter is ``[chromEnd, chromEnd + 2000)``. Genes whose strand is neither ``+`` nor ``-`` have no
  defined upstream and get no promoter (their body still counts in ``gene``).
- ``gene``: gene bodies ``[chromStart, chromEnd)``.
- ``enh``: enhancers. FANTOM5's file is BED12 (two blocks per enhancer, one per bidirectional
  transcription peak); the whole ``chromStart..chromEnd`` span is used, blocks are ignored, because
  the enhancer is the region between and including the peaks.

Coordinates are read as BED (0-based, half-open). The hg38 GENCODE file shipped with the ENCODE
Imputation Challenge scorer was converted from GTF without the -1 shift, so its starts sit one base
to the right; at 25 bp bins this moves a boundary bin in at most 1 of 25 cases and is left as is to
stay comparable with that scorer's inputs.

Examples
--------
>>> m = interval_mask(4, 25, 100, np.array([10, 60]), np.array([26, 61]))
>>> m.astype(int)
array([1, 1, 1, 0])
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from predictd.errors import PredictdError

log = logging.getLogger("predictd.annotations")

#: Upstream promoter length in bp.
PROMOTER_LENGTH = 2000

#: Region keys produced by :func:`region_masks`, in metric column order.
REGION_NAMES: list[str] = ["prom", "gene", "enh"]

#: The annotation BEDs bundled per assembly in ``predictd/data/annotations/<assembly>/`` (their
#: sources in PROVENANCE.md there): genes (BED6 with strand; gives ``prom`` and ``gene``),
#: enhancers (gives ``enh``) and the ENCODE blacklist. mm10 has a blacklist only.
ANNOTATION_FILES: dict[str, dict[str, str]] = {
    "hg19": {"genes": "CollapsedGeneBounds.hg19.bed.gz",
             "enhancers": "F5.hg19.enhancers.bed.gz",
             "blacklist": "hg19-blacklist.v2.bed.gz"},
    "hg38": {"genes": "gencode.v29.genes.gtf.bed.gz",
             "enhancers": "F5.hg38.enhancers.bed.gz",
             "blacklist": "hg38.blacklist.bed.gz"},
    "mm10": {"blacklist": "mm10-blacklist.v2.bed.gz"},
}


@dataclass(frozen=True)
class BedIntervals:
    """Intervals of a BED file as parallel arrays (0-based, half-open).

    Attributes
    ----------
    chrom : numpy.ndarray of str
    start, end : numpy.ndarray of int64
    strand : numpy.ndarray of str
        ``"+"``, ``"-"`` or ``"."`` (``"."`` when the file has fewer than 6 columns).
    """

    chrom: np.ndarray
    start: np.ndarray
    end: np.ndarray
    strand: np.ndarray

    def __len__(self) -> int:
        return int(self.start.size)


def _open_text(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, "rt", encoding="utf-8", errors="replace")


def read_bed(path, need_strand: bool = False) -> BedIntervals:
    """Read a BED file (plain or gzip) into arrays.

    ``track``/``browser`` header lines, ``#`` comments and blank lines are skipped. Only columns
    1-3 (and 6, the strand) are used, so BED6 and BED12 both work.

    Parameters
    ----------
    path : str or pathlib.Path
        Local BED or BED.gz file.
    need_strand : bool
        Require a 6th (strand) column on every line.

    Returns
    -------
    BedIntervals

    Raises
    ------
    PredictdError
        If the file is missing or a line is malformed (message names file and line number).
    """
    path = Path(path)
    if not path.is_file():
        raise PredictdError(f"annotation BED not found: {path}")
    chroms: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    strands: list[str] = []
    # A loop over lines (intervals) is fine: tens of thousands of them, parsed once.
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 3:
                fields = line.split()
            if len(fields) < 3:
                raise PredictdError(f"{path}:{lineno}: BED line needs chrom, start, end")
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                raise PredictdError(
                    f"{path}:{lineno}: BED start/end are not integers: {fields[1]!r}, {fields[2]!r}"
                ) from None
            if start < 0 or end < start:
                raise PredictdError(f"{path}:{lineno}: BED interval [{start}, {end}) is invalid")
            if len(fields) >= 6:
                strand = fields[5]
            elif need_strand:
                raise PredictdError(f"{path}:{lineno}: BED line has no strand (column 6)")
            else:
                strand = "."
            chroms.append(fields[0])
            starts.append(start)
            ends.append(end)
            strands.append(strand if strand in ("+", "-") else ".")
    return BedIntervals(
        chrom=np.array(chroms, dtype=str),
        start=np.array(starts, dtype=np.int64),
        end=np.array(ends, dtype=np.int64),
        strand=np.array(strands, dtype="<U1"),
    )


def n_bins_of(chrom_length: int, bin_size: int) -> int:
    """Number of bins of a chromosome, the last one partial: ``ceil(length / bin_size)``."""
    return -(-int(chrom_length) // int(bin_size))


def interval_mask(
    n_bins: int, bin_size: int, chrom_length: int, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Bins of one chromosome that overlap any interval by >= 1 bp.

    Intervals are clipped to ``[0, chrom_length)``; empty ones are dropped. Cost
    O(n_bins + n_intervals): +1 at each interval's first bin, -1 past its last bin, cumulative sum.

    Parameters
    ----------
    n_bins : int
        Number of bins of the chromosome.
    bin_size : int
        Bin width in bp.
    chrom_length : int
        Chromosome length in bp.
    starts, ends : numpy.ndarray of int
        Half-open intervals in bp (may extend past either chromosome end).

    Returns
    -------
    numpy.ndarray of bool, length ``n_bins``
    """
    starts = np.maximum(np.asarray(starts, dtype=np.int64), 0)
    ends = np.minimum(np.asarray(ends, dtype=np.int64), int(chrom_length))
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0 or n_bins == 0:
        return np.zeros(n_bins, dtype=bool)
    first = starts // bin_size
    stop = np.minimum((ends - 1) // bin_size + 1, n_bins)
    depth = np.bincount(first, minlength=n_bins + 1) - np.bincount(stop, minlength=n_bins + 1)
    return np.cumsum(depth[:n_bins]) > 0


def promoter_intervals(genes: BedIntervals, length: int = PROMOTER_LENGTH) -> BedIntervals:
    """Strand-aware upstream promoters of genes.

    ``+``: ``[start - length, start)``; ``-``: ``[end, end + length)``; other strands dropped.
    Starts below 0 are left to :func:`interval_mask` to clip.
    """
    plus = genes.strand == "+"
    minus = genes.strand == "-"
    keep = plus | minus
    p_start = np.where(plus, genes.start - length, genes.end)
    p_end = np.where(plus, genes.start, genes.end + length)
    return BedIntervals(
        chrom=genes.chrom[keep],
        start=p_start[keep],
        end=p_end[keep],
        strand=genes.strand[keep],
    )


def _chrom_list(genome_chroms) -> list[tuple[str, int]]:
    items = genome_chroms.items() if isinstance(genome_chroms, Mapping) else genome_chroms
    return [(str(name), int(length)) for name, length in items]


def _masks_for(
    intervals: BedIntervals, chroms: list[tuple[str, int]], bin_size: int
) -> dict[str, np.ndarray]:
    # Sort once by chromosome so each chromosome's intervals are one contiguous slice.
    order = np.argsort(intervals.chrom, kind="stable")
    chrom_sorted = intervals.chrom[order]
    out = {}
    for name, length in chroms:
        lo = np.searchsorted(chrom_sorted, name, side="left")
        hi = np.searchsorted(chrom_sorted, name, side="right")
        idx = order[lo:hi]
        out[name] = interval_mask(
            n_bins_of(length, bin_size), bin_size, length, intervals.start[idx], intervals.end[idx]
        )
    return out


def region_masks(
    genome_chroms: Iterable[tuple[str, int]] | Mapping[str, int],
    bin_size: int,
    genes_bed=None,
    enhancers_bed=None,
    promoter_length: int = PROMOTER_LENGTH,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-bin region masks of a genome.

    Parameters
    ----------
    genome_chroms : iterable of (str, int) or mapping
        Chromosome names and lengths in bp, e.g. from a chrom.sizes file. BED intervals on
        chromosomes not listed here are ignored.
    bin_size : int
        Bin width in bp (25 in the contract).
    genes_bed : path, optional
        BED6 of genes with strand (gives ``prom`` and ``gene``).
    enhancers_bed : path, optional
        BED (BED12 fine) of enhancers (gives ``enh``).
    promoter_length : int
        Upstream promoter length in bp.

    Returns
    -------
    dict
        ``{region: {chrom: bool array of n_bins}}`` with ``region`` among ``prom``, ``gene``,
        ``enh`` for the BEDs given; every chromosome of the genome has a mask.

    Examples
    --------
    >>> masks = region_masks([("chr1", 10_000)], 25)  # no BEDs given: no regions
    >>> masks
    {}
    """
    if int(bin_size) <= 0:
        raise PredictdError(f"bin_size must be a positive integer, got {bin_size!r}")
    bin_size = int(bin_size)
    chroms = _chrom_list(genome_chroms)
    out: dict[str, dict[str, np.ndarray]] = {}
    if genes_bed is not None:
        genes = read_bed(genes_bed, need_strand=True)
        out["prom"] = _masks_for(promoter_intervals(genes, promoter_length), chroms, bin_size)
        out["gene"] = _masks_for(genes, chroms, bin_size)
    if enhancers_bed is not None:
        out["enh"] = _masks_for(read_bed(enhancers_bed), chroms, bin_size)
    return out


def concat_chrom_masks(
    masks: Mapping[str, Mapping[str, np.ndarray]], chrom_order: Iterable[str]
) -> dict[str, np.ndarray]:
    """Concatenate per-chromosome masks into whole-track masks.

    The result feeds :func:`predictd.metrics.score_track` for a track whose bins are the
    chromosomes of ``chrom_order`` end to end.

    Parameters
    ----------
    masks : mapping
        Output of :func:`region_masks`.
    chrom_order : iterable of str
        Chromosomes in the order the track's bins are concatenated.

    Returns
    -------
    dict of str to bool array
    """
    chrom_order = list(chrom_order)
    out = {}
    for region, by_chrom in masks.items():
        missing = [c for c in chrom_order if c not in by_chrom]
        if missing:
            raise PredictdError(f"region mask '{region}' has no chromosome {missing[0]!r}")
        out[region] = (
            np.concatenate([by_chrom[c] for c in chrom_order])
            if chrom_order
            else np.zeros(0, dtype=bool)
        )
    return out


#: Assemblies whose annotation BEDs ship in ``predictd/data/annotations/<assembly>/`` (see
#: PROVENANCE.md there).
BUNDLED_ANNOTATIONS: tuple[str, ...] = tuple(ANNOTATION_FILES)


def annotation_beds(assembly: str | None, annotation_dir=None) -> dict[str, Path]:
    """The annotation BEDs of an assembly: genes, enhancers, blacklist.

    Parameters
    ----------
    assembly : str or None
        hg19 and hg38 have bundled genes, enhancers and blacklist, mm10 a blacklist
        (:data:`ANNOTATION_FILES`); other assemblies have none.
    annotation_dir : path, optional
        A directory holding the assembly's file names (hg38's when the assembly has none),
        used instead of the bundled ones.

    Returns
    -------
    dict of str to pathlib.Path
        Keys among ``genes``, ``enhancers``, ``blacklist`` for the files found (maybe empty).
    """
    if annotation_dir is not None:
        d = Path(annotation_dir)
        names = ANNOTATION_FILES.get(str(assembly), ANNOTATION_FILES["hg38"])
    elif assembly in BUNDLED_ANNOTATIONS:
        d = Path(__file__).resolve().parent / "data" / "annotations" / str(assembly)
        names = ANNOTATION_FILES[str(assembly)]
    else:
        return {}
    return {k: d / f for k, f in names.items() if (d / f).is_file()}


def assembly_of(genome: Mapping) -> str | None:
    """The bundled assembly (hg19, hg38, mm10) a genome is, or None.

    ``genome`` is a tensor header's genome, ``{"name": ..., "chroms": [[name, length], ...]}``.
    A bundled name is taken as is; otherwise the genome is that assembly when every one of its
    chromosomes has the assembly's length for that name (a chr22-only chrom.sizes of hg38 is
    hg38), so a user's own chrom.sizes file gets its annotations too.
    """
    from .genome import BUNDLED_GENOMES, load_genome

    if genome.get("name") in BUNDLED_GENOMES:
        return str(genome["name"])
    chroms = {str(c): int(n) for c, n in genome["chroms"]}
    for name in BUNDLED_GENOMES:
        sizes = load_genome(name).sizes
        if chroms and all(sizes.get(c) == n for c, n in chroms.items()):
            return name
    return None


def genome_region_masks(genome: Mapping, bin_size: int) -> dict[str, np.ndarray] | None:
    """The mseprom/msegene/mseenh masks over a whole genome (bins concatenated in the genome's
    chromosome order), or None when the genome's assembly has no bundled genes (hg19 and hg38
    have).

    ``genome`` is a tensor header's genome: ``{"name": ..., "chroms": [[name, length], ...]}``.
    """
    beds = annotation_beds(assembly_of(genome))
    if "genes" not in beds:
        return None
    chroms = [(str(c), int(n)) for c, n in genome["chroms"]]
    per_chrom = region_masks(chroms, bin_size, genes_bed=beds["genes"],
                             enhancers_bed=beds.get("enhancers"))
    return concat_chrom_masks(per_chrom, [c for c, _ in chroms])


def genome_blacklist(genome: Mapping, bin_size: int) -> np.ndarray | None:
    """Bins of a whole genome (chromosome order, end to end) that overlap the ENCODE blacklist
    of its assembly, left out of scoring; None when the assembly has no bundled blacklist
    (hg19, hg38 and mm10 have)."""
    beds = annotation_beds(assembly_of(genome))
    if "blacklist" not in beds:
        return None
    chroms = [(str(c), int(n)) for c, n in genome["chroms"]]
    per_chrom = _masks_for(read_bed(beds["blacklist"]), chroms, bin_size)
    return np.concatenate([per_chrom[c] for c, _ in chroms])
