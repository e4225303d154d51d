"""Checks on bigWig files and on what is read from them, each failure a one-line error.

A file's structure (magic numbers, header offsets, the chromosome tree and the data index) is
checked before anything is read from it: libBigWig trusts those offsets and crashes the whole
process on some damaged files. The readers then check each chromosome against the genome
(:func:`check_chrom_range`) and the signal they bin (:func:`check_finite`).

Examples
--------
>>> import numpy as np
>>> check_finite(np.array([1.0, np.inf]), 0, "t.bw", "chr1", 50, 25)
Traceback (most recent call last):
...
predictd.errors.PredictdError: bigWig file t.bw has infinite values in chr1 near chr1:25-50
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import numpy as np

from predictd.errors import PredictdError

from .format import (
    BIGWIG_MAGIC,
    CHROM_TREE_HEADER,
    CHROM_TREE_MAGIC,
    CHROM_TREE_VALUE_SIZE,
    DATA_COUNT,
    HEADER,
    HEADER_START,
    INDEX_HEADER,
    INDEX_HEADER_START,
    INDEX_LEAF,
    INDEX_MAGIC,
    INDEX_NODE,
    MAGIC,
    NODE,
    ZOOM_HEADER,
    Header,
    chrom_tree_items,
)

__all__ = [
    "Layout",
    "check_chrom_range",
    "check_finite",
    "check_structure",
    "check_trees",
]

logger = logging.getLogger(__name__)


class Layout(NamedTuple):
    """What :func:`check_structure` learned of a file: enough to read its data sections."""
    uncompress: int  # uncompressBufSize: 0 means the data blocks are stored raw
    chroms: dict  # name -> (chromosome id, length)
    leaves: np.ndarray  # data-index leaves (format.INDEX_LEAF), in file order
    starts: np.ndarray  # each leaf's (chromosome id << 32 | start), uint64
    ends: np.ndarray  # each leaf's (chromosome id << 32 | end), uint64


def check_structure(path: str) -> Layout:
    """Reject files that are not bigWigs or are truncated, before libBigWig sees them.

    libBigWig trusts the offsets in the header and crashes the whole process (segfault) on some
    truncated files, so the cheap structural facts are checked here first: the magic number at
    both ends of the file (UCSC and libBigWig writers both end the file with it, and UCSC readers
    require it) and header offsets that lie inside the file; then the trees
    (:func:`check_trees`).
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(HEADER.size)
            n_zooms = HEADER_START.unpack_from(head)[2] if len(head) >= HEADER_START.size else 0
            zoom_bytes = fh.read(ZOOM_HEADER.size * n_zooms) if n_zooms else b""
            tail = b""
            if size >= MAGIC.size:
                fh.seek(size - MAGIC.size)
                tail = fh.read(MAGIC.size)
    except OSError as exc:
        raise PredictdError(f"cannot read bigWig file {path}: {exc.strerror or exc}") from exc

    if len(head) < HEADER.size or MAGIC.unpack_from(head)[0] != BIGWIG_MAGIC:
        if len(head) >= MAGIC.size and int.from_bytes(head[:MAGIC.size], "big") == BIGWIG_MAGIC:
            raise PredictdError(f"big-endian bigWig files are not supported: {path}")
        raise PredictdError(f"not a bigWig file (bad magic number): {path}")
    if tail != head[:MAGIC.size]:
        raise PredictdError(f"truncated or corrupt bigWig file (no end marker): {path}")
    header = Header._make(HEADER.unpack(head))
    offsets = [header.chrom_tree_offset, header.data_offset, header.index_offset]
    if header.total_summary_offset:
        offsets.append(header.total_summary_offset)
    if len(zoom_bytes) < ZOOM_HEADER.size * n_zooms:
        raise PredictdError(f"truncated or corrupt bigWig file (zoom headers): {path}")
    for z in range(n_zooms):
        _, _, z_data, z_index = ZOOM_HEADER.unpack_from(zoom_bytes, z * ZOOM_HEADER.size)
        offsets += [z_data, z_index]
    if any(off >= size for off in offsets):
        raise PredictdError(f"truncated or corrupt bigWig file (offsets past end of file): {path}")
    return Layout(header.uncompress_buf_size,
                  *check_trees(path, size, header.chrom_tree_offset, header.data_offset,
                               header.index_offset))


