"""predictd's bigWig writer: binned tracks into new files, published atomically.

:class:`BigWigWriter` checks what it is given (header order, finite values) and writes to a
hidden temporary file that is renamed over the destination once complete; :func:`write_bigwig`
writes a whole track in one call. Fetching and uploading are :mod:`predictd.storage`'s job.

Imputed tracks are fixed-size bins over whole chromosomes, so a file is simple: fixed-step
sections of float32 values, an R-tree over the sections, and zoom levels that are sums over
runs of bins, all built with numpy and compressed as zlib streams (by ISA-L's deflate, which
like zlib releases the GIL). The tests read the files back through libBigWig (pyBigWig) and
UCSC's own library (pybbi). The file's structures are those of :mod:`predictd.bigwig.format`,
laid out as::

    header | zoom headers (MAX_ZOOMS slots, unused ones zero) | total summary
    | chromosome B+ tree | data: block count + zlib sections | R-tree index of the sections
    | per zoom level: record count + zlib record blocks + R-tree index | magic

Sections are written as blocks arrive; per chromosome, only the first zoom level's sums are
held (one record per ``ZOOM_BINS`` bins), so memory follows the largest chromosome, not the
genome. Coarser levels are folded from the first when a chromosome ends; their compressed
blocks go to a side file and are appended on close.
"""

from __future__ import annotations

import os
import struct
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from predictd.errors import PredictdError

try:
    # ISA-L's deflate: the same zlib streams, several times faster at the fastest level
    from isal.isal_zlib import compress as _isal_deflate
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    _isal_deflate = zlib.compress

from .format import (
    BEDGRAPH,
    BIGWIG_MAGIC,
    CHROM_TREE_HEADER,
    CHROM_TREE_MAGIC,
    CHROM_TREE_VALUE_SIZE,
    DATA_COUNT,
    DEFAULT_BIN_SIZE,
    FIXED_STEP,
    HEADER,
    INDEX_HEADER,
    INDEX_LEAF,
    INDEX_MAGIC,
    INDEX_NODE,
    MAGIC,
    NODE,
    SECTION,
    SECTION_ITEM,
    SUMMARY,
    VERSION,
    ZOOM_DATA_COUNT,
    ZOOM_HEADER,
    ZOOM_RECORD,
    Header,
    chrom_tree_items,
)

__all__ = ["MAX_ZOOMS", "BigWigWriter", "write_bigwig", "zoom_reductions"]

# How predictd lays out its own files (any value the format allows would be readable):
#: Zoom levels written at most, and the zoom-header slots reserved for them. UCSC tools write up
#: to 10; the browser needs them to draw a whole-chromosome view without reading every base.
MAX_ZOOMS = 10
SECTION_ITEMS = 4096        # values per fixed-step section (16 KiB uncompressed)
ZOOM_ITEMS = 512            # summary records per zoom block (16 KiB uncompressed)
ZOOM_BINS = 16              # bins per record at the first zoom level (400 bp for 25 bp bins)
ZOOM_FACTOR = 4             # each further level covers 4x the bases
TREE_BLOCK = 256            # children per R-tree / B+ tree node
ZLIB_LEVEL = 1              # the fastest: higher levels barely shrink binned float signal
#: Blocks shorter than this are deflated by zlib rather than ISA-L. For them ISA-L shrinks its
#: hash table to the input, a path on which it has written two different (valid) streams for
#: the same block in two processes, so the same tracks could differ in their bytes; zlib's
#: stream depends on the input alone. Only a chromosome's last section and zoom blocks are
#: this short, so the time is unchanged.
ISAL_MIN_BYTES = 4096
#: The largest block once inflated (a reader's buffer size).
UNCOMPRESS_BUF = max(SECTION.size + 4 * SECTION_ITEMS, ZOOM_RECORD.itemsize * ZOOM_ITEMS)


def deflate(body: bytes) -> bytes:
    """A data or zoom block as a zlib stream (level :data:`ZLIB_LEVEL`): by ISA-L, or by zlib
    under :data:`ISAL_MIN_BYTES`."""
    return (_isal_deflate if len(body) >= ISAL_MIN_BYTES else zlib.compress)(body, ZLIB_LEVEL)


