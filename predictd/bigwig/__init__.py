"""bigWig tracks: read them into bins, write binned tracks, check files on the way in.

* :mod:`~predictd.bigwig.format` -- the file format: magic numbers and the layout of every
  structure, in one place.
* :mod:`~predictd.bigwig.read` -- :func:`read_binned` (one chromosome, or a range of its bins, as
  bin means), :func:`bin_means`, :func:`open_bigwig`, :func:`bigwig_chroms`,
  :func:`header_summary`, :func:`nonfinite_summary`.
* :mod:`~predictd.bigwig.write` -- predictd's own writer: :class:`BigWigWriter`,
  :func:`write_bigwig`.
* :mod:`~predictd.bigwig.validate` -- the checks on a file's structure and on the signal read.

Callers import from here (``from predictd.bigwig import read_binned``); the submodules are for
code that works on the format itself.
"""

from .format import DEFAULT_BIN_SIZE
from .read import (
    DEFAULT_CHUNK_BINS,
    bigwig_chroms,
    bin_means,
    header_summary,
    nonfinite_summary,
    open_bigwig,
    read_binned,
)
from .write import MAX_ZOOMS, BigWigWriter, write_bigwig

__all__ = [
    "DEFAULT_BIN_SIZE",
    "DEFAULT_CHUNK_BINS",
    "MAX_ZOOMS",
    "BigWigWriter",
    "bigwig_chroms",
    "bin_means",
    "header_summary",
    "nonfinite_summary",
    "open_bigwig",
    "read_binned",
    "write_bigwig",
]
