"""The evaluation report: metrics.tsv, PNG plots, self-contained index.html, atomic writes."""

import csv
import math
import re
import struct

import numpy as np
import pytest

from predictd import report as R
from predictd.errors import PredictdError
from predictd.metrics import EXTRA_METRIC_NAMES, METRIC_NAMES, score_track

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def make_rows(region=True):
    rng = np.random.default_rng(0)
    n = 3000
    rows = []
    for cell, assay in [("E003", "H3K4me3"), ("E116", "H3K27me3")]:
        y = rng.gamma(0.6, 1.0, n)
        preds = {"model": y + rng.normal(0, 0.3, n), "average": y + rng.normal(0, 1.0, n),
                 "als": y + rng.normal(0, 0.5, n)}
        masks = {"prom": rng.random(n) < 0.1, "gene": rng.random(n) < 0.4,
                 "enh": rng.random(n) < 0.02}
        for method, yhat in preds.items():
            var = rng.gamma(1.0, 1.0, n)  # the assay's variance across cell types
            row = score_track(y, yhat, masks if region else None, var if region else None)
            row.update(cell_type=cell, assay=assay, method=method)
            rows.append(row)
    rows[2]["gwcorr"] = float("nan")  # an undefined metric must survive as nan
    return rows


def make_examples():
    rng = np.random.default_rng(1)
    obs = rng.gamma(0.6, 1.0, 200)
    return [
        {"track": "E003.H3K4me3", "chrom": "chr1", "start_bin": 4000, "observed": obs,
         "imputed": obs * 0.8, "baseline": np.full(200, obs.mean())},
        {"track": "E003.H3K4me3", "chrom": "chr2", "start_bin": 10, "observed": obs[:50],
         "imputed": obs[:50], "baseline": obs[:50] * 0.5},
        {"track": "E116.H3K27me3", "chrom": "chr1", "start_bin": 0, "observed": obs,
         "imputed": obs + 0.1},  # no baseline
    ]


CURVES = {"iteration": [0, 10, 20, 30], "train_mse": [1.0, 0.6, 0.5, 0.45],
          "valid_mse": [1.1, None, 0.7, 0.72], "lr": [0.005, 0.005, 0.0025, 0.0025]}


@pytest.mark.slow
def test_write_report_all_files(tmp_path):
    out = tmp_path / "report"
    rows = make_rows()
    index = R.write_report(out, rows, CURVES, make_examples())
    assert index == str(out / "index.html")
    metrics = METRIC_NAMES + EXTRA_METRIC_NAMES
    expected = {"metrics.tsv", "index.html", "curves.png", "signal_E003.H3K4me3.png",
                "signal_E116.H3K27me3.png"} | {f"bar_{m}.png" for m in metrics}
    assert {p.name for p in out.iterdir()} == expected  # and no temp dir left behind
    for p in out.glob("*.png"):
        w, h = png_size(p)
        assert 300 < w < 3000 and 200 < h < 5000, (p.name, w, h)
    # two regions of E003 -> a taller figure than E116's single region
    two, one = out / "signal_E003.H3K4me3.png", out / "signal_E116.H3K27me3.png"
    assert png_size(two)[1] > png_size(one)[1]


@pytest.mark.slow
def test_metrics_tsv_columns_and_values(tmp_path):
    rows = make_rows()
    R.write_report(tmp_path, rows, None, None)
    with open(tmp_path / "metrics.tsv", newline="") as fh:
        table = list(csv.reader(fh, delimiter="\t"))
    header, body = table[0], table[1:]
    assert header == ["cell_type", "assay", "method"] + METRIC_NAMES + EXTRA_METRIC_NAMES
    assert len(body) == len(rows) == 6
    expected_keys = [["E003", "H3K4me3", m] for m in ("model", "average", "als")]
    assert [r[:3] for r in body][:3] == expected_keys
    assert body[2][header.index("gwcorr")] == "nan"
    for src, line in zip(rows, body):
        for k in METRIC_NAMES + EXTRA_METRIC_NAMES:
            v = float(line[header.index(k)])
            assert (math.isnan(v) and math.isnan(src[k])) or v == src[k]  # exact round trip
    back = R.read_metrics_tsv(tmp_path / "metrics.tsv")
    assert back[0]["mse"] == rows[0]["mse"] and back[0]["method"] == "model"