def zoom_reductions(chroms, bin_size: int, max_zooms: int = MAX_ZOOMS) -> list[int]:
    """Bases per summary record of each zoom level: 16 bins, then x4, while a level still
    summarises something (its records are shorter than the longest chromosome)."""
    longest = max(n for _, n in chroms)
    out, r = [], ZOOM_BINS * bin_size
    while len(out) < max_zooms and r < longest:
        out.append(r)
        r *= ZOOM_FACTOR
    return out


class BigWigWriter:
    """Stream binned tracks into a new bigWig, published atomically on close.

    Data go to a hidden temporary file beside ``path``; :meth:`close` finishes it (index, zoom
    levels), fsyncs it and renames it over ``path``, so readers never see a partial track.
    :meth:`abort` (called automatically when the ``with`` block raises) deletes the temporary
    file. Several writers can be open at once, so one task can fill many tracks block by block.

    Parameters
    ----------
    path : str or os.PathLike
        Destination bigWig (local; upload it with :func:`predictd.storage.upload_file`).
        Missing parent directories are created.
    chroms : sequence of (str, int)
        Chromosomes and lengths for the header, in the order blocks will be added.
    bin_size : int, default 25
        Bases per bin; every entry spans one bin, the last bin clipped to the chromosome end.
    max_zooms : int, default 10
        Zoom levels to build (libBigWig builds fewer on small files).

    Examples
    --------
    >>> import tempfile, os
    >>> from predictd.bigwig import read_binned
    >>> out = os.path.join(tempfile.mkdtemp(), "t.bw")
    >>> with BigWigWriter(out, [("chr1", 60)]) as w:
    ...     w.add_block("chr1", 0, np.array([1.0, 2.0, 3.0]))
    >>> read_binned(out, "chr1", 60).tolist()
    [1.0, 2.0, 3.0]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        chroms: Sequence[tuple[str, int]],
        bin_size: int = DEFAULT_BIN_SIZE,
        max_zooms: int = MAX_ZOOMS,
    ):
        if bin_size < 1:
            raise ValueError(f"bin_size must be >= 1, got {bin_size}")
        self.path = os.fspath(path)
        self.chroms = [(str(c), int(n)) for c, n in chroms]
        if not self.chroms:
            raise ValueError("a bigWig needs at least one chromosome in its header")
        self._index = {c: i for i, (c, _) in enumerate(self.chroms)}
        if len(self._index) != len(self.chroms):
            raise ValueError("duplicate chromosome names in bigWig header")
        self.bin_size = int(bin_size)
        self.max_zooms = int(max_zooms)
        self._bw = None
        self._tmp: str | None = None
        self._pos = (0, 0)  # (chromosome index, next free bin) — entries must move forward

    def open(self) -> "BigWigWriter":
        """Create the temporary file and write the header; returns ``self``."""
        if self._bw is not None:
            raise RuntimeError(f"BigWigWriter for {self.path} is already open")
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise PredictdError(f"cannot create output directory {parent}: {exc.strerror or exc}") from exc
        if not os.access(parent, os.W_OK):
            raise PredictdError(f"permission denied writing bigWig file: {self.path}")
        tmp = os.path.join(parent, f".{os.path.basename(self.path)}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            self._bw = _BigWigFile(tmp, self.chroms, self.bin_size, self.max_zooms)
        except (OSError, UnicodeEncodeError, struct.error, OverflowError) as exc:
            _remove_quietly(tmp)
            raise PredictdError(f"cannot create bigWig file {self.path}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from exc
        self._tmp = tmp
        return self

    def add_block(self, chrom: str, start_bin: int, values: np.ndarray) -> None:
        """Append consecutive bins ``start_bin, start_bin + 1, ...`` of ``chrom``.

        Parameters
        ----------
        chrom : str
            A chromosome of the header; blocks must follow header order, and within a
            chromosome must not overlap or go backwards (gaps are fine: no data there).
        start_bin : int
            Index of the first bin of the block.
        values : numpy.ndarray
            1-D finite bin values.
        """
        if self._bw is None:
            raise RuntimeError(f"BigWigWriter for {self.path} is not open")
        ci = self._index.get(chrom)
        if ci is None:
            raise ValueError(f"chromosome {chrom!r} is not in the header of {self.path}")
        vals = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        if vals.size == 0:
            return
        start_bin = int(start_bin)
        chrom_len = self.chroms[ci][1]
        n_bins = -(-chrom_len // self.bin_size)
        if (ci, start_bin) < self._pos or start_bin < 0:
            raise ValueError(
                f"block {chrom}:bin {start_bin} for {self.path} is out of order "
                "(blocks must follow header order without overlapping)"
            )
        if start_bin + vals.size > n_bins:
            raise ValueError(
                f"block {chrom}:bins {start_bin}-{start_bin + vals.size} runs past the end of "
                f"{chrom} ({n_bins} bins) in {self.path}"
            )
        if not np.isfinite(vals).all():
            raise ValueError(f"block {chrom}:bin {start_bin} for {self.path} has NaN/inf values")
        try:
            self._bw.add(ci, start_bin, vals)
        except OSError as exc:
            raise PredictdError(f"cannot write {chrom}:bin {start_bin} to {self.path}: "
                                f"{exc.strerror or exc}") from exc
        self._pos = (ci, start_bin + vals.size)

    def close(self) -> None:
        """Finish the file (index, zoom levels) and atomically move it to ``path``."""
        if self._bw is None:
            return
        bw, tmp = self._bw, self._tmp
        self._bw = None
        try:
            try:
                bw.close()
                os.fsync(bw.fileno())
            finally:
                bw.discard()
            os.replace(tmp, self.path)
        except BaseException as exc:
            _remove_quietly(tmp)
            self._tmp = None
            if isinstance(exc, OSError):
                raise PredictdError(f"cannot write bigWig file {self.path}: {exc.strerror or exc}") from exc
            raise
        self._tmp = None

    def abort(self) -> None:
        """Discard everything written so far; ``path`` is left untouched."""
        bw, tmp = self._bw, self._tmp
        self._bw = self._tmp = None
        if bw is not None:
            bw.discard()
        if tmp is not None:
            _remove_quietly(tmp)

    def __enter__(self) -> "BigWigWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _records(ufunc, A: np.ndarray) -> np.ndarray:
    """``ufunc.reduce(A, axis=1)`` for records × bins (a minimum or maximum): column by column
    while the records are short, which is several times faster than a reduction along a
    short last axis."""
    if A.shape[1] > 64:
        return ufunc.reduce(A, axis=1)
    out = A[:, 0].copy()
    for j in range(1, A.shape[1]):
        ufunc(out, A[:, j], out=out)
    return out


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def write_bigwig(
    path: str | os.PathLike,
    chroms: Sequence[tuple[str, int]],
    blocks: Iterable[tuple[str, int, np.ndarray]],
    bin_size: int = DEFAULT_BIN_SIZE,
    max_zooms: int = MAX_ZOOMS,
) -> Path:
    """Write binned values to a bigWig, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file; replaced only once the new file is complete.
    chroms : sequence of (str, int)
        Header chromosomes and lengths, in the order the blocks follow. Chromosomes without
        blocks are allowed (no data).
    blocks : iterable of (chrom, start_bin, values)
        Consecutive bin values, in header order; see :meth:`BigWigWriter.add_block`.
    bin_size : int, default 25
        Bases per bin.
    max_zooms : int, default 10
        Zoom levels to build.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with BigWigWriter(path, chroms, bin_size=bin_size, max_zooms=max_zooms) as writer:
        for chrom, start_bin, values in blocks:
            writer.add_block(chrom, start_bin, values)
    return Path(os.fspath(path))


