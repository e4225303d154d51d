"""Genome assemblies: chromosome names and lengths, and the 25 bp bins they hold.

A :class:`Genome` is a small immutable value (an ordered tuple of ``(chrom, length)`` pairs) so it
can be hashed, compared, broadcast to Spark executors and written into dataset headers as JSON.

Three assemblies are bundled with their primary chromosomes only (``chr1``..``chr22``/``chr19``,
``chrX``, ``chrY``, ``chrM``; no ``_random``, ``_alt``, ``chrUn`` or haplotype contigs):
``hg19``, ``hg38`` and ``mm10``. Any other assembly is given as a UCSC-style ``chrom.sizes`` file.
The bundled lengths are UCSC's; each was checked against two independent public copies of the UCSC
``<assembly>.chrom.sizes`` files, and the assembly totals against their published values.

Examples
--------
>>> g = load_genome("hg19")
>>> g.sizes["chr22"]
51304566
>>> g.n_bins(25)["chrM"]  # ceil(16571 / 25)
663
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources

from predictd.errors import PredictdError

BUNDLED_GENOMES = ("hg19", "hg38", "mm10")


@dataclass(frozen=True)
class Genome:
    """An ordered set of chromosomes with their lengths in base pairs.

    Parameters
    ----------
    name : str
        Assembly name (``"hg38"``) or, for a user file, the file's path.
    chroms : tuple of (str, int)
        ``(chromosome, length)`` pairs in the order tracks are laid out.
    """

    name: str
    chroms: tuple[tuple[str, int], ...]

    def __post_init__(self):
        # Normalise lists (e.g. from JSON) into tuples so the value stays hashable.
        object.__setattr__(self, "chroms", tuple((str(c), int(n)) for c, n in self.chroms))

    @property
    def sizes(self) -> dict[str, int]:
        """Chromosome lengths, in genome order.

        Returns
        -------
        dict of str to int
        """
        return dict(self.chroms)

    @property
    def names(self) -> list[str]:
        """Chromosome names in genome order."""
        return [c for c, _ in self.chroms]

    def n_bins(self, bin_size: int) -> dict[str, int]:
        """Number of bins of each chromosome, the last partial bin included.

        Parameters
        ----------
        bin_size : int
            Bin width in base pairs (positive).

        Returns
        -------
        dict of str to int
            ``ceil(length / bin_size)`` per chromosome.

        Examples
        --------
        >>> Genome("toy", (("chr1", 100), ("chr2", 101))).n_bins(25)
        {'chr1': 4, 'chr2': 5}
        """
        bin_size = _check_bin_size(bin_size)
        return {c: -(-n // bin_size) for c, n in self.chroms}

    def total_bins(self, bin_size: int) -> int:
        """Number of bins over the whole genome (sum of :meth:`n_bins`)."""
        return sum(self.n_bins(bin_size).values())

    def to_json(self) -> str:
        """Serialise to a JSON string (``{"name": ..., "chroms": [[chrom, length], ...]}``)."""
        return json.dumps({"name": self.name, "chroms": [list(p) for p in self.chroms]})

    @classmethod
    def from_json(cls, text: str | dict) -> "Genome":
        """Rebuild a genome from :meth:`to_json` output (a string or the parsed dict).

        Raises
        ------
        PredictdError
            If the JSON does not describe a genome.
        """
        try:
            obj = json.loads(text) if isinstance(text, str) else text
            genome = cls(obj["name"], tuple((c, n) for c, n in obj["chroms"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PredictdError(f"genome JSON is malformed: {exc}") from None
        _validate_chroms(genome.chroms, where=f"genome JSON {genome.name!r}")
        return genome


def _check_bin_size(bin_size) -> int:
    if isinstance(bin_size, bool) or not isinstance(bin_size, int) or bin_size <= 0:
        raise PredictdError(f"bin_size must be a positive integer, got {bin_size!r}")
    return bin_size


def _validate_chroms(chroms, where: str) -> None:
    if not chroms:
        raise PredictdError(f"{where}: no chromosomes")
    seen = set()
    for c, n in chroms:
        if c in seen:
            raise PredictdError(f"{where}: duplicate chromosome {c!r}")
        seen.add(c)
        if n <= 0:
            raise PredictdError(f"{where}: chromosome {c!r} has non-positive size {n}")


def parse_chrom_sizes(path: str, name: str | None = None) -> Genome:
    """Read a ``chrom.sizes`` file: one ``chrom<TAB or spaces>length`` pair per line.

    Blank lines and lines starting with ``#`` are skipped. Order is kept.

    Parameters
    ----------
    path : str
        Local file path.
    name : str, optional
        Genome name; defaults to ``path``.

    Returns
    -------
    Genome

    Raises
    ------
    PredictdError
        Naming the file (and line) when it is missing, unreadable, empty, has a line without exactly
        two columns, a non-integer or non-positive size, or a chromosome listed twice.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise PredictdError(f"chrom.sizes file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictdError(f"cannot read chrom.sizes file {path}: {exc}") from None

    chroms: list[tuple[str, int]] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise PredictdError(
                f"{path}:{lineno}: expected 2 columns (chrom, size), got {len(fields)}: {raw!r}"
            )
        chrom, size_text = fields
        try:
            size = int(size_text)
        except ValueError:
            raise PredictdError(
                f"{path}:{lineno}: size of {chrom!r} is not an integer: {size_text!r}"
            ) from None
        if size <= 0:
            raise PredictdError(f"{path}:{lineno}: size of {chrom!r} must be positive, got {size}")
        if chrom in first_line:
            raise PredictdError(
                f"{path}:{lineno}: duplicate chromosome {chrom!r} (first on line {first_line[chrom]})"
            )
        first_line[chrom] = lineno
        chroms.append((chrom, size))
    if not chroms:
        raise PredictdError(f"chrom.sizes file {path} is empty (no chromosome lines)")
    return Genome(name if name is not None else path, tuple(chroms))


def load_genome(name_or_path: str) -> Genome:
    """Load a bundled assembly by name or a ``chrom.sizes`` file by path.

    Parameters
    ----------
    name_or_path : str
        ``"hg19"``, ``"hg38"``, ``"mm10"`` (bundled, primary chromosomes only), or the path of a
        chrom.sizes file (local, or any URI :mod:`predictd.storage` reads: ``s3://``, ``gs://``,
        ``az://``, ``http(s)://``). A bundled name wins over a file of the same name in the working directory.

    Returns
    -------
    Genome

    Raises
    ------
    PredictdError
        If the name is neither bundled nor an existing file (the message lists the bundled names), or
        the file is malformed.

    Examples
    --------
    >>> len(load_genome("mm10").chroms)
    22
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise PredictdError(f"genome must be a name or a path, got {name_or_path!r}")
    key = os.fspath(name_or_path)
    if key in BUNDLED_GENOMES:
        ref = resources.files("predictd") / "data" / "genomes" / f"{key}.chrom.sizes"
        with resources.as_file(ref) as bundled_path:
            return parse_chrom_sizes(str(bundled_path), name=key)
    if os.path.isfile(key):
        return parse_chrom_sizes(key)
    if "://" in key:
        from predictd import storage
        from predictd.ingest import scratch_dir

        if storage.is_remote(key):
            return parse_chrom_sizes(storage.fetch_to_local(key, scratch_dir()),
                                     name=storage.display_uri(key))
    if os.path.exists(key):
        raise PredictdError(f"genome {key!r} is not a regular file")
    raise PredictdError(
        f"unknown genome {key!r}: not a bundled assembly ({', '.join(BUNDLED_GENOMES)}) "
        "and no such chrom.sizes file"
    )