@pytest.mark.slow
def test_tsv_without_region_metrics_and_extra_columns(tmp_path):
    rows = make_rows(region=False)
    for r in rows:
        r["n_bins"] = 3000
    rows[0]["mseprom"] = 0.25  # present in one row only: column added, others nan
    R.write_report(tmp_path, rows)
    with open(tmp_path / "metrics.tsv", newline="") as fh:
        table = list(csv.reader(fh, delimiter="\t"))
    assert table[0] == ["cell_type", "assay", "method"] + METRIC_NAMES + ["mseprom", "n_bins"]
    assert table[1][-2:] == ["0.25", "3000"] and table[2][-2:] == ["nan", "3000"]
    assert not (tmp_path / "bar_msegene.png").exists() and (tmp_path / "bar_mseprom.png").exists()


@pytest.mark.slow
def test_index_html_self_contained_and_explained(tmp_path):
    rows = make_rows()
    rows[0]["cell_type"] = rows[1]["cell_type"] = rows[2]["cell_type"] = "E<3>&"
    R.write_report(tmp_path, rows, CURVES, make_examples())
    page = (tmp_path / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "external asset"
    assert "<script" not in page and "<link" not in page
    n_png = len(list(tmp_path.glob("*.png")))
    assert page.count('src="data:image/png;base64,') == n_png
    assert "E&lt;3&gt;&amp;" in page and "E<3>&" not in page
    for name, desc in R.METRIC_DESCRIPTIONS.items():
        assert f"<dt>{name}</dt>" in page
        assert desc.split(":")[0][:30].replace("&", "&amp;") in page


def test_calibration_table_on_the_page(tmp_path):
    """With uncertainty tracks, their calibration on the held-out tracks (calibration.tsv's
    rows) is a table on the page; without, no such section."""
    R.write_report(tmp_path, make_rows(), CURVES, make_examples())
    assert "calibration" not in (tmp_path / "index.html").read_text().lower()
    cal = [{"cell_type": "E<1>", "assay": "H3K4me3", "bins": 100, "coverage": 0.9123,
            "spearman": 0.5, "mean_sd": 0.25, "rmse": 1.5}]
    R.write_report(tmp_path, make_rows(), CURVES, make_examples(), calibration=cal)
    page = (tmp_path / "index.html").read_text()
    assert "<h2>Uncertainty: calibration on the held-out tracks</h2>" in page
    assert "<td class=\"key\">E&lt;1&gt;.H3K4me3</td><td>91.2 %</td><td>0.5</td>" in page


def test_best_value_highlighted(tmp_path):
    row = {k: 0.5 for k in METRIC_NAMES}
    rows = [dict(row, cell_type="A", assay="X", method="model", mse=0.1, gwcorr=0.2),
            dict(row, cell_type="A", assay="X", method="average", mse=0.3, gwcorr=0.9)]
    R.write_report(tmp_path, rows)
    page = (tmp_path / "index.html").read_text()
    per_track = page[page.index("<h2>Per track</h2>"):]
    # lower mse wins for model, higher gwcorr for average; ties (0.5 everywhere else) all best
    assert '<td class="best">0.1</td>' in per_track and "<td>0.3</td>" in per_track
    assert '<td class="best">0.9</td>' in per_track and "<td>0.2</td>" in per_track
    assert R._best_flags([0.1, np.nan, 0.3], "mse") == [True, False, False]
    assert R._best_flags([0.1, np.nan, 0.3], "gwcorr") == [False, False, True]


@pytest.mark.slow
def test_many_tracks_switch_to_horizontal_bars(tmp_path):
    rows = [
        dict({k: float(i % 7) / 7 for k in METRIC_NAMES}, cell_type=f"E{i:03d}", assay="H3K27ac",
             method=m)
        for i in range(60)
        for m in ("model", "average")
    ]
    assert R._bar_layout(60, 2)[0] and not R._bar_layout(10, 2)[0]
    R.write_report(tmp_path, rows)
    w, h = png_size(tmp_path / "bar_mse.png")
    assert h > 2 * w  # tall, readable labels, not a 60-group strip


def test_empty_rows_still_write_tsv_and_page(tmp_path):
    R.write_report(tmp_path, [], None, None)
    assert (tmp_path / "metrics.tsv").read_text().split("\n")[0].split("\t")[:4] == [
        "cell_type", "assay", "method", "mse"]
    assert "No evaluated tracks" in (tmp_path / "index.html").read_text()


def test_input_errors_name_the_culprit(tmp_path):
    rows = make_rows()
    bad = [dict(r) for r in rows]
    del bad[1]["method"]
    with pytest.raises(PredictdError, match="row 2.*method"):
        R.write_report(tmp_path, bad)
    with pytest.raises(PredictdError, match="row 2: duplicate"):
        R.write_report(tmp_path, [rows[0], rows[0]])
    with pytest.raises(PredictdError, match="'valid_mse' has 2 values"):
        R.write_report(tmp_path, rows, {"iteration": [1, 2, 3], "valid_mse": [1, 2]})
    with pytest.raises(PredictdError, match="example 0.*'imputed' has 3 bins"):
        R.write_report(tmp_path, rows, None, [{"track": "t", "chrom": "c", "start_bin": 0,
                                              "observed": [1, 2], "imputed": [1, 2, 3]}])
    with pytest.raises(PredictdError, match="'mse': not a number"):
        R.write_report(tmp_path, [dict(rows[0], mse="abc")])
    with pytest.raises(PredictdError, match="error row 0: missing 'track'"):
        R.write_report(tmp_path, rows, errors=[{"mse": 0.1}])
    assert not list(tmp_path.iterdir())  # nothing written on bad input
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PredictdError, match="is a file"):
        R.write_report(tmp_path / "afile", rows)


