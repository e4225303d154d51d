"""Cross-cell-type transfer regression stacked on the model (docs/design.md §6).

For a target pair (cell type j, assay k) the prediction for bin i is linear in that bin's own
observed values::

    ŷ_jki = w_0 + Σ_{k' ∈ K} w_k' x_jk'i + w_avg · avg_k(j)_i

with K ⊆ the other assays observed in cell type j, and ``avg_k(j)`` the ``average`` baseline
(mean of assay k over the other cell types that have it). The weights are learned on the
*other* cell types that have assay k observed — in each such cell type c the features
(x_ck', avg_k(c)) of the assays of K that c has too are regressed on the observed track x_ck,
and the target's weights are the mean of these per-cell-type regressions (or one regression
on their pooled bins, on the assays they all have) — so the
regression transfers "how assay k relates to the other assays of a cell" across cell types,
and a held-out pair never contributes to its own weights. It is the PARAFAC model's fall-back
companion: targets with no training cell type, and bins where a feature is missing, take the
model's value.

With ``similar`` (config ``stack_similar``, default on) the feature ``avg_k(j)`` is instead the
average weighted by how much each other cell type resembles j *locally*
(:func:`similar_averages`: correlation of their shared other assays over a window of ~25 kb):
ChromImpute's nearest-neighbour cell types, made smooth. The plain average stays in the
vectors for the blend (:func:`blend_with_average`).

Everything is computed from per-cell-type Gram matrices of the vectors::

    v_ci = [1, x_c1i … x_cKi, avg_1(c)_i … avg_K(c)_i]      (1 + 2·n_assays)

which shards sum (:func:`stack_stats`, :func:`sum_stack_stats`) and the driver solves per
target (:func:`fit_stack`). Prediction (:func:`predict_pairs`) needs only a tensor block and
the small weight array: one GEMM per cell type per block.
"""

from __future__ import annotations

import copy

import numpy as np


#: Knots (model units, arcsinh by default) of the hinge features max(0, x − t) (config
#: ``stack_hinges``): a similarity-weighted average's median is ~0.2 and its 90th–99th
#: percentiles ~0.4–3.4 on the Roadmap pilot, so the knots bend the regression where a
#: signal is a peak, not background.
HINGE_KNOTS = (0.5, 1.0, 2.0)


def hinged_rows(n_assay: int, n_windows: int) -> np.ndarray:
    """Rows of ``v`` the hinge features bend: the cell type's own assays over each window
    (their context says which regime a bin is in: a promoter, a domain), then the
    similarity-weighted averages at the bin (the similar cell types' own peaks)."""
    own = [1 + 2 * n_assay * s + np.arange(n_assay) for s in range(1, 1 + n_windows)]
    return np.concatenate(own + [_similar_offset(n_assay, n_windows) + np.arange(n_assay)])


def hinge_columns(n_assay: int, n_windows: int, rows) -> np.ndarray:
    """Indices in ``v`` of the hinge features of the rows ``rows`` of ``v`` (each row's
    :data:`HINGE_KNOTS` in order; rows that are not hinged have none)."""
    hinged = hinged_rows(n_assay, n_windows)
    pos = {int(r): i for i, r in enumerate(hinged)}
    base = n_features(n_assay, (0,) * n_windows, True)  # the hinges follow every other feature
    nk = len(HINGE_KNOTS)
    return np.asarray([base + pos[int(r)] * nk + t for r in rows if int(r) in pos
                       for t in range(nk)], dtype=int)


def n_features(n_assay: int, windows=(), similar: bool = False, hinges: bool = False) -> int:
    """Length of a cell type's feature vector ``v``: 1 + 2·n_assays·(1 + len(windows)), and
    n_assays·(1 + len(windows)) more with the similarity-weighted averages, and
    len(:data:`HINGE_KNOTS`) more per :func:`hinged_rows` row with the hinges."""
    return 1 + (3 if similar else 2) * n_assay * (1 + len(windows)) + \
        (n_assay * (1 + len(windows)) * len(HINGE_KNOTS) if hinges else 0)


def has_hinges(D: int, n_assay: int, windows=(), similar: bool = False) -> bool:
    """Whether weights (or statistics) of ``D`` features hold the hinge features."""
    if D == n_features(n_assay, windows, similar):
        return False
    if similar and D == n_features(n_assay, windows, similar, True):
        return True
    raise ValueError(f"{D} features: windows {tuple(windows)} (similar={similar}) need "
                     f"{n_features(n_assay, windows, similar)}, or "
                     f"{n_features(n_assay, windows, similar, True)} with hinges")


def _similar_offset(n_assay: int, n_windows: int) -> int:
    """Index in ``v`` of the first similarity-weighted average (after every plain segment)."""
    return 1 + 2 * n_assay * (1 + n_windows)


def _window_sums(A: np.ndarray, h: int) -> np.ndarray:
    """Sums of each row of A (series × bins, float64) over the centred windows [i − h, i + h]
    truncated at the ends."""
    return _window_sum(_padded_cumsum(A, h), h, h, A.shape[1], None)


def local_correlations(x: np.ndarray, Y: np.ndarray, width: int, chunk: int = 32
                       ) -> np.ndarray:
    """Pearson correlation of series x (bins) with each row of Y (series × bins) over the
    centred window of ``width`` bins around every bin (truncated at the ends), float32
    (series × bins). Missing values (NaN) count as 0; a window where either series is
    constant gives 0. Window sums come from cumulative sums: O(bins) per series whatever
    the width."""
    h = int(width) // 2
    n = x.size
    N = _window_lengths(n, h)
    xc = np.nan_to_num(np.asarray(x, dtype=np.float64))[None, :]
    Sx = _window_sums(xc, h)[0]
    vx = N * _window_sums(xc * xc, h)[0] - Sx * Sx
    out = np.empty((Y.shape[0], n), dtype=np.float32)
    for s in range(0, Y.shape[0], chunk):
        Yc = np.nan_to_num(np.asarray(Y[s:s + chunk], dtype=np.float64))
        Sy = _window_sums(Yc, h)
        vy = N * _window_sums(Yc * Yc, h) - Sy * Sy
        cov = N * _window_sums(Yc * xc, h) - Sx * Sy
        den = vx * vy
        # relative guard: cumulative-sum differences leave rounding residue in flat windows
        ok = (vx > 1e-9 * N * N) & (vy > 1e-9 * N * N)
        r = np.divide(cov, np.sqrt(np.where(ok, den, 1.0)), out=np.zeros_like(cov), where=ok)
        out[s:s + chunk] = np.clip(r, -1.0, 1.0)
    return out


