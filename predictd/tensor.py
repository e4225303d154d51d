"""The data tensor on storage: Parquet blocks of bins × experiments plus a JSON header.

Layout under a tensor root (local directory or ``s3://``, ``gs://`` or Azure prefix)::

    header.json                          cell types, assays, experiments, genome, bin size,
                                         transform, sources and their checksums, blocks
    chrom={chrom}/block={b:06d}.parquet  columns: bin (int64), start (int64), then one float32
                                         column per experiment ("{cell_type}.{assay}"),
                                         null = not observed

The hive-style directories make the tensor readable as one table by pandas, pyarrow or duckdb
(``duckdb.sql("select * from 'OUT/tensor/*/*.parquet'")``). Missing is null, never zero.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .errors import PredictdError
from .genome import Genome
from .names import split_experiment

HEADER = "header.json"
FORMAT = "predictd-tensor/1"


@dataclass
class TensorHeader:
    experiments: list[str]          # "cell.assay", column order
    cell_types: list[str]
    assays: list[str]
    genome: dict                    # {"name": ..., "chroms": [[chrom, length], ...]}
    bin_size: int
    block_bins: int
    transform: str
    sources: dict = field(default_factory=dict)      # experiment -> {uri, md5, bytes}
    track_stats: dict = field(default_factory=dict)  # experiment -> {mean, max, nonzero, ...}
    manifest_checksum: str = ""
    format: str = FORMAT

    @property
    def exp_cell(self) -> np.ndarray:
        idx = {c: i for i, c in enumerate(self.cell_types)}
        return np.array([idx[split_experiment(e)[0]] for e in self.experiments], dtype=np.int64)

    @property
    def exp_assay(self) -> np.ndarray:
        idx = {a: i for i, a in enumerate(self.assays)}
        return np.array([idx[split_experiment(e)[1]] for e in self.experiments], dtype=np.int64)

    def indices(self, experiments) -> tuple[np.ndarray, np.ndarray]:
        """Cell type and assay indices (:attr:`exp_cell`, :attr:`exp_assay`) of
        ``experiments``, in their order."""
        idx = {e: i for i, e in enumerate(self.experiments)}
        at = [idx[e] for e in experiments]
        return self.exp_cell[at], self.exp_assay[at]

    @property
    def genome_obj(self) -> Genome:
        return Genome(self.genome["name"], tuple(tuple(c) for c in self.genome["chroms"]))

    def blocks(self) -> list[tuple[str, int, int, int]]:
        return genome_blocks(self.genome_obj, self.bin_size, self.block_bins)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "tensor header") -> "TensorHeader":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise PredictdError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PredictdError(f"{where}: not a predictd tensor header")
        try:
            return cls(**d)
        except TypeError as e:
            raise PredictdError(f"{where}: unexpected fields ({e})") from None


def genome_blocks(genome: Genome, bin_size: int, block_bins: int
                  ) -> list[tuple[str, int, int, int]]:
    """Every block of the genome as (chrom, block index, first bin, number of bins), in genome
    order."""
    out = []
    for chrom, length in genome.chroms:
        n = -(-length // bin_size)
        for b, start in enumerate(range(0, n, block_bins)):
            out.append((chrom, b, start, min(block_bins, n - start)))
    return out


def block_bins(blocks) -> list[int]:
    """Bins of each :func:`genome_blocks` entry, or of each group (list) of them: a task's
    cost, for :func:`predictd.spark.map_tasks`."""
    return [sum(b[3] for b in g) if isinstance(g, list) else g[3] for g in blocks]


def block_uri(root: str, chrom: str, block: int) -> str:
    return storage.join(root, f"chrom={chrom}", f"block={block:06d}.parquet")


#: A block's row coordinates: its bin (within the chromosome) and that bin's start in bp.
COORDINATES = ("bin", "start")
#: Their Parquet encoding: plain, they took 2 MB of every 262,144-bin block, so a chromosome
#: no track covers still cost 2 MB a block; delta-encoded, a few KB.
COORDINATE_ENCODING = {c: "DELTA_BINARY_PACKED" for c in COORDINATES}


def coordinate_columns(start_bin: int, n: int, bin_size: int) -> dict:
    """The :data:`COORDINATES` columns of a block of ``n`` bins from ``start_bin`` (Arrow)."""
    bins = np.arange(start_bin, start_bin + n, dtype=np.int64)
    return {"bin": pa.array(bins), "start": pa.array(bins * bin_size)}


def encode_block(start_bin: int, X: np.ndarray, names: list[str], bin_size: int) -> bytes:
    """A block as Parquet bytes: NaN becomes null (not observed)."""
    cols = coordinate_columns(start_bin, X.shape[0], bin_size)
    for j, name in enumerate(names):
        col = np.ascontiguousarray(X[:, j], dtype=np.float32)
        nan = np.isnan(col)
        cols[name] = pa.array(col, mask=nan if nan.any() else None)
    buf = io.BytesIO()
    # Dictionary encoding is Parquet's default, but binned signal has too many distinct values
    # for it: it slows encoding and decoding for no smaller file (docs/performance.md).
    # LZ4: a block is written once and its columns read by many write tasks; on the Roadmap
    # tracks it decodes in 0.55× zstd's time for a file 1.25× the size
    pq.write_table(pa.table(cols), buf, compression="lz4", row_group_size=1 << 20,
                   use_dictionary=False, column_encoding=COORDINATE_ENCODING)
    return buf.getvalue()


def decode_block(source, columns: list[str], where: str, into: np.ndarray | None = None,
                 at=None) -> tuple[np.ndarray, np.ndarray]:
    """(bins, X) from a block's Parquet (an open seekable file or Arrow buffer: only the
    requested columns' chunks are read); X is float32 bins × columns with NaN for null.
    ``into`` (a column-major bins × N float32 array) receives the columns at indices ``at``
    instead, and is returned as X."""
    try:
        # decoded in this thread: Arrow's pool would add threads to a task that has one core
        # (a Spark task's, or one of the threads a stage runs), for more CPU time in all.
        # ParquetFile, not read_table: read_table imports pyarrow.dataset on first use,
        # 0.2 s of every fresh Spark Python worker's first task
        t = pq.ParquetFile(source).read(columns=["bin", *columns], use_threads=False)
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise PredictdError(f"tensor block {where} is unreadable: {e}") from None
    bins = t.column("bin").to_numpy()
    if into is not None:
        for j, c in zip(at, columns):
            into[:, j] = t.column(c).to_numpy(zero_copy_only=False)
        return bins, into
    # filled experiment by experiment into contiguous rows, returned as its (column-major)
    # transpose: each column is one contiguous track, which is how the columns are read
    XT = np.empty((len(columns), t.num_rows), dtype=np.float32)
    for j, c in enumerate(columns):
        XT[j] = t.column(c).to_numpy(zero_copy_only=False)
    return bins, XT.T


def write_block(root: str, chrom: str, block: int, start_bin: int, X: np.ndarray,
                names: list[str], bin_size: int) -> None:
    storage.write_bytes_atomic(block_uri(root, chrom, block),
                               encode_block(start_bin, X, names, bin_size))


def read_block(root: str, chrom: str, block: int, columns: list[str],
               into: np.ndarray | None = None, at=None) -> tuple[np.ndarray, np.ndarray]:
    """(bins, X) of a block's ``columns`` (``into``, ``at``: see :func:`decode_block`)."""
    uri = block_uri(root, chrom, block)
    # read in place (memory-mapped, or by byte ranges on S3): a task that needs a few of the
    # columns (writing a few cell types' tracks) reads only theirs, not the whole block
    with storage.open_random_access(uri) as fh:
        return decode_block(fh, columns, uri, into, at)


