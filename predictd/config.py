"""One validated configuration object, read from TOML and passed down to every stage.

Every key has a type, a default, a range and a one-line help text; ``predictd config --show``
prints them. An unknown key, a wrong type or an out-of-range value is a :class:`PredictdError`
naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore

from .errors import PredictdError


def _opt(default, help, *, lo=None, hi=None, lo_open=False, choices=None):
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi,
                                            "lo_open": lo_open, "choices": choices})


@dataclass(frozen=True)
class Config:
    """All knobs of the pipeline. Field metadata carries the validation rules and help."""

    # data
    transform: str = _opt("arcsinh", "input transform: 'arcsinh' (y = asinh(x)) or 'none' "
                          "(inputs already transformed)", choices=("arcsinh", "none"))
    bin_size: int = _opt(25, "genome bin width in bp", lo=1, hi=100_000)
    block_bins: int = _opt(262_144, "bins per tensor block (Parquet partition, unit of Spark "
                           "work; memory per task grows with it)", lo=1_024, hi=16_777_216)
    # model
    latent_factors: int = _opt(3, "number of latent factors L (tuned by leave-one-track-out on "
                               "the 4 x 5 Roadmap data; larger compendia want more)", lo=1,
                               hi=1_000)
    training_fraction: float = _opt(0.01, "fraction of genome bins sampled for training",
                                    lo=0.0, hi=1.0, lo_open=True)
    training_regions: str = _opt("", "optional BED of regions the training bins are drawn from "
                                 "(e.g. ENCODE pilot regions); empty = whole genome")
    max_training_bins: int = _opt(2_000_000, "cap on the number of training bins", lo=100)
    validation_fraction: float = _opt(0.1, "fraction of the sampled bins kept for validation",
                                      lo=0.0, hi=0.9, lo_open=True)
    validation_groups: int = _opt(5, "experiments are split into this many groups; a validation "
                                  "bin hides one group and predicts it from the others", lo=2, hi=64)
    solver: str = _opt("als", "'als' (alternating closed-form ridge) or 'sgd' (parallel Adam SGD, "
                       "PREDICTD's method)", choices=("als", "sgd"))
    seed: int = _opt(1, "random seed; the same seed gives bit-identical factors", lo=0,
                     hi=2**31 - 1)
    init_scale: float = _opt(0.33, "factors start uniform in (-init_scale, init_scale)",
                             lo=0.0, hi=10.0, lo_open=True)
    rc: float = _opt(0.0, "cell-type factor penalty; lambda_C = rc / (L * n_cell_types)", lo=0.0)
    ra: float = _opt(1.23e-7, "assay factor penalty; lambda_A = ra / (L * n_assays)", lo=0.0)
    ri: float = _opt(1.23e-5, "genome factor penalty (SGD); lambda_G = ri / (L * n_bins)", lo=0.0)
    ri2: float = _opt(0.01, "ridge of the closed-form genome-factor solve (imputation, ALS)",
                      lo=0.0)
    bias_penalty: float = _opt(0.0, "penalty on the bias terms", lo=0.0)
    # stacking (predictd.solvers.stacking): a cross-cell-type transfer regression on the block's
    # observed tracks and the `average` baseline, learned on the training cell types of each assay
    stack: bool = _opt(True, "impute with the cross-cell-type transfer regression stacked on the "
                       "model (pairs or bins it cannot serve keep the model's value)")
    stack_window_short: int = _opt(9, "stacking: first genome-context window in bins (moving mean "
                                   "of the features; 0 = none)", lo=0, hi=100_000)
    stack_window_long: int = _opt(51, "stacking: second genome-context window in bins (0 = none)",
                                  lo=0, hi=100_000)
    stack_window_wide: int = _opt(201, "stacking: third genome-context window in bins (0 = none)",
                                  lo=0, hi=100_000)
    stack_max_blocks: int = _opt(64, "stacking: at most this many tensor blocks, evenly "
                                 "spaced over the genome, feed the regression's statistics "
                                 "(a whole genome has ~480 blocks of 262,144 bins)", lo=1)
    stack_sample: float = _opt(0.02, "stacking: fraction of each block's bins summed into the "
                               "regression's statistics", lo=0.0, hi=1.0, lo_open=True)
    stack_blend: bool = _opt(True, "stacking: shrink each target's regression towards the "
                             "average baseline by how well regressions learned on other cell "
                             "types predict that cell type's own observed assays")
    stack_blend_context: int = _opt(2, "stacking: how many context windows (short, long, wide, "
                                    "in that order) add their averages to the blend's "
                                    "recalibration, besides the bin's own", lo=0, hi=3)
    stack_similar: int = _opt(1001, "stacking: weigh the other cell types' values of the target "
                              "assay by how much each resembles the target cell type locally "
                              "(correlation of their shared other assays over this many bins "
                              "around the bin), instead of the plain average; 0 = the plain "
                              "average", lo=0, hi=100_000)
    stack_similar_tau: float = _opt(0.2, "stacking: temperature of the resemblance weights "
                                     "exp(-(1 - r)/tau): smaller follows the most similar cell "
                                     "type more closely", lo=0.0, lo_open=True, hi=100.0)
    stack_similar_neighbours: int = _opt(10, "stacking: the similarity-weighted averages weigh "
                                         "only this many other cell types, those resembling "
                                         "the target cell type most over the stacking sample "
                                         "(its other assays' correlation); 0 = every other "
                                         "cell type", lo=0, hi=100_000)
    stack_hinges: bool = _opt(True, "stacking: add hinge features max(0, x - t) of the cell "
                              "type's own assays over each window and of the "
                              "similarity-weighted averages at the bin (knots t = 0.5, 1, 2 in "
                              "model units): each feature's effect bends where its signal "
                              "peaks, as a regression tree's would (needs stack_similar)")
    stack_per_cell: bool = _opt(True, "stacking: average one regression per training cell "
                                "type instead of fitting one on their pooled bins")
    stack_ridge: float = _opt(1e-3, "stacking: ridge on the regression weights, relative to the "
                              "number of training rows", lo=0.0)
    # optimisation
    max_iterations: int = _opt(300, "maximum training iterations (ALS: half-sweeps; SGD: "
                               "parameter-averaging rounds)", lo=1, hi=100_000)
    check_every: int = _opt(1, "validate every this many iterations", lo=1)
    patience: int = _opt(30, "stop (or drop the learning rate) after this many checks without a "
                         "validation improvement", lo=1)
    min_improvement: float = _opt(1e-4, "relative validation-MSE improvement that counts",
                                  lo=0.0, hi=1.0)
    partitions: int = _opt(0, "Spark partitions of the training bins (0 = 2 x default "
                           "parallelism)", lo=0, hi=100_000)
    driver_fit_max_mb: int = _opt(256, "fit in the Spark driver when the training subset is at "
                                  "most this many MB: each iteration is then a function call, "
                                  "not a Spark job (0 = always fit on the executors)", lo=0)
    learning_rate: float = _opt(0.005, "SGD (Adam) learning rate", lo=0.0, lo_open=True, hi=10.0)
    beta1: float = _opt(0.9, "Adam beta1", lo=0.0, hi=1.0)
    beta2: float = _opt(0.999, "Adam beta2", lo=0.0, hi=1.0)
    epsilon: float = _opt(1e-8, "Adam epsilon", lo=0.0, lo_open=True)
    lr_decay: float = _opt(1e-6, "learning rate and beta1 decay by (1 - lr_decay)^t", lo=0.0,
                           hi=1.0)
    sgd_steps: int = _opt(200, "SGD mini-batch steps per partition per iteration", lo=1)
    batch_size: int = _opt(4096, "SGD mini-batch size (observed entries)", lo=1)
    max_lr_drops: int = _opt(3, "SGD: on a stall halve the learning rate and roll back to the "
                             "best parameters up to this many times", lo=0, hi=20)
    ensemble_size: int = _opt(3, "with --folds: models (seeds) trained per test fold and "
                              "averaged", lo=1, hi=100)
    cp_reference: bool = _opt(True, "with --folds: also score a plain rank-4 CP-ALS with biases "
                              "and ridge 1.0 (fitted on each fold's training subset) as a "
                              "reference method 'cp_als4'")
    score_blacklist: bool = _opt(True, "leave the bins of the assembly's ENCODE blacklist out of "
                                 "the held-out metrics (bundled for hg19, hg38 and mm10)")
    # imputation / output
    output_dtype_check: bool = _opt(True, "refuse NaN/inf in imputed values (should never "
                                    "happen; a guard)")
    uncertainty: bool = _opt(False, "also write OUT/tracks/{cell}.{assay}.uncertainty.bw, a "
                             "per-bin standard deviation in the input's units, from the stacked "
                             "regression's calibrated predictive variance (needs stack)")
    write_parallelism: int = _opt(0, "track groups written in parallel (0 = Spark default "
                                  "parallelism)", lo=0)

    def __post_init__(self):
        # Config(...) built in code is held to the same rules as a TOML file
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check("config", f.name, getattr(self, f.name), f))
        if self.stack_hinges and self.stack_similar <= 0:
            raise PredictdError("config key 'stack_hinges': needs stack_similar > 0 (the "
                                "hinges bend the similarity-weighted average); with "
                                "stack_similar = 0, set stack_hinges = false too")
        if self.uncertainty and not self.stack:
            raise PredictdError("config key 'uncertainty': needs stack = true (the stacked "
                                "regression's predictive variance is the uncertainty's source)")

    # ------------------------------------------------------------------ helpers
    def lambdas(self, n_cell_types: int, n_assays: int, n_bins: int) -> tuple[float, float, float]:
        """PREDICTD's penalty scaling (docs/design.md §3)."""
        L = self.latent_factors
        return (self.rc / (L * n_cell_types), self.ra / (L * n_assays),
                self.ri / (L * max(n_bins, 1)))

    def stack_windows(self) -> tuple[int, ...]:
        """The stacking layer's genome-context windows (bins), zeros dropped."""
        return tuple(w for w in (self.stack_window_short, self.stack_window_long,
                                 self.stack_window_wide) if w > 0)

    def stack_similarity(self) -> tuple[int, float] | None:
        """(width, tau) of the stacking layer's similarity-weighted averages, or None."""
        return (self.stack_similar, self.stack_similar_tau) if self.stack_similar > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def checksum(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def replace(self, **changes) -> "Config":
        return from_dict({**self.to_dict(), **changes}, source="override")


def describe() -> list[tuple[str, Any, str]]:
    """(key, default, help) for every key, in declaration order."""
    return [(f.name, f.default, f.metadata["help"]) for f in dataclasses.fields(Config)]


def from_dict(d: dict[str, Any], source: str = "config") -> Config:
    """Validate a mapping of keys and build a :class:`Config`.

    Raises
    ------
    PredictdError
        naming the first bad key: unknown, wrong type or out of range.
    """
    fields = {f.name: f for f in dataclasses.fields(Config)}
    values = {}
    for key, val in d.items():
        if key not in fields:
            close = [k for k in fields if k.split("_")[0] == str(key).split("_")[0]]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PredictdError(f"{source}: unknown key {key!r}{hint}")
        values[key] = _check(source, key, val, fields[key])
    return Config(**values)


def _check(source: str, key: str, val: Any, f: dataclasses.Field) -> Any:
    want = type(f.default)
    md = f.metadata
    if want is bool:
        if not isinstance(val, bool):
            raise PredictdError(f"{source}: key {key!r} must be true or false, got {val!r}")
        return val
    if want is int:
        if isinstance(val, bool) or not isinstance(val, int):
            raise PredictdError(f"{source}: key {key!r} must be an integer, got {val!r}")
    elif want is float:
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise PredictdError(f"{source}: key {key!r} must be a number, got {val!r}")
        val = float(val)
        if not math.isfinite(val):
            raise PredictdError(f"{source}: key {key!r} must be finite, got {val!r}")
    elif want is str:
        if not isinstance(val, str):
            raise PredictdError(f"{source}: key {key!r} must be a string, got {val!r}")
    if md.get("choices") and val not in md["choices"]:
        raise PredictdError(f"{source}: key {key!r} must be one of "
                            f"{', '.join(repr(c) for c in md['choices'])}; got {val!r}")
    lo, hi = md.get("lo"), md.get("hi")
    if lo is not None and (val < lo or (md.get("lo_open") and val == lo)):
        op = ">" if md.get("lo_open") else ">="
        raise PredictdError(f"{source}: key {key!r} must be {op} {lo}, got {val!r}")
    if hi is not None and val > hi:
        raise PredictdError(f"{source}: key {key!r} must be <= {hi}, got {val!r}")
    return val


def load(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a TOML config file (``None`` = all defaults)."""
    data: dict[str, Any] = read_toml(path) if path else {}
    data.update(overrides or {})
    return from_dict(data, source=f"config file {path}" if path else "config")


def read_toml(path: str) -> dict[str, Any]:
    """The keys of a TOML config file, unvalidated (one clear line for an unreadable file): a
    local path or any URI :mod:`predictd.storage` reads (``s3://``, ``gs://``, ``az://``,
    ``http(s)://``)."""
    from predictd import storage

    try:
        if storage.is_remote(path):
            data = tomllib.loads(storage.read_text(path))
            path = storage.display_uri(path)
        else:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
    except FileNotFoundError:
        raise PredictdError(f"config file not found: {path}") from None
    except PermissionError:
        raise PredictdError(f"config file not readable (permission denied): {path}") from None
    except IsADirectoryError:
        raise PredictdError(f"config path is a directory, not a TOML file: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PredictdError(f"config file {path}: not valid TOML: {e}") from None
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise PredictdError(f"config file {path}: unknown section [{nested[0]}] "
                            "(all keys are top-level)")
    return data


def _toml_value(val: Any) -> str:
    """A value as TOML writes it."""
    if isinstance(val, bool):
        return "true" if val else "false"
    if isinstance(val, str):
        return json.dumps(val)
    return repr(val)


def to_toml(cfg: Config) -> str:
    """Render a config as TOML (for ``predictd config --show`` and run.json readers)."""
    lines = []
    for key, _default, help in describe():
        lines.append(f"# {help}")
        lines.append(f"{key} = {_toml_value(getattr(cfg, key))}")
    return "\n".join(lines) + "\n"


def _allowed(f: dataclasses.Field) -> str:
    """The values a key accepts, from its validation metadata, in words."""
    md = f.metadata
    if md.get("choices"):
        return " or ".join(f"`{_toml_value(c)}`" for c in md["choices"])
    if isinstance(f.default, bool):
        return "`true` or `false`"
    parts = []
    if md.get("lo") is not None:
        parts.append(f"{'>' if md.get('lo_open') else '≥'} {md['lo']!r}")
    if md.get("hi") is not None:
        parts.append(f"≤ {md['hi']!r}")
    return ", ".join(parts) or "any"


_REFERENCE_INTRO = """\
# Configuration

<!-- Generated from predictd/config.py by `predictd config --markdown > docs/configuration.md`;
     do not edit by hand: tests/test_config.py fails when this file is stale. -->

A run is configured by one TOML file of top-level keys (`--config FILE.toml`); any key can also be
set on the command line with `--set key=value` (TOML value syntax), which wins over the file.
Unknown keys, wrong types and out-of-range values are refused with the key's name.
`predictd config --show` prints every key with its default as TOML (a starting point for your own
file); `predictd config --check FILE.toml` validates a file.
"""


def config_reference_markdown() -> str:
    """``docs/configuration.md``: every key with its type, default, accepted values and meaning,
    generated from the :class:`Config` metadata (``predictd config --markdown``)."""
    lines = [_REFERENCE_INTRO,
             "| key | type | default | accepted | meaning |",
             "| --- | --- | --- | --- | --- |"]
    kinds = {bool: "bool", int: "int", float: "float", str: "string"}
    for f in dataclasses.fields(Config):
        help = f.metadata["help"].replace("|", "\\|")
        lines.append(f"| `{f.name}` | {kinds[type(f.default)]} | `{_toml_value(f.default)}` | "
                     f"{_allowed(f)} | {help} |")
    return "\n".join(lines) + "\n"