def check_trees(path: str, size: int, chrom_tree: int, data_off: int, index_off: int
                ) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Check the chromosome B+ tree and the data index (R-tree) that libBigWig follows blindly;
    returns ``({name: (id, length)}, data-index leaves, their start keys, their end keys)``
    (a key is chromosome id << 32 | position).

    A damaged key size, node count or chromosome id in the chromosome tree crashes libBigWig
    while opening the file; a damaged chromosome index in the data index silently hides a
    block (its bins would read as "no data"). Both trees are small next to the data (one leaf
    per chromosome, one per compressed block); their items are decoded with numpy.
    """
    def bad(what: str) -> PredictdError:
        return PredictdError(f"corrupt bigWig file ({what}): {path}")

    with open(path, "rb") as fh:
        def read(off: int, n: int, what: str) -> bytes:
            if off < 0 or off + n > size:
                raise bad(what)
            fh.seek(off)
            return fh.read(n)

        # chromosome tree: a header, then nodes; leaves are (name, chromosome id, length)
        magic, block, key_size, val_size, n_chroms, _ = CHROM_TREE_HEADER.unpack(
            read(chrom_tree, CHROM_TREE_HEADER.size, "chromosome tree"))
        if (magic != CHROM_TREE_MAGIC or val_size != CHROM_TREE_VALUE_SIZE
                or not 1 <= key_size <= 255 or block < 1 or not 1 <= n_chroms <= size):
            raise bad("chromosome tree header")
        chroms = _tree_leaves(read, chrom_tree + CHROM_TREE_HEADER.size, block, "chromosome tree",
                              bad, *chrom_tree_items(key_size))
        ids = chroms["id"]
        if (ids.size != n_chroms or (ids >= n_chroms).any() or np.unique(ids).size != ids.size
                or (chroms["size"] == 0).any()):
            raise bad("chromosome tree")
        named = {k.rstrip(b"\0").decode("utf-8", "replace"): (int(i), int(n))
                 for k, i, n in zip(chroms["key"], ids, chroms["size"])}

        # data index: a header, then nodes; leaves point at the compressed data blocks. A
        # file without data (legal: an empty track) has none and a block count of 0.
        if index_off == 0:
            if DATA_COUNT.unpack(read(data_off, DATA_COUNT.size, "data section"))[0] != 0:
                raise bad("data without an index")
            return named, np.zeros(0, INDEX_LEAF), np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        magic, block, n_blocks = INDEX_HEADER_START.unpack(
            read(index_off, INDEX_HEADER_START.size, "data index"))
        if magic != INDEX_MAGIC or block < 1 or n_blocks > size:
            raise bad("data index header")
        leaf = _tree_leaves(read, index_off + INDEX_HEADER.size, block, "data index", bad,
                            INDEX_LEAF, INDEX_NODE, allow_empty=n_blocks == 0)
    start = leaf["start_chrom"].astype(np.uint64) << np.uint64(32) | leaf["start"]
    end = leaf["end_chrom"].astype(np.uint64) << np.uint64(32) | leaf["end"]
    if (leaf.size != n_blocks or (leaf["end_chrom"] >= n_chroms).any() or (start > end).any()
            or (start[1:] < start[:-1]).any() or (leaf["size"] == 0).any()
            or (leaf["offset"] < data_off).any()
            or (leaf["offset"] + leaf["size"] > index_off).any()):
        raise bad("data index")
    # blocks must end inside their chromosomes: a damaged length would otherwise cut a track
    length = np.zeros(int(n_chroms), dtype=np.uint64)
    length[ids] = chroms["size"]
    if ((leaf["start"] > length[leaf["start_chrom"]]).any()
            or (leaf["end"] > length[leaf["end_chrom"]]).any()):
        raise bad("data past the end of a chromosome")
    return named, leaf, start, end


def _tree_leaves(read, root: int, block: int, what: str, bad, leaf_dt, node_dt,
                 allow_empty: bool = False) -> np.ndarray:
    """All leaf items of a bbi tree (B+ tree or R-tree) in order, walking it breadth first
    (every leaf sits at the same depth). Nodes outside the file, visited twice, deeper than any
    real tree or with impossible counts raise ``bad(what)``."""
    leaves, queue, seen = [], [(root, 0)], set()
    for off, depth in iter(lambda: queue.pop(0) if queue else None, None):
        if off in seen or depth > 32:
            raise bad(what)
        seen.add(off)
        is_leaf, _, count = NODE.unpack(read(off, NODE.size, what))
        if is_leaf > 1 or count > block or (count == 0 and not (allow_empty and depth == 0)):
            raise bad(what)
        dt = leaf_dt if is_leaf else node_dt
        items = np.frombuffer(read(off + NODE.size, count * dt.itemsize, what), dt)
        if is_leaf:
            leaves.append(items)
        else:
            queue.extend((int(c), depth + 1) for c in items["child"])
    return np.concatenate(leaves) if leaves else np.zeros(0, leaf_dt)


def check_chrom_range(name: str, chrom: str, file_len: int, chrom_len: int, bin_size: int,
                      bins: tuple[int, int] | None) -> tuple[int, int, int]:
    """``(n_bins, first, stop)`` of a read of bins ``bins`` (default all) of ``chrom``, after the
    checks every reader makes: the file's chromosome no longer than the genome's (a shorter one
    is padded, with a warning) and the bins inside the chromosome."""
    if file_len > chrom_len:
        raise PredictdError(
            f"chromosome size mismatch: file {name} has {chrom} of {file_len} bp, "
            f"genome says {chrom_len} bp (wrong assembly?)"
        )
    n_bins = -(-chrom_len // bin_size)
    lo, hi = (0, n_bins) if bins is None else (int(bins[0]), int(bins[1]))
    if not 0 <= lo <= hi <= n_bins:
        raise ValueError(f"bins {lo}-{hi} outside {chrom}'s {n_bins} bins")
    if file_len < chrom_len and lo == 0:
        logger.warning(
            "%s: %s is %d bp in the file but %d bp in the genome; bases past %d count as no data",
            name, chrom, file_len, chrom_len, file_len,
        )
    return n_bins, lo, hi


def check_finite(means: np.ndarray, first: int, name: str, chrom: str, chrom_len: int,
                 bin_size: int) -> None:
    """Refuse infinite signal in the bin means ``means`` (bins ``first, first + 1, ...`` of
    ``chrom``). Checking the bins, not the bases, is ``bin_size`` times cheaper and catches
    every inf (inf, or inf - inf = NaN)."""
    if not np.isfinite(means).all():
        bad = first + int(np.flatnonzero(~np.isfinite(means))[0])
        raise PredictdError(
            f"bigWig file {name} has infinite values in {chrom} near "
            f"{chrom}:{bad * bin_size}-{min(chrom_len, (bad + 1) * bin_size)}"
        )
