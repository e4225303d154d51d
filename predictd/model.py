"""The PREDICTD model as a small value object, and the pure functions that evaluate it.

Prediction for cell type j, assay k, bin i (docs/design.md §3)::

    x̂_jki = μ + bC_j + bA_k + bG_i + Σ_l C_jl · A_kl · G_il

Experiments are the observed (j, k) pairs, given as two index arrays ``exp_cell`` and
``exp_assay`` of length E. A block of data is a matrix ``X`` of bins × experiments with NaN for
missing entries (missing is a mask, never a zero).

A :class:`Model` holds the small factors (C, A, biases, μ) and names; it is saved as ``.npz`` (no
pickles) plus ``model.json``. Genome factors G are never part of it: they are solved in closed
form for any block of bins (see :mod:`predictd.solvers.closed_form`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import PredictdError
from .names import experiment_name

MODEL_NPZ = "factors.npz"
MODEL_JSON = "model.json"
#: The stacked regression's training statistics, kept beside the model (not in it, so a model
#: stays small in every Spark task): a reference imputation fits new cell types from them.
STACK_STATS_NPZ = "stack_stats.npz"


def experiment_features(C: np.ndarray, A: np.ndarray, exp_cell, exp_assay,
                        out: np.ndarray | None = None) -> np.ndarray:
    """Each experiment's loadings on the latent factors: ``Z[e] = C[j_e] ⊙ A[k_e]``.

    The one place the factor model turns cell-type and assay factors into experiment features;
    every solver and the imputation use it (on a :class:`Model` through
    :meth:`Model.experiment_features`).

    Parameters
    ----------
    C : (n_cell_types, L) array
        Cell-type factors.
    A : (n_assays, L) array
        Assay factors.
    exp_cell, exp_assay : (E,) int arrays
        Cell-type and assay index of each experiment.
    out : (E, L) array, optional
        Where to write the result (a solver's reused buffer).

    Returns
    -------
    (E, L) array
        In the factors' dtype (or ``out``).

    Examples
    --------
    >>> C = np.array([[1.0, 2.0], [0.5, -1.0]])
    >>> A = np.array([[3.0, 1.0], [2.0, 2.0]])
    >>> experiment_features(C, A, [0, 1], [1, 0]).tolist()
    [[2.0, 4.0], [1.5, -1.0]]
    """
    return np.multiply(C[exp_cell], A[exp_assay], out=out)


def experiment_bias(mu: float, bC: np.ndarray, bA: np.ndarray, exp_cell,
                    exp_assay) -> np.ndarray:
    """Each experiment's bias: ``μ + bC[j_e] + bA[k_e]``.

    Summed in that order, ``(μ + bC) + bA``, everywhere: floating-point addition is not
    associative, and every caller gets the same bits from this one function.

    Parameters
    ----------
    mu : float
        Global mean.
    bC : (n_cell_types,) array
        Cell-type biases.
    bA : (n_assays,) array
        Assay biases.
    exp_cell, exp_assay : (E,) int arrays
        Cell-type and assay index of each experiment.

    Returns
    -------
    (E,) array

    Examples
    --------
    >>> bC, bA = np.array([0.25, 1.0]), np.array([2.0, 4.0])
    >>> experiment_bias(0.5, bC, bA, [0, 1], [1, 0]).tolist()
    [4.75, 3.5]
    """
    return mu + bC[exp_cell] + bA[exp_assay]


def predict(G: np.ndarray, bG: np.ndarray, Z: np.ndarray, b_exp: np.ndarray) -> np.ndarray:
    """x̂ for a block: ``(G Zᵀ + bG) + b_exp`` (bins × experiments), one GEMM.

    ``Z`` and ``b_exp`` come from :func:`experiment_features` and :func:`experiment_bias`.
    """
    out = G @ Z.T
    out += bG[:, None]
    out += b_exp[None, :]
    return out


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays' contents (name, dtype, shape, bytes, in name order): what
    ``model.json`` records of ``factors.npz``. The file's own bytes carry zip timestamps, so
    they differ between saves of the same model; the contents do not."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def stack_gram_from_bytes(data: bytes, model: "Model", source: str) -> np.ndarray:
    """The stacking Gram statistics saved beside ``model`` (the bytes of its
    ``STACK_STATS_NPZ``), checked against the checksum its ``model.json`` records."""
    want = model.meta.get("stack_stats_sha256")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            stored = {k: np.asarray(z[k]) for k in z.files}
        gram = stored["gram"]
    except (ValueError, KeyError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise PredictdError(f"{source} is unreadable: {e}") from None
    if want is None or arrays_digest(stored) != want:
        raise PredictdError(f"{source}: model files altered (stacking statistics do not match "
                            f"the checksum recorded in {MODEL_JSON})")
    n_cell = len(model.cell_types)
    if gram.ndim != 3 or gram.shape[0] != n_cell or gram.shape[1] != gram.shape[2]:
        raise PredictdError(f"{source}: stacking statistics of shape {gram.shape}, not "
                            f"{n_cell} cell types × D × D")
    return gram


def _similar(value) -> tuple[int, float] | None:
    if value is None:
        return None
    width, tau = value  # a malformed value raises TypeError / ValueError: a malformed model
    if int(width) < 1 or not float(tau) > 0:
        raise ValueError(f"stack_similar {value!r}")
    return int(width), float(tau)


@dataclass
class Model:
    """Fitted cell-type/assay factors and biases, with the names that index them."""

    cell_types: list[str]
    assays: list[str]
    mu: float
    bC: np.ndarray
    bA: np.ndarray
    C: np.ndarray
    A: np.ndarray
    observed: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # the stacked transfer regression (predictd.solvers.stacking): weights per pair, NaN rows for
    # pairs that keep the factor model's value; None = the plain factor model
    stack: np.ndarray | None = None
    stack_windows: tuple[int, ...] = ()
    # (width, tau) of the similarity-weighted averages the stack was fitted with, or None
    stack_similar: tuple[int, float] | None = None
    # each (cell type, assay)'s nearest cell types, the only ones its similarity-weighted
    # average weighs (stacking.choose_neighbours; −1 = none), or None = every other one
    stack_neighbours: np.ndarray | None = None
    # the Gram statistics the stack was fitted from (n_cell × D × D): saved by :meth:`save` as
    # STACK_STATS_NPZ, never loaded with the model (:func:`load_stack_gram` reads them)
    stack_gram: np.ndarray | None = field(default=None, repr=False)
    # the stacked regression's predictive-variance model (predictd.solvers.uncertainty): the
    # calibrated β of every pair (n_cell × n_assay × m, NaN rows without one); None = no
    # uncertainty tracks
    stack_variance: np.ndarray | None = None

    @property
    def latent_factors(self) -> int:
        return int(self.C.shape[1])

    def pairs(self) -> list[tuple[int, int]]:
        """Every (cell type, assay) index pair of the model, cell-type major."""
        return [(j, k) for j in range(len(self.cell_types)) for k in range(len(self.assays))]

    def pair_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        jj, kk = np.meshgrid(np.arange(len(self.cell_types)), np.arange(len(self.assays)),
                             indexing="ij")
        return jj.ravel(), kk.ravel()

    def track_names(self) -> list[str]:
        return [experiment_name(c, a) for c in self.cell_types for a in self.assays]

    def observed_indices(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The training experiments: their names, cell type and assay indices (int arrays)."""
        cidx = {c: i for i, c in enumerate(self.cell_types)}
        aidx = {a: i for i, a in enumerate(self.assays)}
        return ([experiment_name(c, a) for c, a in self.observed],
                np.array([cidx[c] for c, _ in self.observed], dtype=int),
                np.array([aidx[a] for _, a in self.observed], dtype=int))

    def observed_matrix(self, extra_cells: int = 0) -> np.ndarray:
        """Which (cell type, assay) pairs are training experiments (bool, n_cell × n_assay),
        with ``extra_cells`` more rows of False (for cell types appended to the model)."""
        _, ec, ea = self.observed_indices()
        obs = np.zeros((len(self.cell_types) + extra_cells, len(self.assays)), dtype=bool)
        obs[ec, ea] = True
        return obs

    def experiment_features(self, exp_cell, exp_assay) -> np.ndarray:
        """:func:`experiment_features` of this model's factors (E × L, float64)."""
        return experiment_features(self.C, self.A, exp_cell, exp_assay)

    def experiment_bias(self, exp_cell, exp_assay) -> np.ndarray:
        """:func:`experiment_bias` of this model's biases (E,)."""
        return experiment_bias(self.mu, self.bC, self.bA, exp_cell, exp_assay)

    # ---------------------------------------------------------------- storage
    def save(self, directory: str) -> None:
        """Write ``factors.npz`` + ``model.json`` into a local directory, atomically per file."""
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{MODEL_NPZ}.tmp")
        arrays = {"C": self.C, "A": self.A, "bC": self.bC, "bA": self.bA,
                  "mu": np.array([self.mu], dtype=np.float64)}
        if self.stack is not None:
            arrays["stack"] = self.stack
        if self.stack_neighbours is not None:
            arrays["stack_neighbours"] = np.asarray(self.stack_neighbours, dtype=np.int64)
        if self.stack_variance is not None:
            arrays["stack_variance"] = self.stack_variance
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, os.path.join(directory, MODEL_NPZ))
        meta = dict(self.meta)
        if self.stack_gram is not None:
            gram = {"gram": np.asarray(self.stack_gram, dtype=np.float64)}
            tmp = os.path.join(directory, f".{STACK_STATS_NPZ}.tmp")
            with open(tmp, "wb") as fh:
                np.savez(fh, **gram)
            os.replace(tmp, os.path.join(directory, STACK_STATS_NPZ))
            # model.json's own checksum then covers them too
            meta["stack_stats_sha256"] = arrays_digest(gram)
        doc = {
            "format": "predictd-model/1",
            "cell_types": list(self.cell_types),
            "assays": list(self.assays),
            "latent_factors": self.latent_factors,
            "mu": float(self.mu),
            "observed": [list(p) for p in self.observed],
            "stack_windows": list(self.stack_windows),
            "stack_similar": None if self.stack_similar is None else list(self.stack_similar),
            "meta": meta,
            # checked on load: a reference's factors must be the ones its run saved
            "factors_sha256": arrays_digest({k: np.asarray(v) for k, v in arrays.items()}),
        }
        tmp = os.path.join(directory, f".{MODEL_JSON}.tmp")
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
        os.replace(tmp, os.path.join(directory, MODEL_JSON))

    @classmethod
    def load(cls, directory: str) -> "Model":
        """Read a model written by :meth:`save` (never unpickles anything)."""
        jpath = os.path.join(directory, MODEL_JSON)
        npath = os.path.join(directory, MODEL_NPZ)
        try:
            with open(jpath) as fh:
                doc = json.load(fh)
            with np.load(npath, allow_pickle=False) as z:
                stored = {k: np.asarray(z[k]) for k in z.files}
            arrays = {k: np.asarray(stored[k], dtype=np.float64)
                      for k in ("C", "A", "bC", "bA", "mu")}
            stack = np.asarray(stored["stack"], dtype=np.float64) if "stack" in stored else None
            near = np.asarray(stored["stack_neighbours"], dtype=np.int64) \
                if "stack_neighbours" in stored else None
            variance = (np.asarray(stored["stack_variance"], dtype=np.float64)
                        if "stack_variance" in stored else None)
        except FileNotFoundError as e:
            raise PredictdError(f"model not found: {e.filename}") from None
        except (ValueError, KeyError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise PredictdError(f"model in {directory} is unreadable: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != "predictd-model/1":
            fmt = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise PredictdError(f"{jpath}: not a predictd model (format {fmt!r})")
        want = doc.get("factors_sha256")  # absent in models saved before it was recorded
        if want is not None and arrays_digest(stored) != want:
            raise PredictdError(f"{npath}: model files altered (factors do not match the "
                                f"checksum recorded in {MODEL_JSON})")
        try:
            names_ok = all(isinstance(doc[k], list) and all(isinstance(x, str) for x in doc[k])
                           for k in ("cell_types", "assays"))
            if not names_ok:
                raise TypeError("cell_types and assays must be lists of names")
            m = cls(cell_types=doc["cell_types"], assays=doc["assays"],
                    mu=float(arrays["mu"].ravel()[0]), bC=arrays["bC"], bA=arrays["bA"],
                    C=arrays["C"], A=arrays["A"],
                    observed=[tuple(p) for p in doc.get("observed", [])],
                    meta=dict(doc.get("meta", {})), stack=stack,
                    stack_windows=tuple(int(w) for w in doc.get("stack_windows", [])),
                    stack_similar=_similar(doc.get("stack_similar")),
                    stack_neighbours=near, stack_variance=variance)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise PredictdError(f"{jpath}: malformed model description ({e})") from None
        if m.C.ndim != 2 or m.C.shape != (len(m.cell_types), m.latent_factors) or \
                m.A.shape != (len(m.assays), m.latent_factors) or \
                m.bC.shape != (len(m.cell_types),) or m.bA.shape != (len(m.assays),):
            raise PredictdError(f"{npath}: factor shapes do not match the names in {jpath}")
        if stack is not None and stack.shape[:2] != (len(m.cell_types), len(m.assays)):
            raise PredictdError(f"{npath}: stacking weights do not match the names in {jpath}")
        if stack is not None:
            from .solvers.stacking import has_hinges
            try:
                has_hinges(stack.shape[2], len(m.assays), m.stack_windows,
                           m.stack_similar is not None)
            except ValueError:
                # e.g. the hinge features of another predictd version: predicting would fail
                raise PredictdError(f"{npath}: stacking weights of {stack.shape[2]} features "
                                    "fit no feature layout of this predictd version; retrain "
                                    "the model") from None
        # (an extension's neighbours index its reference's cell types, not its own)
        if near is not None and (near.ndim != 3 or near.shape[:2] != (len(m.cell_types),
                                                                      len(m.assays))):
            raise PredictdError(f"{npath}: stacking neighbours do not match the names in "
                                f"{jpath}")
        if variance is not None and (stack is None or variance.ndim != 3 or
                                     variance.shape[:2] != stack.shape[:2]):
            raise PredictdError(f"{npath}: the uncertainty model does not match the stacking "
                                "weights")
        return m