class _Extents:
    """Per-chromosome first-level sums (count of bases, min, max, sum, sum of squares)."""

    def __init__(self, n_records: int):
        self.n = np.zeros(n_records, np.int64)
        self.lo = np.full(n_records, np.inf, np.float64)
        self.hi = np.full(n_records, -np.inf, np.float64)
        self.s = np.zeros(n_records, np.float64)
        self.ss = np.zeros(n_records, np.float64)


class _BigWigFile:
    """Low-level writer: ``add(chrom_index, start_bin, values)`` in genome order, then
    :meth:`close`. Values must be finite float32 bins (validated by the caller,
    :class:`BigWigWriter`)."""

    def __init__(self, path: str, chroms, bin_size: int, max_zooms: int = MAX_ZOOMS):
        self.chroms = [(str(c), int(n)) for c, n in chroms]
        self.bin_size = int(bin_size)
        self.reductions = zoom_reductions(self.chroms, self.bin_size, max_zooms)
        self._fh = open(path, "wb")
        self._side = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(path)) or ".")
        self._sections: list[tuple[int, int, int, int, int]] = []  # chrom, start, end, off, size
        self._zblocks: list[list[tuple[int, int, int, int, int]]] = [[] for _ in self.reductions]
        self._zcount = [0] * len(self.reductions)
        self._total = [0, np.inf, -np.inf, 0.0, 0.0]
        self._cur: int | None = None   # chromosome being written
        self._ext: _Extents | None = None
        self._pending: list[np.ndarray] = []  # values of an unfinished section
        self._pending_start = 0        # its first bin
        self._pending_n = 0
        self._fh.write(b"\0" * (HEADER.size + ZOOM_HEADER.size * MAX_ZOOMS + SUMMARY.size))
        self._chrom_tree_offset = self._fh.tell()
        self._fh.write(_chrom_tree(self.chroms, self._chrom_tree_offset))
        self._data_offset = self._fh.tell()
        self._fh.write(b"\0" * DATA_COUNT.size)  # block count, filled in on close

    # ------------------------------------------------------------------ data
    def add(self, ci: int, start_bin: int, values: np.ndarray) -> None:
        if ci != self._cur:
            self._end_chrom()
            self._cur = ci
            self._ext = _Extents(-(-self._n_bins(ci) // ZOOM_BINS))
        n_bins = self._n_bins(ci)
        chrom_len = self.chroms[ci][1]
        # a bin straddling the chromosome end is written as its own one-item bedGraph section
        partial = start_bin + values.size == n_bins and chrom_len % self.bin_size != 0
        full = values[:-1] if partial else values
        if full.size:
            if self._pending_n and self._pending_start + self._pending_n != start_bin:
                self._flush_sections(final=True)  # a gap: no data between the two blocks
            if not self._pending_n:
                self._pending_start = start_bin
            self._pending.append(full)
            self._pending_n += full.size
            self._flush_sections(final=False)
        if partial:
            self._flush_sections(final=True)
            last = n_bins - 1
            start = last * self.bin_size
            item = np.array([(start, chrom_len, values[-1])], SECTION_ITEM[BEDGRAPH])
            body = SECTION.pack(ci, start, chrom_len, 0, 0, BEDGRAPH, 0, 1) + item.tobytes()
            self._write_section(ci, start, chrom_len, body)
        self._summarise(start_bin, values, n_bins, chrom_len)

    def _n_bins(self, ci: int) -> int:
        return -(-self.chroms[ci][1] // self.bin_size)

    def _flush_sections(self, final: bool) -> None:
        if not self._pending_n or (not final and self._pending_n < SECTION_ITEMS):
            return
        vals = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        n_out = vals.size if final else vals.size - vals.size % SECTION_ITEMS
        ci, bs = self._cur, self.bin_size
        for i in range(0, n_out, SECTION_ITEMS):
            chunk = vals[i:min(n_out, i + SECTION_ITEMS)]
            start = (self._pending_start + i) * bs
            end = start + chunk.size * bs
            body = SECTION.pack(ci, start, end, bs, bs, FIXED_STEP, 0, chunk.size) + chunk.tobytes()
            self._write_section(ci, start, end, body)
        rest = vals[n_out:]
        self._pending = [rest] if rest.size else []
        self._pending_start += n_out
        self._pending_n = rest.size

    def _write_section(self, ci: int, start: int, end: int, body: bytes) -> None:
        data = deflate(body)
        self._sections.append((ci, start, end, self._fh.tell(), len(data)))
        self._fh.write(data)

    def _summarise(self, start_bin: int, values: np.ndarray, n_bins: int, chrom_len: int) -> None:
        v = values.astype(np.float64)
        bs = self.bin_size
        # every bin covers bin_size bases but a chromosome's last, which may be shorter
        short = (chrom_len - (n_bins - 1) * bs - bs) if start_bin + v.size == n_bins else 0
        # (einsum: a BLAS dot this short costs more in thread hand-off than in arithmetic)
        vv = np.einsum("i,i->", v, v)
        t = self._total
        t[0] += v.size * bs + short
        # extremes of the float32 values themselves: the same numbers, half the memory traffic
        t[1] = min(t[1], float(values.min()))
        t[2] = max(t[2], float(values.max()))
        t[3] += bs * float(v.sum()) + short * float(v[-1])
        t[4] += bs * float(vv) + short * float(v[-1]) ** 2
        e = self._ext
        first = start_bin // ZOOM_BINS
        if start_bin % ZOOM_BINS == 0 and v.size >= ZOOM_BINS:
            # blocks start on a record: whole records are rows of a reshape, which reduces far
            # faster than reduceat's segments
            m = v.size // ZOOM_BINS
            V = v[:m * ZOOM_BINS].reshape(m, ZOOM_BINS)
            V32 = values[:m * ZOOM_BINS].reshape(m, ZOOM_BINS)
            rec = slice(first, first + m)
            e.n[rec] += ZOOM_BINS * bs
            np.minimum(e.lo[rec], _records(np.minimum, V32), out=e.lo[rec])
            np.maximum(e.hi[rec], _records(np.maximum, V32), out=e.hi[rec])
            e.s[rec] += bs * V.sum(axis=1)
            e.ss[rec] += bs * np.einsum("ij,ij->i", V, V)
            rest = v[m * ZOOM_BINS:]
            if rest.size:
                r = first + m
                e.n[r] += rest.size * bs
                e.lo[r] = min(e.lo[r], rest.min())
                e.hi[r] = max(e.hi[r], rest.max())
                e.s[r] += bs * rest.sum()
                e.ss[r] += bs * np.einsum("i,i->", rest, rest)
            if short:
                r = (start_bin + v.size - 1) // ZOOM_BINS
                e.n[r] += short
                e.s[r] += short * v[-1]
                e.ss[r] += short * v[-1] ** 2
            return
        bases = np.full(v.size, bs, np.int64)
        bases[-1] += short
        w = bases * v  # each bin's sum over its bases
        # first-level records: bins start_bin.. grouped by bin // ZOOM_BINS
        cut = np.arange(first * ZOOM_BINS, start_bin + v.size, ZOOM_BINS) - start_bin
        cut[0] = 0
        rec = first + np.arange(cut.size)
        e.n[rec] += np.add.reduceat(bases, cut)
        e.lo[rec] = np.minimum(e.lo[rec], np.minimum.reduceat(v, cut))
        e.hi[rec] = np.maximum(e.hi[rec], np.maximum.reduceat(v, cut))
        e.s[rec] += np.add.reduceat(w, cut)
        e.ss[rec] += np.add.reduceat(w * v, cut)

    def _end_chrom(self) -> None:
        """Finish the current chromosome: last section, then its zoom records."""
        if self._cur is None:
            return
        self._flush_sections(final=True)
        e, ci = self._ext, self._cur
        chrom_len = self.chroms[ci][1]
        for level, r in enumerate(self.reductions):
            per = r // (ZOOM_BINS * self.bin_size)  # first-level records per record here
            m = -(-e.n.size // per)
            pad = m * per - e.n.size

            def fold(a, fill, ufunc):
                A = np.concatenate([a, np.full(pad, fill, a.dtype)]).reshape(m, per)
                # extremes are exact in any order; sums keep numpy's own
                return (_records(ufunc, A) if ufunc is not np.add
                        else ufunc.reduce(A, axis=1))

            n = fold(e.n, 0, np.add)
            keep = np.flatnonzero(n > 0)
            if not keep.size:
                continue
            recs = np.empty(keep.size, ZOOM_RECORD)
            recs["chrom"] = ci
            recs["start"] = keep * r
            recs["end"] = np.minimum((keep + 1) * r, chrom_len)
            recs["n"] = n[keep]
            recs["min"] = fold(e.lo, np.inf, np.minimum)[keep]
            recs["max"] = fold(e.hi, -np.inf, np.maximum)[keep]
            recs["sum"] = fold(e.s, 0.0, np.add)[keep]
            recs["sumsq"] = fold(e.ss, 0.0, np.add)[keep]
            self._zcount[level] += keep.size
            for i in range(0, keep.size, ZOOM_ITEMS):
                blk = recs[i:i + ZOOM_ITEMS]
                data = deflate(blk.tobytes())
                self._zblocks[level].append((ci, int(blk["start"][0]), int(blk["end"][-1]),
                                             self._side.tell(), len(data)))
                self._side.write(data)
        self._cur, self._ext = None, None

    # ------------------------------------------------------------------ finish
    def close(self) -> None:
        self._end_chrom()
        fh = self._fh
        index_offset = fh.tell()  # the data end here
        fh.write(_rtree(self._sections, index_offset, SECTION_ITEMS))
        zoom_headers = []
        for level, r in enumerate(self.reductions):
            if not self._zblocks[level]:
                break
            data_offset = fh.tell()
            fh.write(ZOOM_DATA_COUNT.pack(self._zcount[level]))
            # the side file interleaves the levels chromosome by chromosome: gather this one's
            blocks = []
            for c, s, e, off, n in self._zblocks[level]:
                blocks.append((c, s, e, fh.tell(), n))
                self._side.seek(off)
                _copy(self._side, fh, n)
            idx = fh.tell()
            fh.write(_rtree(blocks, idx, ZOOM_ITEMS))
            zoom_headers.append(ZOOM_HEADER.pack(r, 0, data_offset, idx))
        fh.write(MAGIC.pack(BIGWIG_MAGIC))
        n_bases, lo, hi, s, ss = self._total
        if not n_bases:
            lo = hi = 0.0
        head = HEADER.pack(*Header(
            magic=BIGWIG_MAGIC, version=VERSION, zoom_levels=len(zoom_headers),
            chrom_tree_offset=self._chrom_tree_offset, data_offset=self._data_offset,
            index_offset=index_offset, field_count=0, defined_field_count=0, auto_sql_offset=0,
            total_summary_offset=HEADER.size + ZOOM_HEADER.size * MAX_ZOOMS,
            uncompress_buf_size=UNCOMPRESS_BUF, extension_offset=0))
        fh.seek(0)
        fh.write(head + b"".join(zoom_headers))
        fh.seek(HEADER.size + ZOOM_HEADER.size * MAX_ZOOMS)
        fh.write(SUMMARY.pack(n_bases, lo, hi, s, ss))
        fh.seek(self._data_offset)
        fh.write(DATA_COUNT.pack(len(self._sections)))
        fh.flush()
        self._side.close()

    def discard(self) -> None:
        """Close the file handles (after :meth:`close`, or to abandon the file)."""
        for f in (self._fh, self._side):
            try:
                f.close()
            except OSError:
                pass

    def fileno(self) -> int:
        return self._fh.fileno()


def _copy(src, dst, size: int, chunk: int = 1 << 22) -> None:
    while size > 0:
        buf = src.read(min(chunk, size))
        if not buf:
            raise OSError("side file ended early")
        dst.write(buf)
        size -= len(buf)


def _rtree(items: list[tuple[int, int, int, int, int]], offset: int, per_slot: int) -> bytes:
    """A cirTree (R-tree) over sorted, non-overlapping blocks, written at ``offset``: header,
    then the levels from the root down, each node holding up to TREE_BLOCK children."""
    n = len(items)
    leaves = np.zeros(n, INDEX_LEAF)
    if n:
        arr = np.array(items, dtype=np.int64).reshape(n, 5)
        leaves["start_chrom"], leaves["start"] = arr[:, 0], arr[:, 1]
        leaves["end_chrom"], leaves["end"] = arr[:, 0], arr[:, 2]
        leaves["offset"], leaves["size"] = arr[:, 3], arr[:, 4]
    # bounding ranges of each level, bottom up: level 0 = leaf items
    levels = [leaves]
    while levels[-1].size > TREE_BLOCK:
        below = levels[-1]
        g = np.arange(0, below.size, TREE_BLOCK)
        up = np.zeros(g.size, INDEX_NODE)
        up["start_chrom"], up["start"] = below["start_chrom"][g], below["start"][g]
        last = np.minimum(g + TREE_BLOCK, below.size) - 1
        up["end_chrom"], up["end"] = below["end_chrom"][last], below["end"][last]
        levels.append(up)
    order = levels[::-1]  # written root first; each level's nodes placed after the one above
    starts = np.cumsum([offset + INDEX_HEADER.size] + [int(_node_sizes(lv).sum())
                                                        for lv in order[:-1]])
    out = [INDEX_HEADER.pack(
        INDEX_MAGIC, TREE_BLOCK, n,
        int(leaves["start_chrom"][0]) if n else 0, int(leaves["start"][0]) if n else 0,
        int(leaves["end_chrom"][-1]) if n else 0, int(leaves["end"][-1]) if n else 0,
        offset, per_slot, 0)]
    for depth, lv in enumerate(order):
        is_leaf = depth == len(order) - 1
        if not is_leaf:
            # child offsets: the children are the nodes of the next level, in order
            child_sizes = _node_sizes(order[depth + 1])
            lv = lv.copy()
            lv["child"] = starts[depth + 1] + np.concatenate([[0], np.cumsum(child_sizes)[:-1]])
        for i in range(0, max(lv.size, 1), TREE_BLOCK):
            part = lv[i:i + TREE_BLOCK]
            out.append(NODE.pack(1 if is_leaf else 0, 0, part.size))
            out.append(part.tobytes())
    return b"".join(out)


def _node_sizes(level: np.ndarray) -> np.ndarray:
    """Bytes of each node of a tree level (an empty level is one empty node)."""
    counts = np.diff(np.append(np.arange(0, max(level.size, 1), TREE_BLOCK), level.size))
    return NODE.size + counts * level.dtype.itemsize


def _chrom_tree(chroms, offset: int) -> bytes:
    """The chromosome B+ tree written at ``offset``: names (sorted, as the tree is searched)
    to (id, length), the id being the position in ``chroms`` (the order of the data)."""
    names = [c.encode() for c, _ in chroms]
    for c, n in chroms:
        if not 0 <= n < 1 << 32:  # the format's limit; numpy would not always refuse it
            raise OverflowError(f"{c} is {n} bp; a bigWig holds chromosomes below 2**32 bp")
    key = max(len(b) for b in names)
    leaf_item, node_item = chrom_tree_items(key)
    order = sorted(range(len(names)), key=names.__getitem__)
    block = min(TREE_BLOCK, len(names))
    levels = [[names[i] for i in order]]          # bottom up: the first key of every child
    while len(levels[-1]) > block:
        levels.append(levels[-1][::block])
    levels = levels[::-1]                          # written root first
    pos, node_pos = offset + CHROM_TREE_HEADER.size, []
    for d, lv in enumerate(levels):
        item = leaf_item if d == len(levels) - 1 else node_item
        node_pos.append([])
        for i in range(0, len(lv), block):
            node_pos[-1].append(pos)
            pos += NODE.size + len(lv[i:i + block]) * item.itemsize
    parts = [CHROM_TREE_HEADER.pack(CHROM_TREE_MAGIC, block, key, CHROM_TREE_VALUE_SIZE,
                                    len(names), 0)]
    for d, lv in enumerate(levels):
        leaf = d == len(levels) - 1
        for i in range(0, len(lv), block):
            part = lv[i:i + block]
            parts.append(NODE.pack(1 if leaf else 0, 0, len(part)))
            if leaf:
                ids = order[i:i + len(part)]
                items = np.array([(name, ix, chroms[ix][1]) for name, ix in zip(part, ids)],
                                 leaf_item)
            else:  # the (i + k)-th node of the level below starts with the k-th key here
                items = np.array(list(zip(part, node_pos[d + 1][i:i + len(part)])), node_item)
            parts.append(items.tobytes())
    return b"".join(parts)