def similarity_step(width: int) -> int:
    """Bins per cell of the coarse grid the resemblance is measured on: a window of ``width``
    bins spans about 100 cells of it (1 for windows under 200 bins). Coarser cells make the
    local correlations cheaper; on the Roadmap pilot they score as the bin-level ones do
    (docs/accuracy.md)."""
    return max(1, int(width) // 100)


#: Points of a resemblance window at which the correlations are evaluated (at most): a window
#: of ~100 cells is evaluated every 4 cells, the weights interpolated linearly in between.
RESEMBLANCE_POINTS = 25


def similarity_stride(cells: int) -> int:
    """Cells of the coarse grid per point where the resemblance is evaluated, for a window
    of ``cells`` cells: 1 (every cell) for windows under 50 cells. Consecutive windows of 100
    cells share 96 of them, so the correlations change little from one cell to the next,
    and evaluating them every 4th cell quarters their cost (docs/accuracy.md)."""
    return max(1, int(cells) // RESEMBLANCE_POINTS)


def _group_sums(A: np.ndarray, stride: int) -> np.ndarray:
    """Sums of each row of A over consecutive groups of ``stride`` columns (the last one
    possibly shorter); A itself for a stride of 1."""
    if stride == 1:
        return A
    n = A.shape[1]
    whole = n // stride
    out = np.empty((A.shape[0], -(-n // stride)), dtype=A.dtype)
    # strided adds: several times faster than a reduction over a short last axis
    np.copyto(out[:, :whole], A[:, 0:whole * stride:stride])
    for j in range(1, stride):
        out[:, :whole] += A[:, j:whole * stride:stride]
    if whole < out.shape[1]:
        out[:, whole] = A[:, whole * stride:].sum(axis=1)
    return out


def _group_products(A: np.ndarray, x: np.ndarray, stride: int) -> np.ndarray:
    """:func:`_group_sums` of A · x (each row of A times the series x), without the
    product's temporary."""
    if stride == 1:
        return A * x[None, :]
    n = A.shape[1]
    whole = n // stride
    out = np.empty((A.shape[0], -(-n // stride)), dtype=np.result_type(A, x))
    np.einsum("rps,ps->rp", A[:, :whole * stride].reshape(A.shape[0], whole, stride),
              x[:whole * stride].reshape(whole, stride), out=out[:, :whole])
    if whole < out.shape[1]:
        out[:, whole] = A[:, whole * stride:] @ x[whole * stride:]
    return out


def coarse_sums(XT: np.ndarray, step: int) -> np.ndarray:
    """Sums of each row of XT (experiments × bins) over consecutive cells of ``step`` bins (the
    last one possibly shorter), missing values counting as 0: (experiments × cells) float32,
    each the float32 sum of its cell's values. A row's sums do not depend on the other rows,
    so sums stored once per block (:func:`predictd.impute.write_coarse`) are those a task
    would compute from the same columns."""
    E, n = XT.shape
    whole = n // step
    out = np.zeros((E, -(-n // step)), dtype=np.float32)
    for s in range(0, E, 64):   # bounded temporaries at any number of experiments
        part = np.asarray(XT[s:s + 64], dtype=np.float32)
        part = np.where(np.isnan(part), np.float32(0.0), part)
        if whole:
            out[s:s + 64, :whole] = part[:, :whole * step].reshape(-1, whole, step).sum(axis=2)
        if whole * step < n:
            out[s:s + 64, -1] = part[:, whole * step:].sum(axis=1)
    return out


def coarse_cell_sizes(n: int, step: int) -> np.ndarray:
    """Bins in each cell of the coarse grid of ``n`` bins (float64: ``step``, the last one
    possibly fewer)."""
    sizes = np.full(-(-n // step), float(step))
    if n % step:
        sizes[-1] = n % step
    return sizes


def coarse_means(XT: np.ndarray, step: int) -> np.ndarray:
    """Means of each row of XT (experiments × bins) over consecutive cells of ``step`` bins
    (the last one possibly shorter), missing values counting as 0: (experiments × cells)
    float64, :func:`coarse_sums` over the cells' sizes."""
    return coarse_sums(XT, step) / coarse_cell_sizes(XT.shape[1], step)


def resemblance_sums(X: np.ndarray, exp_assay, rows=None) -> dict:
    """What the cell types' overall resemblance is computed from, over a block's ``rows`` (a
    boolean mask or indices; every bin when None): the number of bins, each experiment's sum
    and sum of squares, and the products of every pair of experiments of the same assay
    (E × E, 0 between assays). Missing values count as 0. Shards add them
    (:func:`sum_resemblance_sums`)."""
    X = np.asarray(X)
    exp_assay = np.asarray(exp_assay)
    part = np.asarray(X if rows is None else X[rows], dtype=np.float64)
    part = np.where(np.isnan(part), 0.0, part)
    E = part.shape[1]
    cross = np.zeros((E, E))
    for a in np.unique(exp_assay):
        idx = np.flatnonzero(exp_assay == a)
        cross[np.ix_(idx, idx)] = part[:, idx].T @ part[:, idx]
    return {"n": np.array(float(part.shape[0])), "sum": part.sum(axis=0),
            "sumsq": (part * part).sum(axis=0), "cross": cross}


def sum_resemblance_sums(parts: list[dict]) -> dict:
    """Add :func:`resemblance_sums` of shards in shard order (deterministic)."""
    out = {k: np.array(v, dtype=np.float64, copy=True) for k, v in parts[0].items()}
    for p in parts[1:]:
        for k in out:
            out[k] += p[k]
    return out


def choose_neighbours(sums: dict, exp_cell, exp_assay, n_cell: int, n_assay: int, k: int,
                      cells=None, observed: np.ndarray | None = None) -> np.ndarray:
    """For every (cell type j, assay a), the ``k`` other cell types observing a that resemble
    j most over the whole sample: the mean, over the other assays both have observed (a left
    out, as in :func:`similar_averages`), of the Pearson correlation of their tracks
    (:func:`resemblance_sums`); 0 without a shared assay; ties by cell type index.
    ChromImpute's nearest cell types: the similarity-weighted averages then weigh only these,
    so a target's features read k columns per assay, not every cell type's. Returns
    (n_cell × n_assay × k) cell type indices, −1 where fewer exist. ``cells`` restricts the
    choice to those target cell types (the others' rows stay −1). ``observed`` (n_cell ×
    n_assay) says which cell types observe each assay, when the sums do not cover every
    experiment (a new cell type's, against the reference's tracks of its own assays)."""
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    n, s, q, cross = sums["n"], sums["sum"], sums["sumsq"], sums["cross"]
    var = np.maximum(n * q - s * s, 0.0)
    sd = np.sqrt(var)
    # correlation per assay between cell types (n_cell × n_cell), 0 where undefined
    C = np.zeros((n_assay, n_cell, n_cell))
    P = np.zeros((n_assay, n_cell, n_cell))
    for a in range(n_assay):
        idx = np.flatnonzero(exp_assay == a)
        if not idx.size:
            continue
        cov = n * cross[np.ix_(idx, idx)] - np.outer(s[idx], s[idx])
        den = np.outer(sd[idx], sd[idx])
        r = np.divide(cov, den, out=np.zeros_like(cov), where=den > 0)
        ci = exp_cell[idx]
        C[a][np.ix_(ci, ci)] = r
        P[a][np.ix_(ci, ci)] = 1.0
    tot_r, tot_n = (C * P).sum(axis=0), P.sum(axis=0)
    if observed is None:
        observed = np.zeros((n_cell, n_assay), dtype=bool)
        observed[exp_cell, exp_assay] = True
    out = np.full((n_cell, n_assay, k), -1, dtype=np.int64)
    for a in range(n_assay):
        # leave assay a out of the resemblance
        cnt = tot_n - P[a]
        res = np.divide(tot_r - C[a] * P[a], cnt, out=np.zeros_like(cnt), where=cnt > 0)
        for j in (range(n_cell) if cells is None else cells):
            cand = np.flatnonzero(observed[:, a] & (np.arange(n_cell) != j))
            best = cand[np.lexsort((cand, -res[j, cand]))][:k]
            out[j, a, :best.size] = np.sort(best)
    return out


def similar_columns(exp_cell, exp_assay, cells, neighbours: np.ndarray | None,
                    resemblance: bool = True) -> np.ndarray:
    """Which experiments (boolean mask) the similarity-weighted averages of the cell types
    ``cells`` read: their own, every neighbour's (:func:`choose_neighbours`) of each assay,
    and (with ``resemblance``) every neighbour's of the target's own assays, whose coarse
    tracks the resemblance is measured on. All of them without neighbours."""
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    if neighbours is None:
        return np.ones(exp_cell.size, dtype=bool)
    keep = np.isin(exp_cell, cells)
    for c in cells:
        own = np.unique(exp_assay[exp_cell == c])
        near = neighbours[c]
        for a in range(near.shape[0]):
            keep |= (exp_assay == a) & np.isin(exp_cell, near[a][near[a] >= 0])
        if resemblance:
            keep |= np.isin(exp_assay, own) & np.isin(exp_cell, np.unique(near[near >= 0]))
    return keep


class SimilarityInputs:
    """What every target cell type's :func:`similar_averages` share in one block, computed
    once per assay when first needed: the assay's coarse tracks (:func:`coarse_means`) with
    their window sums and spread over the resemblance windows, and its values with missing
    values as 0 (the rows that had some marked). A cell type's resemblance to the others then
    costs one windowed sum of products per pair of tracks, and each average one weighted sum
    over the assay's rows.

    XT holds every experiment of the block *experiment-major* (experiments × bins, NaN =
    missing); ``width`` is the resemblance window in bins.

    ``sums`` (experiments × cells, the :func:`coarse_sums` of every experiment ``exp_assay``
    lists, e.g. stored once per block) give the coarse tracks instead; XT then holds only the
    rows ``full`` (indices into those experiments, ascending) — the experiments an average
    weighs, which need every bin — and ``exp_cell`` names the experiments' cell types for
    :func:`similar_averages` (:attr:`exp_cell`, :attr:`exp_assay`)."""

    def __init__(self, XT: np.ndarray, exp_assay, width: int, sums: np.ndarray | None = None,
                 full=None, exp_cell=None):
        self.XT = XT
        exp_assay = np.asarray(exp_assay)
        self.width = int(width)
        self.n, self.step = XT.shape[1], similarity_step(width)
        #: cells of the coarse grid
        self.G = G = -(-self.n // self.step)
        cells = max(1, int(width) // self.step)
        # the resemblance is evaluated at the centres of groups of `stride` cells, over
        # windows of whole groups (2·h + 1 of them), and interpolated to every cell
        self.stride = similarity_stride(cells)
        self.h = (cells // 2) // self.stride
        sizes = _group_sums(np.ones((1, G)), self.stride)[0]
        P = sizes.size
        #: cells in the window of each point
        self.N = _window_sums(sizes[None, :], self.h)[0]
        centre = np.arange(P) * self.stride + (sizes - 1) / 2.0
        g = np.arange(G)
        left = np.clip(np.searchsorted(centre, g, side="right") - 1, 0, max(P - 2, 0))
        right = np.minimum(left + 1, P - 1)
        span = centre[right] - centre[left]
        frac = np.divide(g - centre[left], span, out=np.zeros(G), where=span > 0)
        self._lerp = (left, right, np.clip(frac, 0.0, 1.0).astype(np.float32))
        #: each assay's experiments (rows of the coarse tracks), in experiment order
        self.rows = {int(a): np.flatnonzero(exp_assay == a) for a in np.unique(exp_assay)}
        self.sums = sums
        self.exp_cell = None if exp_cell is None else np.asarray(exp_cell)
        self.exp_assay = exp_assay if sums is not None else None
        if sums is not None and sums.shape != (exp_assay.size, G):
            raise ValueError(f"coarse sums of shape {sums.shape}, not {exp_assay.size} × {G}")
        if sums is not None and (self.exp_cell is None or self.exp_cell.size != exp_assay.size):
            raise ValueError("coarse sums need the cell type of every experiment (exp_cell)")
        # per assay: the positions (among its rows) that XT holds, and their rows of XT
        full = np.arange(exp_assay.size) if full is None else np.asarray(full)
        if full.size != XT.shape[0]:
            raise ValueError(f"{full.size} full-resolution experiments for {XT.shape[0]} rows")
        self._full = {}
        for a, rows in self.rows.items():
            pos = np.flatnonzero(np.isin(rows, full))
            self._full[a] = (pos, np.searchsorted(full, rows[pos]))
        self._coarse: dict[int, np.ndarray] = {}
        #: per assay, the window statistics of the rows made so far (:meth:`_spread`)
        self._spreads: dict[int, dict] = {}
        self._values: dict = {}

    def coarse(self, assay: int) -> np.ndarray:
        """The assay's coarse tracks (rows × cells, float64)."""
        if assay not in self._coarse:
            if self.sums is None:
                c = coarse_means(self.XT[self.rows[assay]], self.step)
            else:
                c = self.sums[self.rows[assay]] / coarse_cell_sizes(self.n, self.step)
            self._coarse[assay] = c
        return self._coarse[assay]

    def _spread(self, assay: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """At each point where the resemblance is evaluated, the window sums of the assay's
        coarse tracks ``rows`` and 1 / √(N·(window sums of squares) − sums²), 0 where that
        spread is too small for a correlation (rows × points each)."""
        c = self.coarse(assay)
        # made row by row as correlations ask for them: a task writing a few cell types
        # weighs a few of each assay's rows
        got = self._spreads.get(assay)
        if got is None:
            O, P = c.shape[0], self.N.size
            got = self._spreads[assay] = {"have": np.zeros(O, dtype=bool),
                                          "S": np.zeros((O, P)), "inv": np.zeros((O, P))}
        todo = rows[~got["have"][rows]]
        if todo.size:
            ct = c[todo]
            S = _window_sums(_group_sums(ct, self.stride), self.h)
            V = self.N * _window_sums(_group_sums(ct * ct, self.stride), self.h) - S * S
            # relative guard: cumulative-sum differences leave rounding residue in flat
            # windows; 1 / √spread is 0 there (its spread may round below 0): r = 0
            ok = V > 1e-9 * self.N * self.N
            inv = np.zeros_like(V)
            np.divide(1.0, np.sqrt(V, out=np.ones_like(V), where=ok), out=inv, where=ok)
            got["S"][todo], got["inv"][todo] = S, inv
            got["have"][todo] = True
        return got["S"][rows], got["inv"][rows]

    def correlations(self, assay: int, i: int, subset=None) -> np.ndarray:
        """:func:`local_correlations` of row i of the assay's experiments with each of them
        (its own row included), or with the rows ``subset`` (indices), from the shared window
        sums, at the points where the resemblance is evaluated: float32 (rows × points;
        :meth:`to_cells` interpolates them)."""
        c = self.coarse(assay)
        rows = np.arange(c.shape[0]) if subset is None else np.asarray(subset)
        S, inv = self._spread(assay, rows)
        Si, inv_i = self._spread(assay, np.array([i]))
        cov = _window_sums(_group_products(c[rows], c[i], self.stride), self.h)
        cov *= self.N
        cov -= S * Si
        cov *= inv
        cov *= inv_i
        np.clip(cov, -1.0, 1.0, out=cov)
        return cov.astype(np.float32)

    def to_cells(self, A: np.ndarray) -> np.ndarray:
        """Values at the points where the resemblance is evaluated (… × points) at every
        cell (… × cells, float32): linear between the two nearest points, held beyond the
        first and last."""
        if self.stride == 1:
            return np.asarray(A, dtype=np.float32)
        left, right, frac = self._lerp
        out = A[..., left].astype(np.float32)
        out += (A[..., right] - A[..., left]) * frac
        return out

    def held(self, assay: int) -> np.ndarray:
        """Positions, among the assay's rows, of those XT holds at full resolution
        (ascending; every row without coarse ``sums``)."""
        return self._full[assay][0]

    def values(self, assay: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """The assay's rows of XT with missing values as 0 (float32, rows × bins; with coarse
        ``sums``, only the rows XT holds), and for each row that had a missing value, where
        it is observed."""
        if assay not in self._values:
            rows, seen = self.row_values(assay)
            part = (np.stack(rows) if rows
                    else np.empty((0, self.n), dtype=np.float32))
            self._values[assay] = (part, seen)
        return self._values[assay]

    def row_values(self, assay: int) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
        """:meth:`values` as one float32 array per row: a view of XT's row where nothing is
        missing (no copy of the block's columns), a copy with 0 for missing values otherwise."""
        key = ("rows", assay)
        if key not in self._values:
            rows, seen = [], {}
            for p, r in enumerate(self._full[assay][1]):
                x = np.asarray(self.XT[r], dtype=np.float32)
                # a row's sum is NaN if it misses a value
                if np.isnan(np.add.reduce(x)):
                    miss = np.isnan(x)
                    x = np.where(miss, np.float32(0.0), x)
                    seen[p] = ~miss
                rows.append(x)
            self._values[key] = (rows, seen)
        return self._values[key]

    def cell_major(self, assay: int) -> np.ndarray:
        """:meth:`values` of the assay's whole grid cells laid out cell-major (cells × rows ×
        step), for the weighted sums of many targets at once."""
        key = ("cells", assay)
        if key not in self._values:
            part = self.values(assay)[0]
            whole = self.n // self.step * self.step
            self._values[key] = np.ascontiguousarray(
                part[:, :whole].reshape(len(part), -1, self.step).transpose(1, 0, 2))
        return self._values[key]

    def weighted_averages(self, assay: int, w: np.ndarray) -> np.ndarray:
        """Σ_o w_jo x_o / Σ_o w_jo over the rows o of ``assay`` for each target j (weights
        per coarse cell, targets × rows × cells, 0 to leave a row out; the rows are those
        :meth:`held` lists, or every row of the assay with 0 on the others), counting only
        observed values: float32 (targets × bins), NaN where no weighted row is observed."""
        rows, seen = self.row_values(assay)
        n, step = self.n, self.step
        w = np.asarray(w, dtype=np.float32)
        pos = self._full[assay][0]
        if pos.size < w.shape[1]:
            # weights over every row of the assay
            # only the rows held at full resolution can be weighed
            weighed = w.any(axis=(0, 2))
            weighed[pos] = False
            if weighed.any():
                raise ValueError(f"weights on experiments of assay {assay} that are not "
                                 "held at full resolution")
            w = w[:, pos]
        J, O, _ = w.shape
        gappy = np.zeros(O, dtype=bool)
        gappy[list(seen)] = True
        # every weighed row observed throughout: the weights, normalised per cell, give the
        # averages directly (no per-bin totals to divide by)
        normalised = not (gappy & w.any(axis=(0, 2))).any()
        if normalised:
            cell_tot = w.sum(axis=1)                                   # targets × cells
            w = w * np.divide(np.float32(1.0), cell_tot, out=np.zeros_like(cell_tot),
                              where=cell_tot > 0)[:, None, :]
        num = np.empty((J, n), dtype=np.float32)
        whole = n // step
        if whole and J == 1:
            # one target: a weighted sum over the rows it weighs, one row at a time (no copy
            # of the rows; each product stays in the CPU's cache until added)
            acc = num[0, :whole * step].reshape(whole, step)
            acc[...] = 0.0
            term = np.empty_like(acc)
            for o in np.flatnonzero(w[0].any(axis=1)):
                np.multiply(rows[o][:whole * step].reshape(whole, step),
                            w[0, o, :whole, None], out=term)
                acc += term
        elif whole:
            # per cell of the grid, (targets × rows) @ (rows × step): every target at once
            num[:, :whole * step] = np.matmul(
                np.ascontiguousarray(w[:, :, :whole].transpose(2, 0, 1)), self.cell_major(assay)
            ).transpose(1, 0, 2).reshape(J, whole * step)
        if whole * step < n:
            tail = np.array([x[whole * step:] for x in rows], dtype=np.float32)
            num[:, whole * step:] = w[:, :, -1] @ tail.reshape(len(rows), n - whole * step)
        if normalised:
            if not (cell_tot > 0).all():
                num[np.repeat(cell_tot <= 0, step, axis=1)[:, :n]] = np.nan
            return num
        full = ~gappy
        # complete rows weigh the same at every bin of a cell
        tot = np.repeat(w[:, full].sum(axis=1), step, axis=1)[:, :n]
        for r, obs in seen.items():
            tot += obs[None, :] * np.repeat(w[:, r], step, axis=1)[:, :n]
        return np.divide(num, tot, out=np.full((J, n), np.nan, np.float32), where=tot > 0)


def similar_averages(XT: np.ndarray, exp_cell, exp_assay, n_assay: int, cell,
                     width: int, tau: float, inputs: SimilarityInputs | None = None,
                     neighbours: np.ndarray | None = None) -> np.ndarray:
    """Each assay's average over the other cell types, weighted by how much each one resembles
    ``cell`` *locally* (n_assay × bins, float32; for a list of cell types, one such array
    per cell type, computed together).

    Resemblance is measured on a coarse grid (:func:`similarity_step` bins per cell, each
    track averaged over a cell): cell type o's resemblance at a cell is the mean, over the
    assays both have observed (the target assay k itself left out), of the Pearson correlation
    of their coarse tracks over the cells of the centred ``width``-bin window
    (:func:`local_correlations`; 0 without a shared assay), and it holds for every bin of the
    cell. With d = 1 − resemblance, o weighs exp(−d/tau) among the cell types observing k at
    the bin. The nearest-neighbour cell types of ChromImpute, made smooth: where a target cell
    type looks like one of the others (in this region), that one's track counts more. NaN
    where no other cell type observes k at the bin; 0 (a constant the fit never selects) where
    no other cell type has k at all.

    XT holds every experiment of the block *experiment-major* (experiments × bins, NaN =
    missing). ``inputs`` (:class:`SimilarityInputs` of XT for ``width``) is what every cell
    type of the block shares; built here when absent. ``neighbours`` (n_cell × n_assay × K,
    :func:`choose_neighbours`) restricts each (cell type, assay) average to those cell types;
    XT need then hold only the columns :func:`similar_columns` lists (``exp_cell`` and
    ``exp_assay`` describing XT's rows)."""
    many = np.ndim(cell) > 0
    targets = [int(c) for c in np.atleast_1d(cell)]
    si = inputs if inputs is not None else SimilarityInputs(XT, exp_assay, width)
    out = np.zeros((len(targets), n_assay, XT.shape[1]), dtype=np.float32)
    for k, users, nb, w in similar_weights(si, exp_cell, targets, tau, neighbours):
        out[users, k] = si.weighted_averages(k, _dense_weights(nb, w, si.rows[k].size))
    return out if many else out[0]


def similar_weights(si: SimilarityInputs, exp_cell, targets: list[int], tau: float,
                    neighbours: np.ndarray | None = None):
    """The weights of :func:`similar_averages`: for each assay k with another cell type
    observing it, ``(k, users, rows, w)`` — the positions in ``targets`` that average k, the
    rows of the assay (in ``si``) each weighs (users × K, padded with 0) and their weights
    (users × K × coarse cells, float32; 0 in the padding)."""
    exp_cell = np.asarray(exp_cell)
    n_cell = int(exp_cell.max()) + 1
    P = si.N.size   # the points where the resemblance is evaluated
    J = len(targets)
    # per target: Σ over shared assays of r with every cell type, how many shared assays,
    # and each of its own assays' r with the rows it was measured for (to leave the target
    # assay out)
    R = np.zeros((J, n_cell, P), dtype=np.float32)
    shared = np.zeros((J, n_cell), dtype=np.float32)
    mine: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for t, c in enumerate(targets):
        near = None if neighbours is None else np.unique(neighbours[c][neighbours[c] >= 0])
        for a, rows in si.rows.items():
            own = np.flatnonzero(exp_cell[rows] == c)
            if not own.size or rows.size < 2:
                continue
            if near is None:
                sub = np.arange(rows.size)
                r = si.correlations(a, int(own[0]))
                r[own] = 0.0
            else:
                # only the cell types some average of c can weigh need a resemblance
                sub = np.flatnonzero(np.isin(exp_cell[rows], near))
                r = (si.correlations(a, int(own[0]), sub) if sub.size
                     else np.zeros((0, P), dtype=np.float32))
            R[t, exp_cell[rows[sub]]] += r
            shared[t, exp_cell[rows]] += 1
            shared[t, c] -= own.size
            mine[t, a] = (sub, r)
    one, inv_tau = np.float32(1.0), np.float32(1.0 / tau)
    for k, rows in si.rows.items():
        users, picks, ws = [], [], []
        for t, c in enumerate(targets):
            src = exp_cell[rows] != c
            if neighbours is not None:
                src &= np.isin(exp_cell[rows], neighbours[c, k])
            if not src.any():
                continue
            cnt = shared[t, exp_cell[rows[src]]]
            res = R[t, exp_cell[rows[src]]]
            at = np.flatnonzero(src)
            if (t, k) in mine:   # leave the target assay out of the resemblance
                sub, r = mine[t, k]
                held = np.isin(at, sub)
                own_r = np.zeros((at.size, P), dtype=np.float32)
                own_r[held] = r[np.searchsorted(sub, at[held])]
                res = res - own_r
                cnt = cnt - 1
            res = np.divide(res, cnt[:, None], out=np.zeros_like(res), where=cnt[:, None] > 0)
            # exp(−d/tau) up to a common factor (which cancels): exp((res − 1)/tau) ∈ (0, 1]
            users.append(t)
            picks.append(at)
            ws.append(si.to_cells(np.exp((res - one) * inv_tau)))
        if users:
            K = max(p.size for p in picks)
            nb = np.zeros((len(users), K), dtype=np.int64)
            w = np.zeros((len(users), K, si.G), dtype=np.float32)
            for u, (at, wu) in enumerate(zip(picks, ws)):
                nb[u, :at.size], w[u, :at.size] = at, wu
            yield k, users, nb, w


def _dense_weights(nb: np.ndarray, w: np.ndarray, n_rows: int) -> np.ndarray:
    """:func:`similar_weights`' weights of each user over every row of the assay (users ×
    rows × cells, 0 for a row not weighed)."""
    dense = np.zeros((w.shape[0], n_rows, w.shape[2]), dtype=np.float32)
    for u in range(w.shape[0]):
        real = w[u].any(axis=1)   # weights are > 0 wherever a row is weighed
        dense[u, nb[u, real]] = w[u, real]
    return dense


def _row_sums(si: SimilarityInputs, assay: int, rows: np.ndarray, ends: np.ndarray,
              g_end: np.ndarray, need: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`similar_features` reads of an assay's rows ``need`` (indices), each row
    once per block and sample: their sums over each coarse cell (rows × cells, float64),
    their values at ``rows``, and their sums from the start of the cell ``g_end`` of each bin
    ``ends`` up to it (rows × ends, float64). Rows not yet asked for are left 0."""
    key = ("row sums", assay)
    got = si._values.get(key)
    if got is None or not (np.array_equal(got["rows"], rows)
                           and np.array_equal(got["ends"], ends)):
        step, n, G = si.step, si.n, si.G
        O = si.rows[assay].size
        sizes = coarse_cell_sizes(n, step)
        offs = np.arange(step)
        got = {"rows": rows, "ends": ends, "have": np.zeros(O, dtype=bool),
               "cells": si.coarse(assay) * sizes,
               "at": np.zeros((O, rows.size), dtype=np.float32),
               "inside": np.zeros((O, ends.size)),
               # each end's preceding bins in its cell: at most step − 1 of them
               "idx": np.minimum(g_end[:, None] * step + offs[None, :], n - 1),
               "take": offs[None, :] < (ends - g_end * step)[:, None]}
        si._values[key] = got
    todo = np.unique(need)
    todo = todo[~got["have"][todo]]
    if todo.size:
        part = si.values(assay)[0]
        got["at"][todo] = part[todo[:, None], rows[None, :]]
        got["inside"][todo] = np.where(got["take"][None], part[todo[:, None, None],
                                                              got["idx"][None]],
                                       np.float32(0.0)).sum(axis=2, dtype=np.float64)
        got["have"][todo] = True
    return got["cells"], got["at"], got["inside"]


def similar_features(si: SimilarityInputs, exp_cell, n_assay: int, cells, tau: float,
                     windows, rows, neighbours: np.ndarray | None = None) -> np.ndarray:
    """The similarity-weighted averages of the cell types ``cells`` and their means over each
    of ``windows`` — the segments :func:`cell_vectors` appends with ``similar`` — at the bins
    ``rows`` (indices) only: (cells × n_assay·(1 + len(windows)) × rows) float32.

    The same values as from :func:`similar_averages` at every bin, up to float rounding, for
    a fraction of the work when the rows are a sample: a weight holds for a whole coarse cell,
    so where every row an average weighs is observed throughout the block, the sum of the
    average over a window is a sum over whole cells of (Σ_o w_o · the cell's sum of x_o) / Σ_o
    w_o plus the same over the parts of the two end cells, which per-experiment cumulative
    sums give. Averages weighing a row with missing values are computed at every bin."""
    exp_cell = np.asarray(exp_cell)
    targets = [int(c) for c in np.atleast_1d(cells)]
    rows = np.asarray(rows)
    windows = tuple(int(w) for w in windows)
    n, step, G = si.n, si.step, si.G
    m, nW = rows.size, len(windows)
    out = np.zeros((len(targets), n_assay * (1 + nW), m), dtype=np.float32)
    # the window ends of every row: a window [lo, hi) of width w around r
    half = np.array([w // 2 for w in windows], dtype=np.int64)
    lo = np.maximum(rows[None, :] - half[:, None], 0)
    hi = np.minimum(rows[None, :] + half[:, None] + 1, n)
    ends = np.concatenate([lo.ravel(), hi.ravel()])
    cell_of = lambda b: np.minimum(b // step, G - 1)  # noqa: E731
    g_end, g_row = cell_of(ends), cell_of(rows)
    for k, users, nb, w in similar_weights(si, exp_cell, targets, tau, neighbours):
        users = np.asarray(users)
        if si.held(k).size != si.rows[k].size:
            # weights and sums below index every row of the assay
            raise ValueError("similar_features needs every experiment at full resolution, "
                             "not SimilarityInputs from coarse sums")
        part, seen = si.values(k)
        gappy = np.zeros(part.shape[0], dtype=bool)
        gappy[list(seen)] = True
        weighed = w.any(axis=2)                                  # users × K
        whole = ~(weighed & gappy[nb]).any(axis=1)
        seg = k + n_assay * np.arange(1 + nW)
        for u in np.flatnonzero(~whole):
            # a weighed row has missing values: the averages at every bin, as at prediction
            dense = _dense_weights(nb[u:u + 1], w[u:u + 1], part.shape[0])
            sim = si.weighted_averages(k, dense)[0]
            out[users[u], seg[0]] = sim[rows]
            if nW:
                means = _window_means(sim[None, :], int(half.max()), windows, n, rows)
                for s, M in enumerate(means, 1):
                    out[users[u], seg[s]] = M[0]
        if not whole.any():
            continue
        us = np.flatnonzero(whole)
        nb = nb[us]
        wk = w[us].astype(np.float64)
        wk /= wk.sum(axis=1, keepdims=True)                      # users × K × cells
        # Σ of the average over every whole cell before each cell
        cell_sums, at_rows, inside = _row_sums(si, k, rows, ends, g_end, nb.ravel())
        per_cell = np.einsum("ukg,ukg->ug", wk, cell_sums[nb])
        before = np.zeros((us.size, G + 1))
        np.cumsum(per_cell, axis=1, out=before[:, 1:])
        out[users[us], seg[0]] = np.einsum("ukr,ukr->ur", wk[:, :, g_row], at_rows[nb])
        if nW:
            # Σ of the average before each window end: whole cells, then its own cell's part
            F = before[:, g_end] + np.einsum("ukq,ukq->uq", wk[:, :, g_end], inside[nb])
            F = F.reshape(us.size, 2, nW, m)
            out[users[us][:, None], seg[1:][None, :]] = (
                (F[:, 1] - F[:, 0]) / (hi - lo)[None])
    return out


def assay_sums(X: np.ndarray, exp_assay, n_assay: int, chunk: int = 16_384
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-assay sums and counts of the observed values of a block over *all* its columns
    (float64, n × n_assay each). Every cell type's ``average`` features follow from these by
    subtracting its own columns, so a block costs one pass over X, not one per cell type.
    Rows are processed in chunks to bound the temporaries."""
    X = np.asarray(X)
    exp_assay = np.asarray(exp_assay)
    n = X.shape[0]
    if X.flags.f_contiguous and not X.flags.c_contiguous and X.dtype == np.float32:
        # column-major (a decoded tensor block): add whole contiguous columns, in float32
        # like the GEMM below, so stored float32 sums still hold them exactly
        tot32 = np.zeros((n_assay, n), dtype=np.float32)
        cnt32 = np.zeros((n_assay, n), dtype=np.float32)
        for e, a in enumerate(exp_assay):
            col = X[:, e]
            seen = ~np.isnan(col)
            tot32[a] += np.where(seen, col, np.float32(0.0))
            cnt32[a] += seen
        return tot32.T.astype(np.float64), cnt32.T.astype(np.float64)
    onehot = np.zeros((exp_assay.size, n_assay), dtype=np.float32)
    onehot[np.arange(exp_assay.size), exp_assay] = 1.0
    tot = np.empty((n, n_assay))
    cnt = np.empty((n, n_assay))
    for s in range(0, n, chunk):
        part = np.asarray(X[s:s + chunk], dtype=np.float32)
        obs = ~np.isnan(part)
        # float32 GEMMs (exact for the counts; sums of ≤ a few hundred arcsinh values)
        tot[s:s + chunk] = np.where(obs, part, np.float32(0.0)) @ onehot
        cnt[s:s + chunk] = obs.astype(np.float32) @ onehot
    return tot, cnt


def _padded_cumsum(A: np.ndarray, pad: int) -> np.ndarray:
    """Cumulative sums along axis 1 of A (float64; rows are series, bins run along a row)
    with ``pad`` columns of 0 before and ``pad`` copies of the total after: column ``pad + i``
    is the sum of the first i bins, and a window's sum is a difference of two slices whatever
    its truncation at the block's ends."""
    n = A.shape[1]
    C = np.empty((A.shape[0], n + 1 + 2 * pad))
    C[:, :pad + 1] = 0.0
    np.cumsum(A, axis=1, out=C[:, pad + 1:pad + 1 + n])
    C[:, pad + 1 + n:] = C[:, pad + n:pad + n + 1]
    return C


def _window_sum(C: np.ndarray, pad: int, h: int, n: int, rows, out=None) -> np.ndarray:
    """Sums over the centred windows [i − h, i + h] ∩ [0, n) of every bin i (or of ``rows``:
    indices, or a slice of consecutive bins) from :func:`_padded_cumsum` output (series ×
    bins), into ``out`` when given."""
    if rows is None:
        rows = slice(0, n)
    if isinstance(rows, slice):
        lo, hi = rows.start, rows.stop
        return np.subtract(C[:, pad + h + 1 + lo:pad + h + 1 + hi],
                           C[:, pad - h + lo:pad - h + hi], out=out)
    return np.subtract(C[:, rows + pad + h + 1], C[:, rows + pad - h], out=out)


def _row_count(rows, n: int) -> int:
    """How many bins ``rows`` (None = all n, a slice, or indices) selects."""
    if rows is None:
        return n
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _window_lengths(n: int, h: int, rows=None) -> np.ndarray:
    """Bins in the centred window [i − h, i + h] ∩ [0, n) of every bin i (or of ``rows``),
    float64."""
    if rows is None:
        i = np.arange(n)
    elif isinstance(rows, slice):
        i = np.arange(rows.start, rows.stop)
    else:
        i = np.asarray(rows)
    return (np.minimum(i + h + 1, n) - np.maximum(i - h, 0)).astype(np.float64)


def _window_means(V: np.ndarray, pad: int, widths, n: int, rows, prefix=None
                  ) -> list[np.ndarray]:
    """The mean of the observed values of each row of V (series × bins, NaN = missing) over
    the centred window of every width in ``widths``, at ``rows`` (None = every bin): one
    float64 array (series × rows) per width, NaN where a window holds nothing observed.
    ``prefix``: :func:`_means_prefix` of V, when several calls share it."""
    complete, k, sums_prefix = prefix if prefix is not None else _means_prefix(V, pad)
    if complete:
        # nothing missing: a window's count is its length (the same float64 divisor as the
        # window sums of the observed mask give), and the mask needs no sums
        out = _window_sums_of(None, pad, widths, n, rows, prefix=sums_prefix)
        for w, W in zip(widths, out):
            np.divide(W, _window_lengths(n, w // 2, rows), out=W)
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        return [W[:k] / W[k:] for W in _window_sums_of(None, pad, widths, n, rows,
                                                        prefix=sums_prefix)]


def _means_prefix(V: np.ndarray, pad: int) -> tuple:
    """What :func:`_window_means` of V takes at any rows: whether nothing is missing, the
    number of series, and the :func:`_sums_prefix` of the values (with, when something is
    missing, the observed mask below them)."""
    seen = ~np.isnan(V)
    if seen.all():
        return True, V.shape[0], _sums_prefix(V, pad)
    S = np.concatenate([np.where(seen, V, V.dtype.type(0.0)), seen], axis=0)
    return False, V.shape[0], _sums_prefix(S, pad)


def _sums_prefix(A: np.ndarray, pad: int) -> tuple:
    """What :func:`_window_sums_of` of A takes at any rows: each row's first value, how many
    leading rows need cumulative sums (the rest each hold one integer value throughout), and
    their :func:`_padded_cumsum`."""
    first = A[:, 0].astype(np.float64)
    const = ((A == A[:, :1]).all(axis=1) & (first == np.round(first))
             & (np.abs(first) < 2.0 ** 32))
    k = A.shape[0] - (np.argmin(const[::-1]) if not const.all() else A.shape[0])
    return first, k, (_padded_cumsum(A[:k], pad) if k else None)


def _window_sums_of(A: np.ndarray | None, pad: int, widths, n: int, rows, dtype=np.float64,
                    prefix=None) -> list[np.ndarray]:
    """:func:`_window_sum` of each row of A (series × bins) over the centred window of every
    width in ``widths``, at ``rows`` (None = every bin, a slice, or indices), from one pass
    of cumulative sums, as ``dtype`` (the float64 sums rounded once). Trailing rows that each
    hold one integer value throughout (counts, or observed masks, where nothing is missing:
    A is usually values then their counts) are that value times each window's length —
    exactly what their cumulative sums give — and need none. ``prefix``:
    :func:`_sums_prefix` of A (then A may be None), when several calls share it."""
    first, k, C = prefix if prefix is not None else _sums_prefix(A, pad)
    if k == first.size:
        return [_window_sum(C, pad, w // 2, n, rows).astype(dtype, copy=False)
                for w in widths]
    m = _row_count(rows, n)
    out = []
    for w in widths:
        h = w // 2
        o = np.empty((first.size, m), dtype=dtype)
        if k:
            _window_sum(C, pad, h, n, rows, out=o[:k])
        np.multiply(first[k:, None], _window_lengths(n, h, rows)[None, :], out=o[k:])
        out.append(o)
    return out


class BlockContext:
    """What every cell type's feature vectors of one block share: the per-assay sums and
    counts over all experiments (:func:`assay_sums`), their window sums at every context
    width, and the resulting all-experiment averages (a cell type's averages differ only in the
    assays it has itself), all evaluated at ``rows`` (None = every bin) and stored assay-major
    (n_assay × bins), the layout the feature matrices are built in.

    ``sums`` — the block's :func:`assay_sums` computed earlier (the imputation stores them with
    the genome factors) — replaces the pass over X, which may then be None; ``exp_assay`` still
    lists the assay of every experiment, whose counts tell which averages exist.

    ``similarity``: the block's :class:`SimilarityInputs` built beforehand (e.g. from stored
    coarse sums), which :meth:`similarity_inputs` then returns for its width."""

    def __init__(self, X: np.ndarray | None, exp_assay, n_assay: int, windows=(), rows=None,
                 dtype=np.float32, sums: tuple[np.ndarray, np.ndarray] | None = None,
                 similarity: SimilarityInputs | None = None):
        if sums is None:
            tot, cnt = assay_sums(X, exp_assay, n_assay)
        else:
            tot, cnt = sums
            if tot.shape != cnt.shape or tot.ndim != 2 or tot.shape[1] != n_assay:
                raise ValueError(f"sums of shape {tot.shape} / {cnt.shape}, "
                                 f"not bins × {n_assay}")
        self.n = tot.shape[0]
        # experiments per assay: an average over the other cell types exists for a cell type
        # unless it has the assay's only experiment(s)
        self.assay_count = np.bincount(np.asarray(exp_assay), minlength=n_assay)
        self.windows = tuple(int(w) for w in windows)
        self.pad = max([w // 2 for w in self.windows], default=0)
        if rows is not None:
            rows = np.asarray(rows)
            rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        self.rows = rows
        present = self.assay_count > 0
        # 2K × n: the sums are bins × assays, usually column-major (as decoded or summed),
        # so their transposes are contiguous rows to stack
        TC = np.concatenate([np.asarray(tot).T, np.asarray(cnt).T], axis=0, dtype=np.float64)
        # the windows' sums are differences of float64 cumulative sums; once taken, float32
        # holds them (and halves the memory traffic of every cell type's features)
        segs = [(TC if rows is None else TC[:, rows]).astype(np.float32)]
        if self.windows:
            segs += _window_sums_of(TC, self.pad, self.windows, self.n, rows, np.float32)
        # per segment (bins, then each window): sums, counts, and their ratio
        self.segments = []
        for S in segs:
            t, c = S[:n_assay], S[n_assay:]
            avg = np.divide(t, c, out=np.full(t.shape, np.nan, dtype=np.result_type(t, c)),
                            where=c > 0.5).astype(dtype, copy=False)
            avg[~present] = 0.0
            self.segments.append((t, c, avg))
        self._coarse = None if similarity is None else (similarity.width, similarity.XT,
                                                         similarity)
        self.from_sums = sums is not None
        self._block: BlockContext | None = None  # a span's whole-block context

    def span(self, lo: int, hi: int) -> "BlockContext":
        """This context at the consecutive bins [lo, hi) of the block (``rows`` a slice; the
        windows still see the whole block): views of its segments, and the block's
        similarity inputs."""
        if self.rows is not None:
            raise ValueError("span of a context already evaluated at some rows")
        part = copy.copy(self)
        part._block = self
        part.rows = slice(int(lo), int(hi))
        part.segments = [tuple(a[:, lo:hi] for a in seg) for seg in self.segments]
        return part

    def similarity_inputs(self, X: np.ndarray, exp_assay, width: int
                          ) -> tuple[np.ndarray, SimilarityInputs]:
        """The block's X (every experiment) experiment-major, and its
        :class:`SimilarityInputs`: computed once for all the cell types whose
        similarity-weighted averages need them (and for every :meth:`span` of the block)."""
        if self._block is not None:
            return self._block.similarity_inputs(X, exp_assay, width)
        if self._coarse is None or self._coarse[0] != width:
            # free when X is column-major (as tensor blocks are decoded)
            XT = np.ascontiguousarray(np.asarray(X, dtype=np.float32).T)
            self._coarse = (width, XT, SimilarityInputs(XT, exp_assay, width))
        return self._coarse[1], self._coarse[2]


def cell_vectors(X: np.ndarray, exp_cell, exp_assay, n_assay: int, cell: int, windows=(),
                 dtype=np.float64, rows=None, context: BlockContext | None = None,
                 similar: tuple[int, float] | None = None,
                 sim: np.ndarray | None = None,
                 neighbours: np.ndarray | None = None, hinges: bool = False,
                 sim_rows: np.ndarray | None = None, shared: dict | None = None
                 ) -> np.ndarray:
    """``v_ci`` for the bins of a block (n × :func:`n_features`, or len(rows) × …; a
    transposed view of a feature-major array).

    Layout: ``[1, x_c1 … x_cK, avg_1(c) … avg_K(c)]`` followed by the same 2K columns averaged
    over the centred window of each width in ``windows`` (bins; the genome context, truncated at
    the block's ends): a window's own-assay value is the mean of the observed values in it
    (NaNs skipped), its average is Σ(other cell types' values) / Σ(their count) over
    the window — the mean of the per-bin averages wherever nothing is missing, and cheap: it
    comes from per-assay window sums every cell type shares (:class:`BlockContext`).
    Unobserved experiments of the cell type, and averages of assays that no other cell type
    has, are 0 (constant columns the fit never selects); NaN means missing in that bin.

    ``rows`` (indices or a boolean mask) returns only those bins, the context still taken from
    the whole block. ``context`` is the block's :class:`BlockContext` for the same windows and
    rows (built here when absent); with it, X need only hold the columns of ``cell`` (all of
    them), the averages coming from the context. A context's :meth:`BlockContext.span` gives
    the features of consecutive bins; ``shared`` (a dict, empty at a cell type's first span)
    then keeps what the cell type's spans of one block have in common: its own columns, their
    cumulative sums and its similarity-weighted averages, computed once.

    ``similar`` = (width, tau) appends, after those, the :func:`similar_averages` of every
    assay and their means over the same windows (NaNs skipped); X must then hold every
    experiment of the block, unless ``sim`` gives the cell type's :func:`similar_averages`
    already computed, or ``neighbours`` (:func:`choose_neighbours`) restricts them to the
    columns :func:`similar_columns` lists. ``sim_rows`` gives those segments already evaluated
    at ``rows`` (:func:`similar_features`). ``hinges`` (needs ``similar``) appends
    max(0, x − t) of each row x of :func:`hinged_rows` (own assays and similarity-weighted
    averages, at the bin and over the windows), for each knot t of :data:`HINGE_KNOTS`
    (row-major): the regression stays linear in its weights but each feature's effect bends
    where its signal peaks, as a regression tree's splits on it would.
    """
    if hinges and similar is None:
        raise ValueError("hinge features need the similarity-weighted averages")
    X = np.asarray(X)
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    ctx = context if context is not None else BlockContext(X, exp_assay, n_assay, windows, rows,
                                                          dtype)
    if ctx.windows != tuple(int(w) for w in windows):
        raise ValueError(f"context has windows {ctx.windows}, not {tuple(windows)}")
    r = ctx.rows
    shared = {} if shared is None else shared
    own = np.flatnonzero(exp_cell == cell)
    a_own = exp_assay[own]
    k = own.size
    if "XS" not in shared:
        xs = np.ascontiguousarray(X[:, own].T, dtype=np.float32)  # own experiments × bins
        seen = ~np.isnan(xs)
        XS = np.empty((2 * k, ctx.n), dtype=np.float32)
        np.copyto(XS[:k], np.where(seen, xs, np.float32(0.0)))
        XS[k:] = seen
        shared.update(xs=xs, XS=XS)
    xs, XS = shared["xs"], shared["XS"]
    has_source = ctx.assay_count - np.bincount(a_own, minlength=n_assay) > 0
    m = _row_count(r, ctx.n)
    Vt = np.zeros((n_features(n_assay, windows, similar is not None, hinges), m), dtype=dtype)
    Vt[0] = 1.0

    def fill(seg, S, own_values=None):
        # one segment: own assays' values (or window means), then the averages over the
        # other cell types — the all-experiment average, except in the cell type's own
        # assays: (all − own) / (count − own count)
        lo = 1 + 2 * n_assay * seg
        t, c, avg = ctx.segments[seg]
        own_sum, own_cnt = S[:k], S[k:]
        with np.errstate(divide="ignore", invalid="ignore"):
            if own_values is not None:
                Vt[lo + a_own] = own_values
            else:
                # a window with nothing observed is 0 / 0 = NaN
                Vt[lo + a_own] = own_sum / own_cnt
            Vt[lo + n_assay:lo + 2 * n_assay] = avg
            t_o = t[a_own] - own_sum
            c_o = c[a_own] - own_cnt
            a_o = t_o / c_o
        # no other cell type observed: NaN (the difference of sums may leave a rounding residue)
        np.copyto(a_o, np.nan, where=c_o < 0.5)
        a_o[~has_source[a_own]] = 0.0
        Vt[lo + n_assay + a_own] = a_o

    fill(0, XS if r is None else XS[:, r], own_values=xs if r is None else xs[:, r])
    if ctx.windows:
        if "XS_prefix" not in shared:
            shared["XS_prefix"] = _sums_prefix(XS, ctx.pad)
        for s, W in enumerate(_window_sums_of(XS, ctx.pad, ctx.windows, ctx.n, r,
                                              np.float32, prefix=shared["XS_prefix"]), 1):
            fill(s, W)
    if similar is not None and sim_rows is not None:
        lo = _similar_offset(n_assay, len(ctx.windows))
        Vt[lo:lo + sim_rows.shape[0]] = sim_rows
    elif similar is not None:
        if ctx.from_sums and neighbours is None and sim is None:
            # stored sums stand in for the other cell types' columns, which this needs
            raise ValueError("similarity-weighted averages need every column of the block, "
                             "not a context from stored sums")
        lo = _similar_offset(n_assay, len(ctx.windows))
        if sim is None:
            sim = shared.get("sim")
        if sim is None:
            XT, inputs = ctx.similarity_inputs(X, exp_assay, similar[0])
            # inputs built from coarse sums name their own experiments (a superset of X's)
            ec, ea = ((exp_cell, exp_assay) if inputs.exp_cell is None
                      else (inputs.exp_cell, inputs.exp_assay))
            sim = shared["sim"] = similar_averages(XT, ec, ea, n_assay, cell, *similar,
                                                   inputs=inputs, neighbours=neighbours)
        Vt[lo:lo + n_assay] = sim if r is None else sim[:, r]
        if ctx.windows:
            if "sim_prefix" not in shared:
                shared["sim_prefix"] = _means_prefix(sim, ctx.pad)
            # assays no other cell type has are 0 throughout: their means stay 0
            for s, M in enumerate(_window_means(sim, ctx.pad, ctx.windows, ctx.n, r,
                                                prefix=shared["sim_prefix"]), 1):
                Vt[lo + n_assay * s:lo + n_assay * (s + 1)] = M
    if hinges:
        # they follow every other feature, in hinge_columns' order; made chunk by chunk, in
        # place: no temporary of the whole feature matrix
        rows_h = hinged_rows(n_assay, len(ctx.windows))
        D0 = n_features(n_assay, ctx.windows, True)
        for lo in range(0, m, HINGE_CHUNK):
            hi = min(m, lo + HINGE_CHUNK)
            _hinges(Vt[rows_h, lo:hi], out=Vt[D0:, lo:hi].reshape(rows_h.size, -1, hi - lo))
    return Vt.T


#: Bins per chunk of :func:`hinged_product`: its hinge features (a few hundred per bin) then
#: stay in the CPU's cache between being made and being multiplied.
HINGE_CHUNK = 2048


def hinged_product(W: np.ndarray, Vt: np.ndarray, n_assay: int, n_windows: int) -> np.ndarray:
    """``W @ v`` for weights W (targets × D, with the hinge features) and a block's features
    without their hinges, Vt (D₀ × bins, from :func:`cell_vectors` without ``hinges``): the
    same product as over :func:`cell_vectors`' with them, but the hinges are built for
    :data:`HINGE_CHUNK` bins at a time, not for the whole block: written to memory and read
    back, they cost more than their arithmetic."""
    D0, n = Vt.shape
    rows = hinged_rows(n_assay, n_windows)
    Wh = np.ascontiguousarray(W[:, D0:])  # hinge_columns' order: row-major (row, knot)
    out = W[:, :D0] @ Vt
    for lo in range(0, n, HINGE_CHUNK):
        hi = min(n, lo + HINGE_CHUNK)
        out[:, lo:hi] += Wh @ _hinges(Vt[rows, lo:hi]).reshape(-1, hi - lo)
    return out


def _hinges(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """max(0, x − t) of each row of x (rows × bins) for each knot t of :data:`HINGE_KNOTS`:
    rows × knots × bins, into ``out`` if given. NaN (missing at the bin) stays NaN."""
    knots = np.asarray(HINGE_KNOTS, dtype=x.dtype)[None, :, None]
    out = np.subtract(x[:, None, :], knots, out=out)
    return np.maximum(out, 0.0, out=out)


def _fold_hinges(used: np.ndarray, n_assay: int, n_windows: int) -> np.ndarray:
    """``used`` (targets × D booleans over features with hinges) onto the D₀ features
    without them: a feature counts as used if it or one of its hinges is."""
    rows = hinged_rows(n_assay, n_windows)
    D0 = n_features(n_assay, (0,) * n_windows, True)
    out = used[:, :D0].copy()
    out[:, rows] |= used[:, D0:].reshape(used.shape[0], rows.size, -1).any(axis=2)
    return out


#: Cell types whose similarity-weighted averages :func:`stack_stats` computes together.
SIMILAR_BATCH = 16


def stack_stats(X: np.ndarray, exp_cell, exp_assay, n_cell: int, n_assay: int, windows=(),
                rows=None, similar: tuple[int, float] | None = None, cells=None,
                neighbours: np.ndarray | None = None, hinges: bool = False) -> dict:
    """Sufficient statistics of a block of training bins: ``gram[c] = Σ_i v_ci v_ciᵀ`` over the
    bins where every feature of cell type c is present (float64, n_cell × D × D). ``cells``
    restricts the work to those cell types (the others' matrices stay 0).

    With context ``windows`` the block must be contiguous bins (a tensor block), not a random
    sample: the context comes from the whole block and ``rows`` (a boolean mask or index
    array, e.g. the block's training sample) selects the bins whose features are built and
    summed. ``similar``, ``neighbours`` and ``hinges``: see :func:`cell_vectors`."""
    D = n_features(n_assay, windows, similar is not None, hinges)
    gram = np.zeros((n_cell, D, D))
    ctx = BlockContext(X, exp_assay, n_assay, windows, rows)
    todo = np.unique(np.asarray(exp_cell))
    if cells is not None:
        todo = todo[np.isin(todo, cells)]
    for s in range(0, todo.size, SIMILAR_BATCH):
        chunk = todo[s:s + SIMILAR_BATCH]
        sims, at_rows = [None] * chunk.size, None
        if similar is not None:
            # the chunk's similarity-weighted averages together (one product per cell of the
            # grid for all of them); fixed chunks keep the statistics the same bits
            XT, inputs = ctx.similarity_inputs(X, exp_assay, similar[0])
            if ctx.rows is not None:
                # a sample of the bins: their features alone (similar_features)
                at_rows = similar_features(inputs, exp_cell, n_assay, chunk, similar[1],
                                           ctx.windows, ctx.rows, neighbours)
            else:
                sims = similar_averages(XT, exp_cell, exp_assay, n_assay, chunk, *similar,
                                        inputs=inputs, neighbours=neighbours)
        for i, (c, sim) in enumerate(zip(chunk, sims)):
            # features in float32 (as at prediction), the sampled rows' Gram in float64
            Vt = cell_vectors(X, exp_cell, exp_assay, n_assay, int(c), windows,
                              dtype=np.float32, context=ctx, similar=similar, sim=sim,
                              hinges=hinges, sim_rows=None if at_rows is None else at_rows[i]).T
            Vt = Vt[:, ~np.isnan(Vt).any(axis=0)].astype(np.float64)
            gram[c] = Vt @ Vt.T
        del sims, at_rows
    return {"gram": gram}


def pack_stack_stats(stats: dict) -> dict:
    """The statistics with each (symmetric) Gram matrix cut to its upper triangle, row by row:
    half the bytes for a task to send. :func:`sum_stack_stats` adds packed statistics and
    returns them whole."""
    gram = stats["gram"]
    upper = np.triu_indices(gram.shape[-1])
    return {"gram_upper": gram[:, upper[0], upper[1]], "n_features": gram.shape[-1]}


def sum_stack_stats(parts) -> dict | None:
    """Add shard statistics (an iterable, consumed one part at a time; each whole or
    :func:`pack_stack_stats`-packed, all alike) in shard order: the same bits on every run.
    Whole statistics; None for no parts."""
    total, key, D = None, None, None
    for p in parts:
        if total is None:
            key = "gram" if "gram" in p else "gram_upper"
            total, D = p[key].copy(), p.get("n_features")
        else:
            total += p[key]
    if total is None:
        return None
    if key == "gram":
        return {"gram": total}
    gram = np.empty((total.shape[0], D, D))
    upper = np.triu_indices(D)
    gram[:, upper[0], upper[1]] = total
    gram[:, upper[1], upper[0]] = total
    return {"gram": gram}


def target_design(observed: np.ndarray, cell: int, assay: int, n_windows: int = 0,
                  similar: bool = False, hinges: bool = False
                  ) -> list[tuple[int, np.ndarray]]:
    """The training cell types of one target pair, each with the feature indices (into ``v``)
    of its regression.

    ``observed`` is the (n_cell × n_assay) boolean matrix of training experiments. Training cell
    types are the others that have ``assay``. Each regresses it on the constant, those of the
    target cell's other observed assays that it has too and, when the assay is observed in at
    least two cell types (so every training cell type has a source too), its average — each
    also at every context width. A training cell type lacking some of the target cell's assays
    still teaches the relation through those it shares: in a sparse compendium few cell types
    have all of another's assays. With ``similar`` the similarity-weighted average replaces the
    plain one; ``hinges`` adds its hinge features (:func:`cell_vectors`).
    """
    n_cell, n_assay = observed.shape
    train = [c for c in range(n_cell) if c != cell and observed[c, assay]]
    own = [k for k in range(n_assay) if k != assay and observed[cell, k]]
    return [(c, design_features([k for k in own if observed[c, k]], assay, n_assay,
                                n_windows, observed[:, assay].sum() >= 2, similar, hinges))
            for c in train]


def design_features(assays: list[int], target: int, n_assay: int, n_windows: int,
                    average: bool, similar: bool = False, hinges: bool = False) -> np.ndarray:
    """Indices into ``v`` of a regression of assay ``target`` on the constant, the cell type's
    ``assays`` and (``average``) the target assay's average, at the bin and every window, with
    their hinges."""
    sim = _similar_offset(n_assay, n_windows)
    feats = [0]
    for s in range(1 + n_windows):
        feats += [1 + 2 * n_assay * s + f for f in assays]
        if average:
            feats.append(sim + n_assay * s + target if similar
                         else 1 + 2 * n_assay * s + n_assay + target)
    if similar and hinges:
        feats += hinge_columns(n_assay, n_windows, feats).tolist()
    return np.asarray(feats, dtype=int)


def pooled_design(observed: np.ndarray, cell: int, assay: int, n_windows: int = 0,
                  similar: bool = False, hinges: bool = False) -> tuple[list[int], np.ndarray]:
    """One regression on the training cell types' pooled rows (``stack_per_cell = false``)
    needs one feature set all of them have: the target cell's other observed assays, dropped
    rarest first until some training cell type has them all; returns those training cell types
    and the features (as :func:`target_design`)."""
    n_cell, n_assay = observed.shape
    train = [c for c in range(n_cell) if c != cell and observed[c, assay]]
    if not train:
        return [], np.zeros(0, dtype=int)
    K = [k for k in range(n_assay) if k != assay and observed[cell, k]]
    while K:
        full = [c for c in train if observed[c, K].all()]
        if full:
            train = full
            break
        seen = observed[np.ix_(train, K)].sum(axis=0)
        K.pop(int(np.argmin(seen)))
    return train, design_features(K, assay, n_assay, n_windows, observed[:, assay].sum() >= 2,
                                  similar, hinges)


def _ridge_solve(G: np.ndarray, feats: np.ndarray, assay: int, ridge: float, D: int
                 ) -> np.ndarray:
    """Ridge regression of own assay ``assay`` on features ``feats`` from one Gram matrix."""
    M = G[np.ix_(feats, feats)].copy()
    rhs = G[feats, 1 + assay]
    M[np.arange(1, len(feats)), np.arange(1, len(feats))] += ridge * G[0, 0]
    w = np.zeros(D)
    try:
        w[feats] = np.linalg.solve(M, rhs)
    except np.linalg.LinAlgError:
        w[feats] = np.linalg.lstsq(M, rhs, rcond=None)[0]
    return w


def fit_stack(stats: dict, observed: np.ndarray, ridge: float = 1e-3, windows=(),
              per_cell: bool = True, similar: bool = False, cells=None) -> np.ndarray:
    """Weights of every (cell type, assay) pair: (n_cell × n_assay × D), NaN rows for targets
    without training cell types (they keep the model's imputation). ``cells`` restricts the
    fit to those target cell types (the other rows are NaN).

    ``per_cell`` (default): the weights are the mean of one regression per training cell type
    — an ensemble of "how the assay relates to the others in cell type c" — instead of one
    regression on the training cell types' pooled bins. Relations differ between cell types, and
    averaging the separate fits' predictions lowers the error where the target cell type is
    unlike all of them (docs/accuracy.md).

    ``ridge`` is relative: ``ridge × (number of training rows)`` is added to the diagonal of the
    non-constant features, so it does not depend on the size of the training subset.
    ``windows`` (and ``similar``: whether they hold the similarity-weighted averages, which
    then replace the plain ones as features) must be those the statistics were computed with;
    statistics with the hinge features (:func:`stack_stats` ``hinges``) fit them too.
    """
    gram = stats["gram"]
    observed = np.asarray(observed, dtype=bool)
    n_cell, n_assay = observed.shape
    D = gram.shape[1]
    hinges = has_hinges(D, n_assay, windows, similar)
    W = np.full((n_cell, n_assay, D), np.nan)
    # target cell types with the same assays share their training cell types' regressions
    solved: dict = {}
    for j in (range(n_cell) if cells is None else cells):
        for k in range(n_assay):
            # too few training rows for this many weights: that cell type (or target) sits out
            if per_cell:
                fits = []
                for c, feats in target_design(observed, j, k, len(windows), similar, hinges):
                    key = (c, k, feats.tobytes())
                    if key not in solved:
                        solved[key] = (_ridge_solve(gram[c], feats, k, ridge, D)
                                       if gram[c][0, 0] >= 10 * len(feats) else None)
                    if solved[key] is not None:
                        fits.append(solved[key])
                if fits:
                    W[j, k] = np.mean(fits, axis=0)
            else:
                train, feats = pooled_design(observed, j, k, len(windows), similar, hinges)
                if not train:
                    continue
                G = gram[train].sum(axis=0)
                if G[0, 0] >= 10 * len(feats):
                    W[j, k] = _ridge_solve(G, feats, k, ridge, D)
    return W


def blend_with_average(stats: dict, observed: np.ndarray, W: np.ndarray, context: int = 0,
                       similar: bool = False, cells=None, hinges: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Recalibrate each target's transfer regression, per cell type, towards the ``average``
    baseline, by how well regressions learned on other cell types predict *that* cell type.

    The weights of a target (j, k) were learned on other cell types. Whether relations learned
    elsewhere hold in cell type j is measured on j's own observed assays k' ≠ k: their weights
    were also learned without j, so predicting x_jk' from j's statistics is an honest test,
    and the target itself is never used. With s = the regression's prediction of k', a = its
    average over the other cell types and y = the observation, pooled over k':

    * shrinkage: α·s + (1 − α)·a with α = Σ⟨y − a, s − a⟩ / Σ‖s − a‖² clipped to [0, 1];
    * recalibration: c₁·s + c₂·a + c₃·a⁽¹⁾ + … + c₀, least squares, where a⁽ⁱ⁾ is the average
      over the i-th context window (the first ``context`` windows of the statistics; 0 = the
      bin's own average only).

    The target's weights become the mean of the two, which scores better than either alone
    (docs/accuracy.md). Every inner product is a quadratic form of j's Gram matrix, so no data
    pass is needed, and the result is again linear in the features. Returns (weights, α); α is
    NaN where j has no other assay to learn from (weights unchanged).

    With ``similar`` (statistics holding the similarity-weighted averages), a is the
    similarity-weighted average and the recalibration has both kinds, each over the bin and
    the first ``context`` windows. ``cells`` restricts the recalibration to those target cell
    types (the other rows are returned unchanged). ``hinges``: the weights hold the hinge
    features (:func:`cell_vectors`).
    """
    gram = stats["gram"]
    observed = np.asarray(observed, dtype=bool)
    n_cell, n_assay = observed.shape
    D = W.shape[2]
    # the hinge features come last and take no part in the averages; n_features is
    # 1 + (features per segment)·(1 + windows)
    per_segment = n_features(n_assay, (0,), similar, hinges) - n_features(n_assay, (), similar,
                                                                          hinges)
    n_windows = (D - 1) // per_segment - 1
    sim = _similar_offset(n_assay, n_windows)
    if not 0 <= context <= n_windows:
        raise ValueError(f"context {context}: the statistics have {n_windows} context windows")
    out = W.copy()
    alpha = np.full((n_cell, n_assay), np.nan)

    def unit(i: int) -> np.ndarray:
        e = np.zeros(D)
        e[i] = 1.0
        return e

    one = unit(0)

    def averages(k: int) -> list[np.ndarray]:
        # assay k's average over the other cell types: the bin's own, then each context window
        # (similarity-weighted first, when there)
        plain = [unit(1 + 2 * n_assay * seg + n_assay + k) for seg in range(1 + context)]
        if not similar:
            return plain
        return [unit(sim + n_assay * seg + k) for seg in range(1 + context)] + plain

    usable = np.isfinite(W).all(axis=2) & (observed.sum(axis=0) >= 2)[None, :]
    for j in (range(n_cell) if cells is None else cells):
        G = gram[j]
        if G[0, 0] <= 0:
            continue
        # each of j's own assays' contribution once; a target sums all but its own
        parts = {}
        for kp in np.flatnonzero(observed[j] & usable[j]):
            y = unit(1 + kp)
            avgs = averages(kp)
            d_ya, d_sa = y - avgs[0], W[j, kp] - avgs[0]
            B = np.stack([W[j, kp], *avgs, one])
            parts[kp] = (d_ya @ G @ d_sa, d_sa @ G @ d_sa, B @ G @ B.T, B @ G @ y)
        if not parts:
            continue
        total = [sum(p[i] for p in parts.values()) for i in range(4)]
        for k in np.flatnonzero(usable[j]):
            num, den, M, r = (t - parts[k][i] if k in parts else t
                              for i, t in enumerate(total))
            if len(parts) - (k in parts) == 0 or den <= 0:
                continue
            avgs = averages(k)
            al = float(np.clip(num / den, 0.0, 1.0))
            c = np.linalg.lstsq(M, r, rcond=None)[0]
            alpha[j, k] = al
            out[j, k] = 0.5 * (al * W[j, k] + (1.0 - al) * avgs[0]) + \
                0.5 * (c @ np.stack([W[j, k], *avgs, one]))
    return out, alpha


def predict_pairs(X: np.ndarray, exp_cell, exp_assay, weights: np.ndarray, pairs,
                  fallback: np.ndarray, windows=(), context: BlockContext | None = None,
                  similar: tuple[int, float] | None = None,
                  neighbours: np.ndarray | None = None) -> np.ndarray:
    """Stacked imputation of target pairs for a block of bins.

    Parameters
    ----------
    X : (n, E) array
        The block's observed training experiments (NaN = missing), columns as in training.
    exp_cell, exp_assay : (E,) int arrays
        Cell type / assay of each column of ``X``.
    weights : (n_cell, n_assay, 1 + 2·n_assay) array
        From :func:`fit_stack`.
    pairs : sequence of (cell, assay) index pairs
        The targets.
    fallback : (n, T) array
        The model's imputation of the same pairs; used for targets without weights and for bins
        where one of a target's features is missing.
    windows : sequence of int
        The context widths the weights were fitted with. ``X`` must then be contiguous bins
        (a tensor block); windows are truncated at its ends, as in training.
    context : BlockContext, optional
        The block's context over *all* training experiments, e.g. from stored sums
        (``BlockContext(None, every experiment's assay, …, sums=…)``); X then needs only the
        columns of the target cell types. Built from X when absent.
    similar : (width, tau), optional
        The weights were fitted with the similarity-weighted averages
        (:func:`similar_averages`); X must then hold every training experiment, or with
        ``neighbours`` (:func:`choose_neighbours`) those :func:`similar_columns` lists.
        Weights with the hinge features (:func:`cell_vectors`) have them computed too.

    Returns
    -------
    (n, T) float32 array
    """
    n_assay = weights.shape[1]
    hinges = has_hinges(weights.shape[2], n_assay, windows, similar is not None)
    # built track-major and returned as its transpose: each track's column is contiguous
    outT = np.array(np.asarray(fallback).T, dtype=np.float32, order="C", copy=True)
    pairs = [(int(j), int(k)) for j, k in pairs]
    ctx = context  # what every target cell type of the block shares
    if ctx is not None and ctx.windows != tuple(int(w) for w in windows):
        raise ValueError(f"context has windows {ctx.windows}, not {tuple(windows)}")
    for j in sorted({p[0] for p in pairs}):
        # one GEMM over *all* the cell type's fitted targets, whichever of them are asked
        # for: a track's value (GEMM blocking, hence rounding, depends on the shape) is then
        # the same whatever other tracks share its task
        fitted = [k for k in range(n_assay) if np.isfinite(weights[j, k]).all()]
        want = [(t, fitted.index(k)) for t, (jj, k) in enumerate(pairs)
                if jj == j and k in fitted]
        if not want:
            continue
        if ctx is None:
            ctx = BlockContext(X, exp_assay, n_assay, windows)
        Wt = np.ascontiguousarray(weights[j, fitted], dtype=np.float32)  # targets × D
        ts = [t for t, _ in want]
        fs = [f for _, f in want]
        used = Wt[fs] != 0
        if hinges:
            used = _fold_hinges(used, n_assay, len(windows))
        # the features are made and multiplied feature_chunk bins at a time, from what the
        # cell type's chunks share (its columns' cumulative sums, its similarity-weighted
        # averages): the block's whole feature matrix is never held
        step = feature_chunk(n_features(n_assay, windows, similar is not None))
        spans = ([(0, outT.shape[1])] if ctx.rows is not None else
                 [(lo, min(ctx.n, lo + step)) for lo in range(0, ctx.n, step)])
        shared: dict = {}
        for lo, hi in spans:
            part = ctx if ctx.rows is not None else ctx.span(lo, hi)
            # the features without their hinges, which hinged_product adds chunk by chunk
            Vt = cell_vectors(X, exp_cell, exp_assay, n_assay, j, windows, dtype=np.float32,
                              context=part, similar=similar, neighbours=neighbours,
                              shared=shared).T
            pred = hinged_product(Wt, Vt, n_assay, len(windows)) if hinges else Wt @ Vt
            out = outT[:, lo:hi]
            # a missing feature makes its bin's column of the product NaN (even under a zero
            # weight), so the bins to look at closely are found from the small result
            holes = np.flatnonzero(np.isnan(pred).any(axis=0))
            if holes.size:
                Vh = Vt[:, holes]
                missing = np.isnan(Vh)
                np.copyto(Vh, 0.0, where=missing)
                # a bin missing one of a target's (non-zero-weight) features keeps the
                # fallback; a hinge is missing where the feature it bends is
                bad = used.astype(np.float32) @ missing.astype(np.float32) > 0
                full = hinged_product(Wt, Vh, n_assay, len(windows)) if hinges else Wt @ Vh
                pred[np.ix_(fs, holes)] = np.where(bad, out[np.ix_(ts, holes)], full[fs])
            out[ts] = pred[fs]
            del Vt, pred  # before the next chunk's are made
    return outT.T


#: Bytes of features (float32, without the hinges) :func:`predict_pairs` makes and multiplies
#: at once: well under glibc's largest mmap threshold (32 MiB), so a chunk comes from the
#: allocator's reused heap instead of a fresh mapping (:mod:`predictd.allocator`).
FEATURE_CHUNK_BYTES = 8 << 20


def feature_chunk(n_feat: int) -> int:
    """Bins per chunk of :func:`predict_pairs` for ``n_feat`` features a bin: as many as
    :data:`FEATURE_CHUNK_BYTES` holds (32,768 on the pilot, 6,144 at Roadmap scale), a
    multiple of :data:`HINGE_CHUNK`, so that the hinges' chunks fall where they would over
    the whole block."""
    return max(1, FEATURE_CHUNK_BYTES // (4 * n_feat * HINGE_CHUNK)) * HINGE_CHUNK


def residual_stats(X: np.ndarray, exp_cell, exp_assay, n_assay: int, weights: np.ndarray,
                   windows=(), rows=None, similar: tuple[int, float] | None = None,
                   keep: np.ndarray | None = None, betas: np.ndarray | None = None,
                   neighbours: np.ndarray | None = None) -> dict:
    """The uncertainty model's statistics of a block's sampled bins, per training experiment
    (:mod:`predictd.solvers.uncertainty`).

    For each experiment e = (c, k) of X (columns as ``exp_cell``/``exp_assay``) whose target
    has weights, its held-out prediction ``ŷ = weights[c, k] · v_c`` (those weights never saw
    its track) is compared with the observed values at the bins of ``rows`` (as in
    :func:`stack_stats`) where every feature is present and ``keep`` (bool per row of ``rows``,
    e.g. not :func:`predictd.impute.no_signal`) holds. Without ``betas`` the result is the
    residuals' moments (``zz`` E × m × m, ``zr`` E × m, ``n`` E); with ``betas`` (E × m, NaN
    rows skipped) the standardised errors' histograms (``hist`` E × cells). Shards add both.
    ``neighbours``: as in :func:`cell_vectors`."""
    from . import uncertainty as unc
    X = np.asarray(X)
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    E, m = exp_cell.size, unc.N_FEATURES
    hinges = has_hinges(weights.shape[2], n_assay, windows, similar is not None)
    ctx = BlockContext(X, exp_assay, n_assay, windows, rows)
    r = ctx.rows
    Xr = np.asarray(X if r is None else X[r], dtype=np.float64)
    if keep is None:
        keep = np.ones(Xr.shape[0], dtype=bool)
    tot, cnt = assay_sums(Xr, exp_assay, n_assay)
    tot2, _ = assay_sums(np.square(Xr), exp_assay, n_assay)
    out = ({"zz": np.zeros((E, m, m)), "zr": np.zeros((E, m)), "n": np.zeros(E)}
           if betas is None else {"hist": np.zeros((E, unc.RATIO_EDGES.size - 1), np.int64)})
    for c in np.unique(exp_cell):
        mine = [e for e in np.flatnonzero(exp_cell == c)
                if np.isfinite(weights[c, exp_assay[e]]).all()
                and (betas is None or np.isfinite(betas[e]).all())]
        if not mine:
            continue
        Vt = cell_vectors(X, exp_cell, exp_assay, n_assay, int(c), windows, dtype=np.float32,
                          context=ctx, similar=similar, neighbours=neighbours,
                          hinges=hinges).T
        ok = keep & ~np.isnan(Vt).any(axis=0)
        Vt = Vt[:, ok].astype(np.float64)
        for e in mine:
            k = exp_assay[e]
            x = Xr[ok, e]
            yhat = weights[c, k] @ Vt
            mean, var = unc.other_cell_moments(tot[ok, k], tot2[ok, k], cnt[ok, k], x)
            Z = unc.variance_features(yhat, mean, var)
            if betas is None:
                mom = unc.residual_moments(Z, x - yhat)
                out["zz"][e], out["zr"][e], out["n"][e] = mom["zz"], mom["zr"], mom["n"]
            else:
                out["hist"][e] = unc.ratio_histogram(
                    x - yhat, unc.predictive_variance(Z, betas[e]))
    return out


def sum_residual_stats(parts: list[dict]) -> dict | None:
    """Add shard :func:`residual_stats` in shard order (deterministic)."""
    out = None
    for p in parts:
        if p is None:
            continue
        out = {k: v.copy() for k, v in p.items()} if out is None else \
            {k: out[k] + p[k] for k in out}
    return out


def fit_uncertainty(moments: dict, hist: dict | None, exp_cell, exp_assay,
                    observed: np.ndarray, leave_out: bool = False, prior: float | None = None,
                    scale_prior: float | None = None):
    """The uncertainty model of every (cell type, assay) target from summed
    :func:`residual_stats`.

    With ``leave_out`` (the first step): one β per training experiment e = (c, k), fitted on
    the moments of the other cell types' experiments of assay k — what standardises e's errors
    for the calibration histograms (E × m, NaN where nothing informs it).

    Otherwise: per target (j, k), β fitted on the experiments (c, k) of the other cell types,
    times the square of a calibration scale s: σ² = (s² β) · z. Each training experiment's
    own scale comes from its histogram in ``hist``
    (:func:`predictd.solvers.uncertainty.calibration_scale`), and log s is a two-way model,
    an assay effect plus a cell-type effect: the mean log scale of assay k's other cell
    types, plus the mean of how much j's *other* assays' log scales exceed their other cell
    types' (0 when j has no other assay). Neither uses (j, k) itself. Returns
    (n_cell × n_assay × m), NaN for targets without enough sampled bins; a target whose assay
    no other cell type has pools every other cell type's experiments.

    Both steps are shrunk toward every experiment of the other cell types, by pseudo-
    experiments (:data:`~predictd.solvers.uncertainty.VARIANCE_PRIOR` and
    :data:`~predictd.solvers.uncertainty.SCALE_PRIOR` unless given): β's moments get
    ``prior`` times the mean experiment's moments (in both steps), and the assay effect is a
    mean with ``scale_prior`` pseudo-experiments at the mean log scale. With an assay in a
    hundred cell types they weigh nothing; with one or two (few-fold cross-validation, a small
    compendium) they keep one experiment's odd errors from setting a target's variance."""
    from . import uncertainty as unc
    prior = unc.VARIANCE_PRIOR if prior is None else prior
    scale_prior = unc.SCALE_PRIOR if scale_prior is None else scale_prior
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    observed = np.asarray(observed, dtype=bool)
    n_cell, n_assay = observed.shape
    has = moments["n"] > 0

    def pooled(sel, cell):
        # the moments of the experiments ``sel`` plus ``prior`` mean experiments of every
        # cell type but ``cell``
        parts = []
        idx = np.flatnonzero(sel & has)
        if idx.size:
            parts.append({"zz": moments["zz"][idx].sum(axis=0),
                          "zr": moments["zr"][idx].sum(axis=0),
                          "n": float(moments["n"][idx].sum())})
        wide = np.flatnonzero((exp_cell != cell) & has)
        if prior > 0 and wide.size:
            parts.append({k: prior * np.asarray(moments[k][wide], dtype=np.float64).mean(axis=0)
                          for k in ("zz", "zr", "n")})
        return unc.add_moments(parts)

    if leave_out:
        B = np.full((exp_cell.size, unc.N_FEATURES), np.nan)
        for e in range(exp_cell.size):
            beta = unc.fit_variance(pooled((exp_assay == exp_assay[e]) &
                                           (exp_cell != exp_cell[e]), exp_cell[e]))
            if beta is not None:
                B[e] = beta
        return B
    # log of each experiment's own scale (NaN without counts): the calibration is a two-way
    # model on the log scale, log s = assay effect + cell-type effect
    H = hist["hist"] if hist is not None else np.zeros((exp_cell.size, 1), np.int64)
    log_s = np.full(exp_cell.size, np.nan)
    for e in np.flatnonzero(H.sum(axis=1) > 0):
        log_s[e] = np.log(unc.calibration_scale(H[e]))

    def finite(sel):
        v = log_s[sel]
        return v[np.isfinite(v)]

    def assay_effect(k, j, fallback=True):
        # the mean log scale of k's cell types other than j, with scale_prior
        # pseudo-experiments at the mean of every experiment of those cell types; without
        # any, that mean itself (``fallback``) or NaN
        v, wide = finite((exp_assay == k) & (exp_cell != j)), finite(exp_cell != j)
        if not v.size:
            return float(wide.mean()) if fallback and wide.size else np.nan
        return float((v.sum() + scale_prior * wide.mean()) / (v.size + scale_prior))

    out = np.full((n_cell, n_assay, unc.N_FEATURES), np.nan)
    for j in range(n_cell):
        for k in range(n_assay):
            sel = (exp_assay == k) & (exp_cell != j)
            if not (sel & has).any():
                sel = exp_cell != j   # no other cell type has k: every other experiment
            beta = unc.fit_variance(pooled(sel, j))
            if beta is None:
                continue
            ls = assay_effect(k, j)
            if np.isnan(ls):
                ls = 0.0
            # cell-type effect: how much j's other assays' scales exceed their other cell
            # types' (never assay k itself)
            gaps = [log_s[e] - assay_effect(exp_assay[e], j, fallback=False)
                    for e in np.flatnonzero((exp_cell == j) & (exp_assay != k))]
            gaps = [g for g in gaps if np.isfinite(g)]
            if gaps:
                ls += float(np.mean(gaps))
            s = float(np.exp(ls))
            out[j, k] = beta * s * s
    return out
