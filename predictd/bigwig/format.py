"""The bigWig file format (BBI version 4): magic numbers, and the layout of every structure.

One home for the format, shared by the reader (:mod:`predictd.bigwig.read`), the checks
(:mod:`predictd.bigwig.validate`) and the writer (:mod:`predictd.bigwig.write`). Everything is
little-endian and every offset is absolute (from the start of the file). A bigWig holds::

    header | zoom headers | total summary | chromosome B+ tree
    | data: block count + data blocks (each one section, usually zlib-compressed)
    | R-tree index of the data blocks | per zoom level: record count + record blocks + R-tree
    | magic

Only what any bigWig is lives here; the choices predictd makes for its own files (section
length, zoom levels, tree fan-out, compression level) belong to the writer.

Examples
--------
>>> HEADER.size, ZOOM_HEADER.size, SUMMARY.size, SECTION.size, INDEX_HEADER.size
(64, 24, 40, 24, 48)
>>> INDEX_LEAF.itemsize, ZOOM_RECORD.itemsize
(32, 32)
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

#: Bases per bin when a caller gives none: predictd's tracks are 25 bp bins.
DEFAULT_BIN_SIZE = 25

BIGWIG_MAGIC = 0x888FFC26
CHROM_TREE_MAGIC = 0x78CA8C91  # the chromosome B+ tree
INDEX_MAGIC = 0x2468ACE0  # an R-tree ("cirTree") over data or zoom blocks
VERSION = 4

#: A magic number on its own: the first and the last 4 bytes of a file.
MAGIC = struct.Struct("<I")

#: The fixed header at the start of the file; its fields are those of :class:`Header`.
HEADER = struct.Struct("<IHHQQQHHQQIQ")
#: The header's first fields (magic, version, zoom levels): enough to find the zoom headers.
HEADER_START = struct.Struct(HEADER.format[:4])


class Header(NamedTuple):
    """The fields of :data:`HEADER`, in order."""
    magic: int
    version: int
    zoom_levels: int
    chrom_tree_offset: int
    data_offset: int
    index_offset: int
    field_count: int  # bigBed only: 0 in a bigWig
    defined_field_count: int  # bigBed only
    auto_sql_offset: int  # bigBed only
    total_summary_offset: int  # 0 when the file has no total summary
    uncompress_buf_size: int  # 0 means the data blocks are stored raw, not zlib-compressed
    extension_offset: int


#: One per zoom level, right after the header: bases per record, reserved, offset of the level's
#: record count (its data), offset of its R-tree.
ZOOM_HEADER = struct.Struct("<IIQQ")
#: The whole-file summary: bases covered, min, max, sum, sum of squares.
SUMMARY = struct.Struct("<Qdddd")

#: Chromosome B+ tree header: magic, children per node, key size, value size, chromosome
#: count, reserved.
CHROM_TREE_HEADER = struct.Struct("<IIIIQQ")
CHROM_TREE_VALUE_SIZE = 8  # a leaf's value: the chromosome's id and length
#: Header of every tree node (both trees): is-leaf flag, reserved, item count.
NODE = struct.Struct("<BBH")


def chrom_tree_items(key_size: int) -> tuple[np.dtype, np.dtype]:
    """``(leaf item, node item)`` of a chromosome B+ tree whose keys are ``key_size`` bytes.

    A leaf item is a chromosome's name (null-padded), its id (the number data blocks use) and its
    length; a node item is the first key under a child node and the child's offset.

    Examples
    --------
    >>> leaf, node = chrom_tree_items(5)
    >>> leaf.itemsize, node.itemsize
    (13, 13)
    """
    return (np.dtype([("key", f"S{key_size}"), ("id", "<u4"), ("size", "<u4")]),
            np.dtype([("key", f"S{key_size}"), ("child", "<u8")]))


#: R-tree header: magic, children per node, item count, first chromosome id and start, last
#: chromosome id and end, end of the indexed data, items per slot, reserved.
INDEX_HEADER = struct.Struct("<IIQIIIIQII")
#: The R-tree header's first fields (magic, children per node, item count).
INDEX_HEADER_START = struct.Struct(INDEX_HEADER.format[:4])
#: R-tree leaf item: the range a block covers (chromosome id, start; chromosome id, end) and
#: where the block lies (offset, size).
INDEX_LEAF = np.dtype([("start_chrom", "<u4"), ("start", "<u4"), ("end_chrom", "<u4"),
                       ("end", "<u4"), ("offset", "<u8"), ("size", "<u8")])
#: R-tree node item: the range of a child node and the child's offset.
INDEX_NODE = np.dtype([("start_chrom", "<u4"), ("start", "<u4"), ("end_chrom", "<u4"),
                       ("end", "<u4"), ("child", "<u8")])

#: The count of data blocks, at the data offset.
DATA_COUNT = struct.Struct("<Q")
#: Header of a data section: chromosome id, start, end, step, span, type, reserved, item count.
SECTION = struct.Struct("<IIIIIBBH")
BEDGRAPH, VARIABLE_STEP, FIXED_STEP = 1, 2, 3  # section types
#: The items of each section type: (start, end, value), (start, value) of ``span`` bases, and
#: values alone (item ``i`` starts ``i * step`` bases after the section's start).
SECTION_ITEM = {
    BEDGRAPH: np.dtype([("start", "<u4"), ("end", "<u4"), ("value", "<f4")]),
    VARIABLE_STEP: np.dtype([("start", "<u4"), ("value", "<f4")]),
    FIXED_STEP: np.dtype("<f4"),
}

#: The count of a zoom level's records, at the level's data offset.
ZOOM_DATA_COUNT = struct.Struct("<I")
#: A zoom record: the summary of the bases with data in ``[start, end)`` of a chromosome.
ZOOM_RECORD = np.dtype([("chrom", "<u4"), ("start", "<u4"), ("end", "<u4"), ("n", "<u4"),
                        ("min", "<f4"), ("max", "<f4"), ("sum", "<f4"), ("sumsq", "<f4")])
