"""Read bigWig tracks into bins: one chromosome, or a range of its bins, at a time.

Bin values follow the binning contract (docs/design.md §1): bin ``i`` of a chromosome covers
``[bin_size*i, bin_size*i + bin_size)`` and holds the mean signal over its bases, bases without
data counting as 0; the last, partial bin is the mean over its own bases. Fetching remote tracks
is :mod:`predictd.storage`'s job; this module reads local files.

A bigWig stores runs of (start, end, value) records in compressed data sections.
:func:`read_binned` decodes the sections itself (numpy, and ISA-L's inflate when installed) and
bins the records themselves -- each adds value x overlap to the bins it touches -- instead of
expanding every base as libBigWig's ``values()`` does; grid-aligned fixed-step runs (predictd's
own files) go straight into their bins. The file's structure is checked first
(:func:`predictd.bigwig.validate.check_structure`). Two cases go through pyBigWig's
``values()`` instead, one chunk of bins at a time: a handle from :func:`open_bigwig`, and a file
whose records overlap (malformed, but libBigWig gives such files a meaning). The tests compare
the two readers on every section type.

Examples
--------
>>> import numpy as np
>>> bin_means(np.array([1.0, np.nan, 3.0, 4.0, 5.0]), bin_size=2)
array([0.5, 3.5, 5. ], dtype=float32)
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict

import numpy as np
import pyBigWig

from predictd import storage
from predictd.errors import PredictdError

from .format import (
    BEDGRAPH,
    DEFAULT_BIN_SIZE,
    HEADER,
    SECTION,
    SECTION_ITEM,
    SUMMARY,
    VARIABLE_STEP,
    Header,
)
from .validate import (
    Layout,
    check_chrom_range,
    check_finite,
    check_structure,
)

__all__ = [
    "DEFAULT_CHUNK_BINS",
    "bigwig_chroms",
    "bin_means",
    "header_summary",
    "open_bigwig",
    "read_binned",
    "section_records",
]

#: Bins read per step; 2**16 bins of 25 bp is 6.5 MB of float32 bases.
DEFAULT_CHUNK_BINS = 1 << 16


def header_summary(path: str | os.PathLike) -> dict | None:
    """The whole-file summary a bigWig's header points at, read straight from the file.

    pyBigWig's ``header()`` converts the summary to Python ints and crashes the process when a
    value is NaN or infinite, so the 40 bytes are decoded here instead. Call it on a file that
    :func:`open_bigwig` accepted (the offset is then known to lie inside the file).

    Parameters
    ----------
    path : str or os.PathLike
        Local bigWig file.

    Returns
    -------
    dict or None
        ``{"count", "min", "max", "sum", "sum_squares"}`` (count of bases covered, floats for the
        rest), or None when the file has no summary (older writers) or it is cut short.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER.size)
            if len(head) < HEADER.size:
                return None
            offset = Header._make(HEADER.unpack(head)).total_summary_offset
            if not offset:
                return None
            fh.seek(offset)
            raw = fh.read(SUMMARY.size)
    except OSError as exc:
        raise PredictdError(f"cannot read bigWig file {path}: {exc.strerror or exc}") from exc
    if len(raw) < SUMMARY.size:
        return None
    count, lo, hi, total, squares = SUMMARY.unpack(raw)
    return {"count": count, "min": lo, "max": hi, "sum": total, "sum_squares": squares}


def nonfinite_summary(path: str | os.PathLike) -> str | None:
    """What a bigWig's header summary says when its values include NaN or infinities (its
    min, max and sum), else None (also for a file without a summary). NaN would read as no
    data, so the pipeline and ``predictd score`` refuse such a file, naming it with this."""
    s = header_summary(path)
    if s is None or np.isfinite([s["min"], s["max"], s["sum"]]).all():
        return None
    return f"min {s['min']}, max {s['max']}, sum {s['sum']}"


def open_bigwig(path: str | os.PathLike):
    """Open a local bigWig for reading, turning every failure into a one-line error.

    Parameters
    ----------
    path : str or os.PathLike
        Local file path (fetch remote tracks with :func:`predictd.storage.fetch_to_local`).

    Returns
    -------
    pyBigWig.bigWigFile
        An open handle; close it with ``.close()``.

    Raises
    ------
    PredictdError
        If the file is missing, unreadable, not a bigWig (bigBed included) or truncated.
    """
    path = os.fspath(path)
    storage.check_readable(path, "bigWig: ")
    check_structure(path)
    try:
        bw = pyBigWig.open(path)
    except RuntimeError as exc:
        raise PredictdError(f"cannot open bigWig file {path}: corrupt or unsupported") from exc
    if bw is None:
        raise PredictdError(f"cannot open bigWig file {path}: corrupt or unsupported")
    if not bw.isBigWig():
        bw.close()
        raise PredictdError(f"not a bigWig file (it is a bigBed): {path}")
    return bw


