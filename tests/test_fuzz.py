"""Fuzzing: whatever a user feeds predictd ends in a valid result or one clean PredictdError.

- manifests: hypothesis generates TSV text (real and junk column names, URIs of every scheme,
  unsafe names, comments, CRLF, BOMs, undecodable bytes) for :func:`read_manifest`;
- configs: hypothesis generates TOML documents (known and unknown keys, every TOML value type,
  nan/inf, nested tables) for :func:`config.load`, and arbitrary mappings for ``from_dict``;
- bigWigs: a real small file truncated at many offsets and with bytes flipped at many offsets
  is fed to ingest's track check and to :func:`read_binned`. libBigWig can crash the whole
  process on some damage, so the corpus runs in a worker subprocess that reports each case; a
  crash or a hang (per-case timeout) is recorded against the case that caused it and the worker
  is restarted after it. A case that does not fail must give exactly the original bins.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictd import config as config_mod
from predictd.bigwig import BigWigWriter
from predictd.errors import PredictdError
from predictd.manifest import read_manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --------------------------------------------------------------------------- manifests
_COLUMNS = ["cell_type", "assay", "uri", "md5", "accession", "extra", "", "Cell_Type", "uri "]
_URIS = ["E003.bw", "sub/../E017.bw", "/abs/x.bw", "~/x.bw", "file:///tmp/a%20b.bw",
         "file://otherhost/x.bw", "file://", "s3://bucket/key.bw", "s3://bucket", "s3:///k",
         "http://host/x.bw", "https://", "ftp://host/x.bw", "C:x.bw", "name:with:colons.bw",
         "xyz://a/b", ".", ""]
_NAMES = ["E003", "H3K4me3", "A", "a.b", "+-_", ".hidden", "..", "a/b", "é", "", "x y", "A\x00"]
_field = st.one_of(st.sampled_from(_COLUMNS + _URIS + _NAMES + ["0" * 32, "Z" * 32, "#"]),
                   st.text(max_size=12))


@st.composite
def manifest_text(draw) -> bytes:
    lines = []
    if draw(st.booleans()):
        header = ["cell_type", "assay", "uri"] + draw(st.lists(st.sampled_from(_COLUMNS),
                                                               max_size=3))
        lines.append(draw(st.permutations(header)))
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(st.lists(_field, min_size=0, max_size=6)))
    text = "\n".join("\t".join(f) for f in lines)
    text = draw(st.sampled_from(["", "\ufeff", "# comment\n", "\n\n"])) + text
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    data = text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else \
        text.encode("utf-8", "replace")
    if draw(st.integers(0, 9)) == 0:
        data += draw(st.binary(max_size=8))  # possibly undecodable bytes
    return data


@FUZZ
@given(data=manifest_text())
def test_manifest_parsing_never_crashes(data):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.tsv")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            tracks = read_manifest(path)
        except PredictdError as e:
            assert str(e) and "\n" not in str(e)
            return
    assert tracks
    names = [t.name for t in tracks]
    assert len(set(names)) == len(names)
    for t in tracks:
        assert t.row >= 1 and t.uri
        assert not t.cell_type.startswith(".") and not t.assay.startswith(".")
        assert "/" not in t.name and "\t" not in t.uri
        if "://" not in t.uri:
            # local URIs are absolute: a relative one was resolved against the manifest's dir
            assert os.path.isabs(t.uri)


# --------------------------------------------------------------------------- configs
_KEYS = [f for f, _, _ in config_mod.describe()]
_scalar = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.text(max_size=10),
                    st.sampled_from(["arcsinh", "none", "als", "sgd"]))
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=5),
                                                                        inner, max_size=2)),
                      max_leaves=5)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else
                                     "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


@FUZZ
@given(doc=st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(min_size=1, max_size=12)),
                           _value, max_size=6),
       junk=st.one_of(st.just(""), st.text(max_size=30)))
def test_config_parsing_never_crashes(doc, junk):
    text = "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items()) + "\n" + junk
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.toml")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(text)
        try:
            cfg = config_mod.load(path)
        except PredictdError as e:
            assert str(e)
            return
    # a valid config survives a round trip unchanged
    assert config_mod.from_dict(cfg.to_dict()) == cfg
    assert cfg.checksum() == config_mod.from_dict(cfg.to_dict()).checksum()


@FUZZ
@given(d=st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=8), st.integers()),
                         st.one_of(_value, st.none(), st.binary(max_size=4),
                                   st.complex_numbers()), max_size=5))
def test_config_from_dict_never_crashes(d):
    try:
        cfg = config_mod.from_dict(d)
    except PredictdError:
        return
    assert set(d) <= set(_KEYS)
    for k, v in d.items():
        assert getattr(cfg, k) == v


# --------------------------------------------------------------------------- corrupted bigWigs
CHROMS = [("chr1", 40_000), ("chr2", 25_003)]

WORKER = r"""
import hashlib, json, sys
import numpy as np
from predictd.errors import PredictdError
from predictd.genome import Genome
from predictd.ingest import check_tracks
from predictd.manifest import Track
from predictd.bigwig import read_binned
chroms = [tuple(c) for c in json.loads(sys.argv[1])]
genome = Genome("fuzz", tuple(chroms))
for line in sys.stdin:
    i, path = line.split("\t", 1)
    path = path.strip()
    print("START", i, flush=True)
    try:
        check_tracks(None, [Track("A", "x", path, row=2)], genome)
        digests = []
        for c, n in chroms:
            v = read_binned(path, c, n)
            digests.append("none" if v is None else hashlib.sha256(v.tobytes()).hexdigest())
        print("OK", i, ",".join(digests), flush=True)
    except PredictdError as e:
        msg = str(e)
        print("ERR", i, "multiline" if "\n" in msg else "ok", flush=True)
    except BaseException as e:
        print("BAD", i, type(e).__name__, str(e).replace("\n", " ")[:200], flush=True)