@pytest.mark.slow
def test_failed_write_leaves_previous_report_intact(tmp_path, monkeypatch):
    rows = make_rows()
    R.write_report(tmp_path, rows, CURVES)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(R, "plot_curves", boom)
    changed = [dict(r, mse=123.0) for r in rows]
    with pytest.raises(RuntimeError, match="disk full"):
        R.write_report(tmp_path, changed, CURVES)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no half-written files, no temp directory left


@pytest.mark.slow
def test_error_table_and_region_labels(tmp_path):
    rows = make_rows()
    ex = make_examples()
    ex[1]["label"] = "largest error of the model"
    errors = [{"track": "E003.H3K4me3", "mse": 0.25, "top1_share": 0.474,
               "worst": "chr7:27,100,000-27,350,000", "worst_share": 0.17, "worst_mse": 6.16,
               "rest_mse": 0.27},
              {"track": "E116.H3K27me3", "mse": 0.0, "top1_share": float("nan"), "worst": None,
               "worst_share": float("nan"), "worst_mse": float("nan"),
               "rest_mse": float("nan")}]
    page = open(R.write_report(tmp_path, rows, None, ex, errors=errors)).read()
    assert "Where the model&#x27;s error is" in page or "Where the model's error is" in page
    table = page.split("error is</h2>")[1].split("</table>")[0]
    assert "chr7:27,100,000-27,350,000" in table and "47.4 %" in table and "17.0 %" in table
    assert "6.16" in table and table.count("n/a") == 5  # the perfect track: nothing to show
    # without error rows the section is absent
    page = open(R.write_report(tmp_path / "b", rows, None, ex)).read()
    assert "error is</h2>" not in page
