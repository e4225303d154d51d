"""The Model value object: prediction by hand, and its npz + JSON storage (no pickles)."""

import json

import numpy as np
import pytest

from predictd.errors import PredictdError
from predictd.solvers import stacking
from predictd.model import (MODEL_JSON, MODEL_NPZ, Model, experiment_bias, experiment_features,
                            predict)


def make_model(seed=0, L=3):
    rng = np.random.default_rng(seed)
    return Model(cell_types=["E003", "E017"], assays=["H3K4me3", "H3K27me3", "H3K9me3"],
                 mu=0.31, bC=rng.normal(size=2), bA=rng.normal(size=3),
                 C=rng.normal(size=(2, L)), A=rng.normal(size=(3, L)),
                 observed=[("E003", "H3K4me3"), ("E017", "H3K9me3")],
                 meta={"solver": "als", "seed": 4, "valid_mse": 0.125})


def test_predict_by_hand():
    C = np.array([[1.0, 2.0], [0.5, -1.0]])
    A = np.array([[3.0, 1.0], [2.0, 2.0]])
    ec, ea = np.array([0, 1, 1]), np.array([1, 0, 1])
    Z = experiment_features(C, A, ec, ea)
    np.testing.assert_array_equal(Z, [[2.0, 4.0], [1.5, -1.0], [1.0, -2.0]])
    b = experiment_bias(0.5, np.array([0.1, 0.2]), np.array([1.0, 2.0]), ec, ea)
    np.testing.assert_allclose(b, [2.6, 1.7, 2.7])
    G = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    bG = np.array([0.0, 10.0, -1.0])
    X = predict(G, bG, Z, b)
    # bin 2, experiment 0: μ + bC0 + bA1 + bG2 + Σ C0l·A1l·G2l = 2.6 − 1 + (2 + 4)
    assert X.shape == (3, 3)
    assert X[2, 0] == pytest.approx(2.6 - 1.0 + 6.0)
    want = np.array([[G[i] @ Z[e] + bG[i] + b[e] for e in range(3)] for i in range(3)])
    np.testing.assert_allclose(X, want)


def test_model_methods_are_the_array_functions():
    m = make_model()
    jj, kk = m.pair_arrays()
    np.testing.assert_array_equal(m.experiment_features(jj, kk),
                                  experiment_features(m.C, m.A, jj, kk))
    np.testing.assert_array_equal(m.experiment_bias(jj, kk),
                                  experiment_bias(m.mu, m.bC, m.bA, jj, kk))
    # summed (μ + bC) + bA, the order every caller relies on for identical bits
    np.testing.assert_array_equal(m.experiment_bias(jj, kk), (m.mu + m.bC[jj]) + m.bA[kk])
    buf = np.empty((jj.size, m.latent_factors))
    assert experiment_features(m.C, m.A, jj, kk, out=buf) is buf


def test_pairs_and_track_names_agree():
    m = make_model()
    pairs = m.pairs()
    jj, kk = m.pair_arrays()
    assert pairs == list(zip(jj.tolist(), kk.tolist()))
    assert len(pairs) == 6 and pairs[:3] == [(0, 0), (0, 1), (0, 2)]  # cell-type major
    assert m.track_names()[4] == "E017.H3K27me3"
    assert m.latent_factors == 3


def test_save_load_round_trip(tmp_path):
    m = make_model()
    m.save(str(tmp_path / "model"))
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted([MODEL_JSON, MODEL_NPZ])
    back = Model.load(str(tmp_path / "model"))
    assert back.cell_types == m.cell_types and back.assays == m.assays
    assert back.mu == m.mu
    for k in ("C", "A", "bC", "bA"):
        np.testing.assert_array_equal(getattr(back, k), getattr(m, k))
        assert getattr(back, k).dtype == np.float64
    assert back.observed == m.observed and isinstance(back.observed[0], tuple)
    assert back.meta == m.meta
    # plain formats: numpy without pickle support, and JSON
    with np.load(tmp_path / "model" / MODEL_NPZ, allow_pickle=False) as z:
        assert sorted(z.files) == ["A", "C", "bA", "bC", "mu"]
        assert all(z[k].dtype != object for k in z.files)
    doc = json.loads((tmp_path / "model" / MODEL_JSON).read_text())
    assert doc["format"] == "predictd-model/1" and doc["latent_factors"] == 3


