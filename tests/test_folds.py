"""Cross-validation folds and the ensemble of fold models."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest

from predictd import pipeline
from predictd.config import Config
from predictd.errors import PredictdError
from predictd.folds import make_folds


@pytest.fixture
def experiments(roadmap_cell_types, roadmap_assays):
    """The 20 shared Roadmap experiment names."""
    return [f"{c}.{m}" for c in roadmap_cell_types for m in roadmap_assays]


def test_folds_are_balanced_and_keep_every_cell_type_and_assay(experiments, roadmap_cell_types,
                                                                roadmap_assays):
    folds = make_folds(experiments, 5, seed=3)
    assert sorted(e for f in folds for e in f) == sorted(experiments)
    assert {len(f) for f in folds} == {4}
    for fold in folds:
        rest = set(experiments) - set(fold)
        assert {e.split(".")[0] for e in rest} == set(roadmap_cell_types)
        assert {e.split(".")[1] for e in rest} == set(roadmap_assays)
    assert make_folds(experiments, 5, seed=3) == folds
    assert make_folds(experiments, 5, seed=4) != folds
    # each fold holds one track of each cell type and none twice of an assay (4 × 5, 5 folds);
    # with 2 folds, at most 3 of a cell type's 5 tracks and 2 of an assay's 4
    for n_folds, most_of_cell, most_of_assay in ((5, 1, 1), (2, 3, 2)):
        for fold in make_folds(experiments, n_folds, seed=3):
            assert max(Counter(e.split(".")[0] for e in fold).values()) <= most_of_cell
            assert max(Counter(e.split(".")[1] for e in fold).values()) <= most_of_assay


def test_impossible_folds_are_refused(experiments):
    with pytest.raises(PredictdError, match="--folds 1"):
        make_folds(experiments, 1, 0)
    # one track per assay: any fold that holds a track removes its assay entirely
    with pytest.raises(PredictdError, match="cannot split"):
        make_folds(["A.x", "A.y", "B.x"], 3, 0)


@pytest.mark.slow
def test_folds_run_imputes_every_track_with_models_that_did_not_see_it(
        roadmap, roadmap_cell_types, write_roadmap_inputs, tmp_path):
    small = {k: v[:60_000] for k, v in roadmap.items()
             if k.split(".")[0] in roadmap_cell_types[:3]}
    manifest, sizes = write_roadmap_inputs(small, tmp_path / "in")
    cfg = Config(training_fraction=0.2, block_bins=16_384, max_iterations=6, ensemble_size=2)
    out = str(tmp_path / "out")
    run = pipeline.open_run(manifest, sizes, out, cfg, progress=False)
    res = pipeline.run_all(run, folds=3)["folds"]
    assert len(res["folds"]) == 3 and sum(len(f) for f in res["folds"]) == 15
    methods = {(r["cell_type"], r["assay"], r["method"]) for r in res["metrics"]}
    assert len(methods) == 15 * 4  # model, ensemble, average, cp_als4 for every observed track
    assert len(os.listdir(os.path.join(out, "tracks"))) == 15
    page = open(os.path.join(out, "report", "index.html")).read()
    # every track's error profile, its worst window named on the pilot's coordinates
    table = page.split("error is</h2>")[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 15 and table.count("pilot:") == 15
    # the written track of an observed experiment is its own fold's ensemble
    import pyBigWig
    from predictd.layout import fold_model_dir
    name = res["folds"][0][0]
    bw = pyBigWig.open(os.path.join(out, "tracks", f"{name}.imputed.bw"))
    written = np.arcsinh(bw.values("pilot", 0, 25 * 1000, numpy=True)[::25])
    bw.close()
    from predictd.impute import ensemble_values, member_weights
    from predictd.model import Model
    members = [(os.path.join(fold_model_dir(out, 0, m), "model", "genome_factors"),
                Model.load(os.path.join(fold_model_dir(out, 0, m), "model"))) for m in range(2)]
    c, a = name.split(".")
    pair = [(members[0][1].cell_types.index(c), members[0][1].assays.index(a))]
    from predictd import tensor
    header = tensor.read_header(os.path.join(out, "tensor"))
    data = (header.experiments,
            tensor.read_block(os.path.join(out, "tensor"), "pilot", 0, header.experiments)[1])
    want = ensemble_values(members, member_weights(2, [0], None), "pilot", 0, pair,
                           data)[:1000, 0]
    np.testing.assert_allclose(written, np.maximum(want, 0), rtol=1e-4, atol=1e-5)
    assert "ensemble_mse_reduction" in res
