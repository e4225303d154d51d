"""Experiment names: ``{cell_type}.{assay}``, the key of an experiment (track) everywhere —
tensor columns, hold-out lists, model track names and output file names.

A name is split at its first dot, so an assay may contain dots (``H2A.Z``) and a cell type may
not (:func:`check_cell_type`). Cell type and assay names become parts of file names and S3 keys,
so :func:`check_name` keeps them to safe characters.

Examples
--------
>>> experiment_name("E003", "H2A.Z")
'E003.H2A.Z'
>>> split_experiment("E003.H2A.Z")
('E003', 'H2A.Z')
>>> check_name("CD4+_T-cell", "cell_type")
'CD4+_T-cell'
>>> check_cell_type("E.003")
Traceback (most recent call last):
...
predictd.errors.PredictdError: cell_type 'E.003' must not contain '.' (an experiment is named CELL_TYPE.ASSAY and split at its first dot)
"""

from __future__ import annotations

import re

from .errors import PredictdError

# Keep names to characters that are safe on every filesystem and in S3 keys, and forbid a
# leading dot (hidden files, "..").
_NAME_RE = re.compile(r"[A-Za-z0-9_.+-]+")


def experiment_name(cell_type: str, assay: str) -> str:
    """The name of the experiment of ``assay`` in ``cell_type``: ``"{cell_type}.{assay}"``."""
    return f"{cell_type}.{assay}"


def split_experiment(name: str) -> tuple[str, str]:
    """``(cell_type, assay)`` of an experiment name (split at the first dot).

    Raises
    ------
    ValueError
        If ``name`` has no dot.
    """
    cell_type, dot, assay = name.partition(".")
    if not dot:
        raise ValueError(f"experiment name {name!r} is not CELL_TYPE.ASSAY")
    return cell_type, assay


def check_name(value: str, what: str = "name", where: str = "") -> str:
    """Check that a cell type or assay name is safe to use in file names.

    Parameters
    ----------
    value : str
        The name.
    what : str
        What the name is (``"cell_type"``), for the message.
    where : str
        Location prefix for the message (``"m.tsv, row 3: "``).

    Returns
    -------
    str
        ``value`` unchanged.

    Raises
    ------
    PredictdError
        If the name is empty, has characters outside ``[A-Za-z0-9_.+-]`` or starts with ``.``.
    """
    if not value:
        raise PredictdError(f"{where}{what} is empty")
    if not _NAME_RE.fullmatch(value):
        bad = sorted({c for c in value if not _NAME_RE.fullmatch(c)})
        raise PredictdError(
            f"{where}{what} {value!r} has characters unsafe in file names {bad!r} "
            "(allowed: letters, digits, '_', '.', '+', '-')"
        )
    if value.startswith("."):
        raise PredictdError(f"{where}{what} {value!r} must not start with '.'")
    return value


def check_cell_type(value: str, what: str = "cell_type", where: str = "") -> str:
    """:func:`check_name` for a cell type, which also may not contain a dot: experiment names
    are split at their first dot, so ``E.003`` with ``H3K4me3`` would read back as cell type
    ``E`` and assay ``003.H3K4me3``."""
    check_name(value, what, where)
    if "." in value:
        raise PredictdError(f"{where}{what} {value!r} must not contain '.' (an experiment is named "
                            "CELL_TYPE.ASSAY and split at its first dot)")
    return value


def listed(value, what: str) -> tuple:
    """A Python API argument that takes several names (``holdout``, ``assays``, …) as a
    tuple: one string is one name (not its letters); None is none.

    >>> listed("E116:H3K4me3", "holdout"), listed(["x", "y"], "assays"), listed(None, "assays")
    (('E116:H3K4me3',), ('x', 'y'), ())
    """
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise PredictdError(f"{what}: expected a name or a list of names, got {value!r}") from None