def bigwig_chroms(path: str | os.PathLike) -> dict[str, int]:
    """Chromosome names and lengths listed in a bigWig's header.

    Parameters
    ----------
    path : str or os.PathLike
        Local bigWig file.

    Returns
    -------
    dict of str to int
        Chromosome name -> length in bp, in the file's header order.

    Raises
    ------
    PredictdError
        If the file is missing, not a bigWig, or truncated/corrupt.
    """
    bw = open_bigwig(path)
    try:
        chroms = bw.chroms()
    except RuntimeError as exc:
        raise PredictdError(f"corrupt bigWig file {os.fspath(path)}: cannot read chromosome list") from exc
    finally:
        bw.close()
    return dict(chroms or {})


def _bin_means_nan_zeroed(values: np.ndarray, bin_size: int) -> np.ndarray:
    """Per-bin means of ``values`` whose NaNs are already zero (may be float32 or float64)."""
    n = values.shape[0]
    n_full = n // bin_size
    rem = n - n_full * bin_size
    out = np.empty(n_full + (rem > 0), dtype=np.float32)
    if n_full:
        # float64 accumulation keeps the mean exact to float32 even for mixed-sign signals;
        # einsum does the widening on the fly without materialising a float64 copy.
        sums = np.einsum("ij->i", values[: n_full * bin_size].reshape(n_full, bin_size), dtype=np.float64)
        np.multiply(sums, 1.0 / bin_size, out=sums)
        out[:n_full] = sums
    if rem:
        out[n_full] = values[n_full * bin_size :].sum(dtype=np.float64) / rem
    return out


def bin_means(values: np.ndarray, bin_size: int) -> np.ndarray:
    """Average a per-base signal into fixed-size bins, following the binning contract.

    Parameters
    ----------
    values : numpy.ndarray
        1-D per-base signal of one chromosome (or of a stretch starting at a bin boundary); NaN
        marks bases without data and counts as 0.
    bin_size : int
        Bases per bin.

    Returns
    -------
    numpy.ndarray
        float32 array of ``ceil(len(values) / bin_size)`` bin means. The last bin, when partial,
        is the mean over its own bases. Infinite inputs propagate (callers decide whether that
        is an error).

    Examples
    --------
    >>> bin_means(np.array([2.0, 4.0, np.nan]), bin_size=2)
    array([3., 0.], dtype=float32)
    """
    if bin_size < 1:
        raise ValueError(f"bin_size must be >= 1, got {bin_size}")
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float64)
    else:
        v = np.where(np.isnan(v), v.dtype.type(0), v)
    return _bin_means_nan_zeroed(v, bin_size)