def write_header(root: str, header: TensorHeader) -> None:
    storage.write_text_atomic(storage.join(root, HEADER), header.to_json())


def read_header(root: str) -> TensorHeader:
    uri = storage.join(root, HEADER)
    if not storage.exists(uri):
        raise PredictdError(f"no tensor at {root} (missing {HEADER}; run `predictd ingest`)")
    return TensorHeader.from_json(storage.read_text(uri), where=uri)


@dataclass(frozen=True)
class TensorUnion:
    """Several tensors on the same genome grid read as one: ``parts`` = ((root, experiments),
    ...). A reference imputation reads the reference's tensor and the new samples' tensor
    this way, without copying either."""

    parts: tuple

    def read_block(self, chrom: str, block: int, columns: list[str]
                   ) -> tuple[np.ndarray, np.ndarray]:
        where = {}
        for p, (_, exps) in enumerate(self.parts):
            for e in exps:
                where.setdefault(e, p)
        missing = [c for c in columns if c not in where]
        if missing:
            raise PredictdError(f"no tensor holds experiment {missing[0]}")
        if not columns:
            raise PredictdError("TensorUnion.read_block: no columns asked for")
        bins, X = None, None
        for p, (root, _) in enumerate(self.parts):
            mine = [i for i, c in enumerate(columns) if where[c] == p]
            if not mine:
                continue
            if X is None:
                bins, Xp = read_block(root, chrom, block, [columns[i] for i in mine])
                # every part's columns decode straight into one column-major array
                X = np.empty((Xp.shape[0], len(columns)), dtype=np.float32, order="F")
                X[:, mine] = Xp
            else:
                bins, X = read_block(root, chrom, block, [columns[i] for i in mine], X, mine)
        return bins, X


def read_columns(root, chrom: str, block: int, columns: list[str]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_block` of a tensor root, or of a :class:`TensorUnion`."""
    if isinstance(root, TensorUnion):
        return root.read_block(chrom, block, columns)
    return read_block(root, chrom, block, columns)
