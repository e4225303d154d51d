"""Security: nothing read from storage can execute code, credentials never
reach run.json, logs or messages, and manifest URIs cannot reach unexpected local files.

(Privacy of S3 outputs and masking of pre-signed URLs are covered by tests/test_cloud.py.)
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predictd.errors import PredictdError
from predictd.manifest import read_manifest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "predictd"
FAST = ["--set", "latent_factors=2", "--set", "max_iterations=2"]

# modules whose load functions run code found in the data
_CODE_LOADERS = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle",
                 "joblib", "jsonpickle"}


def _sources():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for f in files:
        yield f, ast.parse(f.read_text(), filename=str(f))


def test_nothing_loads_pickles_or_evaluates_data():
    found = []
    for f, tree in _sources():
        for node in ast.walk(tree):
            where = f"{f.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""]
                if any(m.split(".")[0] in _CODE_LOADERS for m in mods):
                    found.append(f"{where}: imports {mods}")
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            owner = fn.value.id if isinstance(fn, ast.Attribute) and \
                isinstance(fn.value, ast.Name) else ""
            if name in ("eval", "exec") and not owner:
                found.append(f"{where}: {name}()")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
                found.append(f"{where}: yaml.{name}")
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant)
                                                     and kw.value.value is False):
                    found.append(f"{where}: {name}(allow_pickle={ast.unparse(kw.value)})")
    assert not found, found
    # np.load calls that do not say allow_pickle rely on numpy's default: refuse pickles
    assert inspect.signature(np.load).parameters["allow_pickle"].default is False


def test_model_and_tensor_readers_refuse_pickled_arrays(tmp_path):
    """The readers of stored arrays (the model, staged ingest pieces) refuse object arrays."""
    from predictd.model import Model
    model_dir = tmp_path / "model"
    m = Model(cell_types=["A"], assays=["x"], mu=0.0, bC=np.zeros(1), bA=np.zeros(1),
              C=np.ones((1, 2)), A=np.ones((1, 2)), observed=[("A", "x")], meta={})
    m.save(str(model_dir))
    with open(model_dir / "factors.npz", "wb") as fh:
        np.savez(fh, C=np.array([{"evil": 1}], dtype=object), A=np.ones((1, 2)),
                 bC=np.zeros(1), bA=np.zeros(1), mu=np.zeros(1))
    with pytest.raises(PredictdError):
        Model.load(str(model_dir))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, toy):
    d = tmp_path_factory.mktemp("sec-in")
    (d / "g.sizes").write_text("chr1\t100000\nchr2\t100000\n")
    (d / "sub").mkdir()
    for i, name in enumerate(toy.tracks):
        toy.write_track(d / "sub" / f"{name}.bw", seed=i)
    return d


def _cli(args, cwd, env=None):
    e = {**os.environ, **(env or {})}
    e.pop("PREDICTD_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "predictd.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=e, timeout=240)


def test_relative_uris_resolve_against_the_manifest_directory(inputs, toy, tmp_path):
    """Run from another directory: relative entries name files beside the manifest, never
    files relative to the working directory (which holds decoys of the same names here)."""
    rows = [(*n.split("."), f"sub/{n}.bw" if i % 2 else f"./sub/../sub/{n}.bw")
            for i, n in enumerate(toy.tracks)]
    (inputs / "rel.tsv").write_text(toy.manifest_text(rows))
    cwd = tmp_path / "elsewhere"
    (cwd / "sub").mkdir(parents=True)
    for n in toy.tracks:
        (cwd / "sub" / f"{n}.bw").write_text("a decoy, not a bigWig")
    out = tmp_path / "out"
    p = _cli(["run", "-m", os.path.relpath(inputs / "rel.tsv", cwd),
              "-g", str(inputs / "g.sizes"), "-o", str(out), "--no-spark", *FAST], cwd=cwd)
    assert p.returncode == 0, p.stderr
    import json
    doc = json.loads((out / "run.json").read_text())
    uris = [t["uri"] for t in doc["manifest"]["tracks"]]
    assert uris == [str(inputs / "sub" / f"{n}.bw") for n in toy.tracks]


@pytest.mark.parametrize("uri", ["/etc/passwd", "file:///etc/passwd", "~/.aws/credentials",
                                 "file://localhost/root/x.bw"])
def test_a_remote_manifest_cannot_name_local_files(toy, tmp_path, uri):
    path = tmp_path / "m.tsv"
    path.write_text(toy.manifest_text([("A", "x", "tracks/a.bw"), ("B", "x", uri)]))
    with pytest.raises(PredictdError, match=r"row 3: uri .* is a local path, but the manifest "
                                            r"is remote \(s3://bucket/dir\)"):
        read_manifest(str(path), base="s3://bucket/dir")
    # relative entries stay beside the manifest, in the same bucket
    path.write_text(toy.manifest_text([("A", "x", "tracks/a.bw"), ("B", "x", "../up/b.bw")]))
    assert [t.uri for t in read_manifest(str(path), base="s3://bucket/dir")] == [
        "s3://bucket/dir/tracks/a.bw", "s3://bucket/up/b.bw"]


@pytest.mark.slow
@pytest.mark.cloud
def test_credentials_never_printed_or_stored(inputs, toy, tmp_path, s3_endpoint, fake_aws):
    """Tracks read from S3 with credentials from the environment: the secret key appears in no
    output file, in no line the CLI prints, and not in an error message either."""
    import boto3
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="inputs")
    for n in toy.tracks:
        s3.upload_file(str(inputs / "sub" / f"{n}.bw"), "inputs", f"t/{n}.bw")
    rows = [(*n.split("."), f"s3://inputs/t/{n}.bw") for n in toy.tracks]
    (tmp_path / "m.tsv").write_text(toy.manifest_text(rows))
    env = {"PREDICTD_SCRATCH": str(tmp_path / "scratch")}
    out = tmp_path / "out"
    args = ["-m", str(tmp_path / "m.tsv"), "-g", str(inputs / "g.sizes"), "-o", str(out),
            "--no-spark", *FAST]
    good = _cli(["run", *args], cwd=tmp_path, env=env)
    assert good.returncode == 0, good.stderr
    # an error path (a missing object), with --debug tracebacks
    rows[1] = ("A", "y", "s3://inputs/t/missing.bw")
    (tmp_path / "m2.tsv").write_text(toy.manifest_text(rows))
    bad = _cli(["--debug", "run", *args[:1], str(tmp_path / "m2.tsv"), *args[2:5],
                str(tmp_path / "out2"), *args[6:]], cwd=tmp_path, env=env)
    assert bad.returncode != 0
    assert "s3://inputs/t/missing.bw" in bad.stderr
    printed = good.stdout + good.stderr + bad.stdout + bad.stderr
    assert fake_aws.secret_key not in printed
    stored = [f for f in out.rglob("*") if f.is_file() and fake_aws.secret_key.encode() in
              f.read_bytes()]
    assert stored == []
    assert (out / "run.json").exists() and len(list(out.rglob("*.bw"))) == 6