def read_binned(
    path_or_bw,
    chrom: str,
    chrom_len: int,
    bin_size: int = DEFAULT_BIN_SIZE,
    chunk_bins: int = DEFAULT_CHUNK_BINS,
    *,
    source: str | None = None,
    bins: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """Read one chromosome of a bigWig (or a range of its bins) as per-bin means, a chunk at a
    time.

    Parameters
    ----------
    path_or_bw : str, os.PathLike or pyBigWig.bigWigFile
        Local bigWig path, or a handle from :func:`open_bigwig` (reuse one handle when reading
        many chromosomes of the same file).
    chrom : str
        Chromosome name as spelled in the file.
    chrom_len : int
        The genome's length for ``chrom``; the result has ``ceil(chrom_len / bin_size)`` bins.
    bin_size : int, default 25
        Bases per bin.
    chunk_bins : int, default 2**16
        Bins fetched per read; bounds memory to ``chunk_bins * bin_size`` float32 bases.
    source : str, optional
        Name used in error messages when a handle is passed (e.g. the track's URI).
    bins : (int, int), optional
        Only bins ``[first, stop)`` of the chromosome (one tensor block); default all of them.

    Returns
    -------
    numpy.ndarray or None
        float32 bin means (no-data bases count as 0), or None when the file has no ``chrom``.

    Raises
    ------
    PredictdError
        If the file's ``chrom`` is longer than ``chrom_len`` (a different assembly), if its values
        include +-inf, or if the file is corrupt.

    Notes
    -----
    A file whose ``chrom`` is *shorter* than the genome's is read as far as it goes and padded
    with 0 (no data), with a logged warning: some pipelines write a chromosome list that differs
    by a few bases (e.g. chrM 16,569 vs 16,571 bp). Bins straddling the file's end average over
    the genome's bin, the missing bases counting as 0.
    """
    if chunk_bins < 1:
        raise ValueError(f"chunk_bins must be >= 1, got {chunk_bins}")
    if bin_size < 1:
        raise ValueError(f"bin_size must be >= 1, got {bin_size}")
    if not hasattr(path_or_bw, "values"):
        path = os.fspath(path_or_bw)
        out = _read_binned_native(path, source or path, chrom, int(chrom_len), bin_size,
                                  chunk_bins, bins)
        if out is not _UNSORTED:
            return out
        bw = open_bigwig(path)  # overlapping records: libBigWig's last-one-wins reading
        try:
            return _read_binned_libbigwig(bw, source or path, chrom, int(chrom_len), bin_size,
                                          chunk_bins, bins)
        finally:
            bw.close()
    return _read_binned_libbigwig(path_or_bw, source or "bigWig", chrom, int(chrom_len),
                                  bin_size, chunk_bins, bins)


# --------------------------------------------------------------------------- native reading
# read_binned decodes a file's data sections itself instead of asking libBigWig for per-base
# values: a section is a run of (start, end, value) records, and a bin's sum is the sum of
# value x overlap over the records that touch it -- computed on the records, never on 25
# expanded bases each. Layouts (validated trees) are cached per file version.
try:  # ISA-L's inflate decodes the same DEFLATE streams faster than zlib
    from isal.isal_zlib import decompress as _inflate
    from isal.isal_zlib import error as _isal_error
    _INFLATE_ERRORS: tuple = (zlib.error, _isal_error)
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    _inflate = zlib.decompress
    _INFLATE_ERRORS = (zlib.error,)
_LAYOUTS: "OrderedDict[tuple, Layout]" = OrderedDict()
_LAYOUT_CACHE = 32
_UNSORTED = object()  # records overlap: let libBigWig decide which value a base has


def _layout(path: str) -> Layout:
    storage.check_readable(path, "bigWig: ")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise PredictdError(f"cannot read bigWig file {path}: {exc.strerror or exc}") from exc
    key = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    hit = _LAYOUTS.get(key)
    if hit is None:
        hit = _LAYOUTS[key] = check_structure(path)
        while len(_LAYOUTS) > _LAYOUT_CACHE:
            _LAYOUTS.popitem(last=False)
    else:
        _LAYOUTS.move_to_end(key)
    return hit


def section_records(path: str, name: str, chrom: str, lay: Layout, cid: int, lo_bp: int,
                    hi_bp: int, bin_size: int):
    """The records of chromosome ``cid`` in the data blocks that overlap ``[lo_bp, hi_bp)``:
    ``(starts, ends, values)`` (int64, int64, float64) in file order, and apart from them the
    fixed-step sections laid on the bin grid (step = span = ``bin_size``, starting on a bin
    boundary; what predictd writes) as ``[(start, float32 values)]``, which need no binning.

    ``lay`` is the file's :class:`~predictd.bigwig.validate.Layout` and ``cid`` the chromosome's
    id in it; ``name`` and ``chrom`` name the file and the chromosome in errors."""
    base = np.uint64(cid) << np.uint64(32)
    hit = lay.leaves[(lay.starts < base | np.uint64(hi_bp)) & (lay.ends > base | np.uint64(lo_bp))]
    empty = np.zeros(0, np.int64)
    if not hit.size:
        return empty, empty, np.zeros(0), []
    off = hit["offset"].astype(np.int64)
    size = hit["size"].astype(np.int64)
    first, stop = int(off.min()), int((off + size).max())
    starts, ends, values, dense = [], [], [], []

    def bad(i: int) -> PredictdError:
        return PredictdError(f"corrupt bigWig file {name}: cannot read {chrom}:{hit['start'][i]}-"
                             f"{hit['end'][i]} (data block at byte {off[i]})")

    with open(path, "rb") as fh:
        # a chromosome's blocks lie back to back: one read unless they are scattered
        whole = stop - first <= 2 * int(size.sum()) + (1 << 20)
        if whole:
            fh.seek(first)
            buf = fh.read(stop - first)
        for i, (o, n) in enumerate(zip(off.tolist(), size.tolist())):
            if whole:
                raw = buf[o - first:o - first + n]
            else:
                fh.seek(o)
                raw = fh.read(n)
            if len(raw) != n:
                raise bad(i)
            try:
                data = _inflate(raw) if lay.uncompress else raw
            except _INFLATE_ERRORS:
                raise bad(i) from None
            if len(data) < SECTION.size:
                raise bad(i)
            chrom_id, start, _end, step, span, kind, _, count = SECTION.unpack_from(data)
            if chrom_id != cid:
                continue
            item = SECTION_ITEM.get(kind)
            if item is None or len(data) < SECTION.size + count * item.itemsize:
                raise bad(i)
            rec = np.frombuffer(data, item, count, SECTION.size)
            if kind == BEDGRAPH:
                s, e, v = rec["start"], rec["end"], rec["value"]
            elif kind == VARIABLE_STEP:
                s, v = rec["start"].astype(np.int64), rec["value"]
                e = s + span
            elif step == span == bin_size and start % bin_size == 0:
                dense.append((start, rec))
                continue
            else:
                s = start + step * np.arange(count, dtype=np.int64)
                e, v = s + span, rec
            starts.append(s)
            ends.append(e)
            values.append(v)
    if not starts:
        return empty, empty, np.zeros(0), dense
    return (np.concatenate(starts).astype(np.int64, copy=False),
            np.concatenate(ends).astype(np.int64, copy=False),
            np.concatenate(values).astype(np.float64), dense)


def _bin_records(s: np.ndarray, e: np.ndarray, v: np.ndarray, lo_bp: int, hi_bp: int,
                 bin_size: int) -> np.ndarray:
    """Per-bin sums (float64) of non-overlapping records over bins ``[lo_bp, hi_bp)``
    (``lo_bp`` on a bin boundary): each record adds value x overlap to the one or two bins its
    ends fall in, and value x ``bin_size`` to every bin it covers whole."""
    n = -(-(hi_bp - lo_bp) // bin_size)
    s = np.maximum(s, lo_bp) - lo_bp
    e = np.minimum(e, hi_bp) - lo_bp
    keep = e > s
    if not keep.all():
        s, e, v = s[keep], e[keep], v[keep]
    first = s // bin_size
    last = (e - 1) // bin_size
    head = np.minimum(e, (first + 1) * bin_size) - s
    # (float64 even when there are no records: bincount of nothing answers int64)
    sums = np.bincount(first, weights=v * head, minlength=n).astype(np.float64, copy=False)
    cross = last > first
    if cross.any():
        lc, vc = last[cross], v[cross]
        sums += np.bincount(lc, weights=vc * (e[cross] - lc * bin_size), minlength=n)
        inner = lc - first[cross] - 1  # bins covered whole
        wide = inner > 0
        if wide.any():
            k, fw, vw = inner[wide], first[cross][wide] + 1, vc[wide]
            shift = np.repeat(fw - (np.cumsum(k) - k), k)
            idx = shift + np.arange(int(k.sum()))
            sums[idx] += np.repeat(vw * bin_size, k)
    return sums


def _read_binned_native(path: str, name: str, chrom: str, chrom_len: int, bin_size: int,
                        chunk_bins: int, bins: tuple[int, int] | None):
    lay = _layout(path)
    if chrom not in lay.chroms:
        return None
    cid, file_len = lay.chroms[chrom]
    n_bins, lo, hi = check_chrom_range(name, chrom, file_len, chrom_len, bin_size, bins)
    out = np.zeros(hi - lo, dtype=np.float32)
    # a chunk of bins at a time: memory stays bounded on per-base files too
    for b0 in range(lo, min(hi, -(-file_len // bin_size)), chunk_bins):
        b1 = min(hi, b0 + chunk_bins)
        lo_bp, read_end = b0 * bin_size, min(chrom_len, b1 * bin_size, file_len)
        sums = _chunk_sums(path, name, chrom, lay, cid, lo_bp, read_end, bin_size)
        if sums is _UNSORTED:
            return _UNSORTED
        means = sums / bin_size
        if b1 == n_bins and chrom_len % bin_size and sums.size == b1 - b0:
            means[-1] = sums[-1] / (chrom_len % bin_size)  # the partial last bin: its own bases
        check_finite(means, b0, name, chrom, chrom_len, bin_size)
        out[b0 - lo:b0 - lo + means.size] = means
    return out


def _chunk_sums(path: str, name: str, chrom: str, lay: Layout, cid: int, lo_bp: int,
                read_end: int, bin_size: int):
    """Per-bin sums of signal x bases over ``[lo_bp, read_end)`` (``lo_bp`` on a bin boundary),
    or ``_UNSORTED`` when the records there overlap."""
    s, e, v, dense = section_records(path, name, chrom, lay, cid, lo_bp, read_end, bin_size)
    # grid-aligned fixed-step runs go straight into their bins; a run's records that start
    # before the window or end past it (a file cut mid-bin) join the general records
    runs, extra = [], []
    for start, vals in dense:
        i0 = max(0, -(-(lo_bp - start) // bin_size))
        i1 = max(i0, min(vals.size, (read_end - start) // bin_size))
        if i1 > i0:
            runs.append(((start - lo_bp) // bin_size + i0, vals[i0:i1]))
        if i1 < vals.size:
            rs = start + bin_size * np.arange(i1, vals.size, dtype=np.int64)
            extra.append((rs, rs + bin_size, vals[i1:].astype(np.float64)))
    if extra:
        s = np.concatenate([s, *(x[0] for x in extra)])
        e = np.concatenate([e, *(x[1] for x in extra)])
        v = np.concatenate([v, *(x[2] for x in extra)])
    # records must not overlap (bedGraphToBigWig refuses such input); where they do, the
    # value of a base is whichever libBigWig meets last, so libBigWig reads the file
    ks = np.concatenate([s, [lo_bp + b * bin_size for b, _ in runs]]).astype(np.int64)
    ke = np.concatenate([e, [lo_bp + (b + r.size) * bin_size for b, r in runs]]).astype(np.int64)
    if ks.size > 1 and (ks[1:] < ke[:-1]).any():
        order = np.argsort(ks, kind="stable")
        if (ks[order][1:] < ke[order][:-1]).any():
            return _UNSORTED
    v = np.where(np.isnan(v), 0.0, v)  # a stored NaN counts as no data, as in libBigWig's values
    sums = _bin_records(s, e, v, lo_bp, read_end, bin_size)
    for b, r in runs:
        # r * bin_size / bin_size is r exactly in float64; NaN stored in a run is no data
        r = r.astype(np.float64)
        if np.isnan(r).any():
            r[np.isnan(r)] = 0.0
        r *= bin_size
        sums[b:b + r.size] += r
    return sums


def _read_binned_libbigwig(bw, name: str, chrom: str, chrom_len: int, bin_size: int,
                           chunk_bins: int, bins: tuple[int, int] | None = None):
    """:func:`read_binned` through libBigWig: the per-base ``values()`` of a chunk of bins at a
    time, averaged into bins."""
    try:
        file_len = bw.chroms(chrom)
    except RuntimeError as exc:
        raise PredictdError(f"corrupt bigWig file {name}: cannot read chromosome list") from exc
    if file_len is None:
        return None
    n_bins, lo, hi = check_chrom_range(name, chrom, file_len, chrom_len, bin_size, bins)
    out = np.zeros(hi - lo, dtype=np.float32)
    last_bin_with_data = min(hi, -(-file_len // bin_size))
    step = chunk_bins
    for b0 in range(lo, last_bin_with_data, step):
        b1 = min(hi, b0 + step)
        start = b0 * bin_size
        end = min(chrom_len, b1 * bin_size)
        read_end = min(end, file_len)
        try:
            values = bw.values(chrom, start, read_end, numpy=True)
        except RuntimeError as exc:
            raise PredictdError(
                f"corrupt bigWig file {name}: cannot read {chrom}:{start}-{read_end}"
            ) from exc
        if values.size != read_end - start:
            # libBigWig answers an empty array for a file without any data (a legal, empty
            # track); any other length means it could not make sense of the file
            if values.size:
                raise PredictdError(
                    f"corrupt bigWig file {name}: {chrom}:{start}-{read_end} read as "
                    f"{values.size} values"
                )
            values = np.zeros(read_end - start, dtype=np.float32)
        np.copyto(values, 0, where=np.isnan(values))
        if read_end < end:
            values = np.concatenate([values, np.zeros(end - read_end, dtype=values.dtype)])
        means = _bin_means_nan_zeroed(values, bin_size)
        check_finite(means, b0, name, chrom, chrom_len, bin_size)
        out[b0 - lo:b1 - lo] = means
    return out

