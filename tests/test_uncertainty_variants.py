"""benchmarks/uncertainty_variants.py: the study's own math (the log-linear variance fit and
the nested choice of a variant); its caching of a finished run is exercised by the study."""

from __future__ import annotations

import numpy as np


def test_loglinear_fit_recovers_the_log_variance_up_to_its_level(benchmark_script):
    uv = benchmark_script("uncertainty_variants")
    rng = np.random.default_rng(0)
    n = 200_000
    level = rng.uniform(0.0, 3.0, n)
    Z = np.vstack([np.ones(n), level])
    theta = np.array([0.0, 0.8])   # log σ² = 0.8 · level (σ² ≥ 1: the 10⁻³ floor is negligible)
    r = rng.standard_normal(n) * np.exp(0.5 * theta @ Z)
    got = uv.fit_loglinear(Z, r * r)
    # the slope is the variance's; the level is off by E[log χ²₁] (about −1.27), which the
    # calibration scale absorbs
    assert abs(got[1] - 0.8) < 0.03
    assert -1.4 < got[0] - theta[0] < -1.1


def test_nested_choice_uses_only_the_other_cell_types_tracks(benchmark_script):
    uv = benchmark_script("uncertainty_variants")
    good, wide = (0.90, 0.5), (0.99, 0.5)
    scores = {"a": {"A.x": good, "A.y": good, "B.x": wide, "B.y": wide},
              "b": {"A.x": wide, "A.y": wide, "B.x": good, "B.y": good}}
    # each cell type gets the variant that does well on the *other* cell type's tracks
    assert uv.nested_choice(scores) == {"A": "b", "B": "a"}
    # a cell type's own scores never change its choice
    scores["b"]["A.x"] = scores["b"]["A.y"] = good
    assert uv.nested_choice(scores)["A"] == "b"
    scores["a"]["A.x"] = scores["a"]["A.y"] = (0.5, 0.0)
    assert uv.nested_choice(scores)["A"] == "b"
    # ties on the count of tracks meeting the goals: the coverage nearer 90 % wins
    close = {"a": {"A.x": good, "B.x": (0.93, 0.5)}, "b": {"A.x": good, "B.x": (0.91, 0.5)}}
    assert uv.nested_choice(close)["A"] == "b"


def test_meets_is_the_documented_goal(benchmark_script):
    uv = benchmark_script("uncertainty_variants")
    assert uv.meets(0.85, 0.3) and uv.meets(0.95, 0.9)
    assert not uv.meets(0.951, 0.5) and not uv.meets(0.849, 0.5) and not uv.meets(0.9, 0.29)