def test_stacked_model_round_trip_keeps_windows_and_similarity(tmp_path):
    m = make_model()
    D = stacking.n_features(3, (9, 51), similar=True)
    m.stack = np.arange(2 * 3 * D, dtype=np.float64).reshape(2, 3, D)
    m.stack_windows, m.stack_similar = (9, 51), (1001, 0.2)
    m.save(str(tmp_path / "m"))
    back = Model.load(str(tmp_path / "m"))
    np.testing.assert_array_equal(back.stack, m.stack)
    assert back.stack_windows == (9, 51) and back.stack_similar == (1001, 0.2)
    # with the hinge features too
    m.stack = np.zeros((2, 3, stacking.n_features(3, (9, 51), True, hinges=True)))
    m.save(str(tmp_path / "h"))
    assert Model.load(str(tmp_path / "h")).stack.shape == m.stack.shape
    # weights of no layout this version knows (e.g. another version's hinges): one clear line
    m.stack = np.zeros((2, 3, D + 9))
    m.save(str(tmp_path / "old"))
    with pytest.raises(PredictdError, match=f"{D + 9} features fit no feature layout"):
        Model.load(str(tmp_path / "old"))
    # a model written before the similarity existed (plain-average weights, no key) loads as
    # the plain average
    m.stack, m.stack_similar = np.zeros((2, 3, stacking.n_features(3, (9, 51)))), None
    m.save(str(tmp_path / "m"))
    doc = json.loads((tmp_path / "m" / MODEL_JSON).read_text())
    doc.pop("stack_similar", None)
    (tmp_path / "m" / MODEL_JSON).write_text(json.dumps(doc))
    assert Model.load(str(tmp_path / "m")).stack_similar is None
    for bad in ([0, 0.2], [1001, -1], "wide", [1001]):
        doc["stack_similar"] = bad
        (tmp_path / "m" / MODEL_JSON).write_text(json.dumps(doc))
        with pytest.raises(PredictdError, match="malformed model description"):
            Model.load(str(tmp_path / "m"))


def test_save_overwrites_and_leaves_no_temporaries(tmp_path):
    d = str(tmp_path)
    make_model(seed=1).save(d)
    m2 = make_model(seed=2, L=5)
    m2.save(d)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MODEL_JSON, MODEL_NPZ])
    back = Model.load(d)
    assert back.latent_factors == 5
    np.testing.assert_array_equal(back.C, m2.C)


def test_missing_model(tmp_path):
    with pytest.raises(PredictdError, match="model not found"):
        Model.load(str(tmp_path / "nowhere"))


def test_corrupted_json(tmp_path):
    make_model().save(str(tmp_path))
    (tmp_path / MODEL_JSON).write_text('{"format": "predictd-model/1", "cell_types": [')
    with pytest.raises(PredictdError) as e:
        Model.load(str(tmp_path))
    assert str(tmp_path) in str(e.value)


def test_wrong_format_tag(tmp_path):
    make_model().save(str(tmp_path))
    doc = json.loads((tmp_path / MODEL_JSON).read_text())
    doc["format"] = "something-else/2"
    (tmp_path / MODEL_JSON).write_text(json.dumps(doc))
    with pytest.raises(PredictdError, match="not a predictd model"):
        Model.load(str(tmp_path))


def test_names_not_matching_factor_shapes(tmp_path):
    make_model().save(str(tmp_path))
    doc = json.loads((tmp_path / MODEL_JSON).read_text())
    doc["assays"] = doc["assays"][:2]
    (tmp_path / MODEL_JSON).write_text(json.dumps(doc))
    with pytest.raises(PredictdError, match="factor shapes do not match"):
        Model.load(str(tmp_path))


def test_npz_with_pickled_content_is_refused(tmp_path):
    make_model().save(str(tmp_path))
    with open(tmp_path / MODEL_NPZ, "wb") as fh:
        np.savez(fh, C=np.array([{"evil": 1}], dtype=object), A=np.zeros((3, 3)),
                 bC=np.zeros(2), bA=np.zeros(3), mu=np.zeros(1))
    with pytest.raises(PredictdError, match="unreadable"):
        Model.load(str(tmp_path))


# Damaged files become one clear PredictdError.
def test_truncated_npz(tmp_path):
    make_model().save(str(tmp_path))
    raw = (tmp_path / MODEL_NPZ).read_bytes()
    (tmp_path / MODEL_NPZ).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PredictdError):
        Model.load(str(tmp_path))


@pytest.mark.parametrize("text", ["[]", '{"format": "predictd-model/1"}',
                                  '{"format": "predictd-model/1", "cell_types": 3, '
                                  '"assays": []}'])
def test_json_of_the_wrong_shape(tmp_path, text):
    make_model().save(str(tmp_path))
    (tmp_path / MODEL_JSON).write_text(text)
    with pytest.raises(PredictdError):
        Model.load(str(tmp_path))


def test_model_json_records_the_factors_checksum_deterministically(tmp_path):
    m = make_model()
    m.save(str(tmp_path / "a"))
    m.save(str(tmp_path / "b"))
    # the npz carries zip timestamps; model.json records the arrays' contents, the same bits
    assert (tmp_path / "a" / MODEL_JSON).read_bytes() == (tmp_path / "b" / MODEL_JSON).read_bytes()
    assert len(json.loads((tmp_path / "a" / MODEL_JSON).read_text())["factors_sha256"]) == 64
    # altered factors are refused, naming the file
    with np.load(tmp_path / "a" / MODEL_NPZ) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["bA"] = arrays["bA"] + 1e-12
    np.savez(tmp_path / "a" / MODEL_NPZ, **arrays)
    with pytest.raises(PredictdError, match="factors.npz: model files altered"):
        Model.load(str(tmp_path / "a"))
    # a model saved before the checksum was recorded still loads
    doc = json.loads((tmp_path / "a" / MODEL_JSON).read_text())
    del doc["factors_sha256"]
    (tmp_path / "a" / MODEL_JSON).write_text(json.dumps(doc))
    np.testing.assert_array_equal(Model.load(str(tmp_path / "a")).bA, arrays["bA"])