"""


def _reference_bigwig(path: Path) -> str:
    rng = np.random.default_rng(3)
    with BigWigWriter(path, CHROMS) as w:
        for c, n in CHROMS:
            nb = -(-n // 25)
            v = rng.gamma(0.5, 2.0, nb).astype(np.float32)
            v[rng.random(nb) < 0.3] = 0.0
            # leave a gap so the file has several intervals and blocks
            w.add_block(c, 0, v[: nb // 2])
            w.add_block(c, nb // 2 + 10, v[nb // 2 + 10:])
    return str(path)


def _corpus(data: bytes, out: Path) -> list[tuple[str, str]]:
    """(description, path) of every damaged copy."""
    size = len(data)
    rng = np.random.default_rng(11)
    cases = []
    cuts = sorted(set(range(0, 80)) | set(np.linspace(80, size - 1, 120).astype(int).tolist()))
    for n in cuts:
        cases.append((f"truncated to {n} bytes", data[:n]))
    flips = sorted(set(range(0, 420)) | set(rng.integers(420, size, 400).tolist()))
    for k, off in enumerate(flips):
        b = bytearray(data)
        b[off] ^= 0xFF if k % 2 else (1 << int(rng.integers(0, 8)))
        cases.append((f"byte {off} flipped", bytes(b)))
    paths = []
    for i, (desc, blob) in enumerate(cases):
        p = out / f"case{i:04d}.bw"
        p.write_bytes(blob)
        paths.append((desc, str(p)))
    return paths


def _run_corpus(cases, timeout_per_case=10.0):
    """{index: (status, detail)} with status OK/ERR/BAD/CRASH/HANG; restarts after a crash."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results: dict[int, tuple] = {}
    start = 0
    while start < len(cases):
        proc = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(CHROMS)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        proc.stdin.write("".join(f"{i}\t{p}\n" for i, (_, p) in enumerate(cases)
                                 if i >= start))
        proc.stdin.close()
        current = None
        buf = ""
        deadline = time.monotonic() + timeout_per_case + 20  # first case pays the imports
        while True:
            left = deadline - time.monotonic()
            ready = select.select([proc.stdout], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                proc.kill()
                proc.wait()
                results[current if current is not None else start] = ("HANG", "")
                start = (current if current is not None else start) + 1
                break
            chunk = os.read(proc.stdout.fileno(), 65536).decode()
            if not chunk:  # EOF: finished, or crashed in the current case
                proc.wait()
                if current is not None and current not in results:
                    results[current] = ("CRASH", f"exit {proc.returncode}")
                    start = current + 1
                else:
                    start = len(cases)
                break
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                kind, i, *rest = line.split(" ", 2)
                if kind == "START":
                    current = int(i)
                    deadline = time.monotonic() + timeout_per_case
                else:
                    results[int(i)] = (kind, rest[0] if rest else "")
        proc.stdout.close()
    return results


def test_corrupted_bigwigs_fail_cleanly_or_read_correctly(tmp_path):
    ref = _reference_bigwig(tmp_path / "ref.bw")
    data = Path(ref).read_bytes()
    cases = _corpus(data, tmp_path)
    assert len(cases) > 400
    t0 = time.monotonic()
    results = _run_corpus([("reference", ref)] + cases)
    elapsed = time.monotonic() - t0
    status, want = results[0]
    assert status == "OK" and "none" not in want, results[0]
    want = want.split(",")
    crashes = {cases[i - 1][0]: r for i, r in results.items()
               if i > 0 and r[0] in ("CRASH", "HANG", "BAD")}
    # correct: every chromosome reads exactly as in the intact file, except one whose name the
    # damage changed (the file then no longer has it: a warning, and no data for it)
    wrong = [cases[i - 1][0] for i, r in results.items() if i > 0 and r[0] == "OK" and
             any(got not in (w, "none") for got, w in zip(r[1].split(","), want))]
    multiline = [cases[i - 1][0] for i, r in results.items() if r == ("ERR", "multiline")]
    counts = {k: sum(1 for r in results.values() if r[0] == k) for k in ("OK", "ERR")}
    print(f"\n{len(cases)} damaged bigWigs in {elapsed:.1f} s: {counts['ERR']} clean errors, "
          f"{counts['OK'] - 1} read correctly (damage in parts reading does not use)")
    assert not crashes, crashes
    assert not wrong, f"damaged files read as different values: {wrong[:10]}"
    assert not multiline
    assert len(results) == len(cases) + 1
