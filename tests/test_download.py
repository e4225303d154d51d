"""predictd.download and `predictd list/download`: local and HTTP sources (S3 is exercised end to
end in test_cloud.py). Tracks are real bigWigs; the HTTP server is real, on 127.0.0.1, with byte
ranges, ETags and an injectable dropped connection."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from predictd import download as dl
from predictd import layout, storage
from predictd.bigwig import BigWigWriter
from predictd.errors import PredictdError

CELLS = ["E003", "E017"]
ASSAYS = ["H3K27me3", "H3K4me3", "H3K9me3"]


@pytest.fixture
def run_dir(tmp_path, make_run):
    return make_run(tmp_path / "out", CELLS, ASSAYS)


def md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- HTTP server
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        path = Path(srv.root) / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, st = path.read_bytes(), path.stat()
        etag = f'"{st.st_size}-{st.st_mtime_ns}"'
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and self.headers.get("If-Range", etag) == etag:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start, end = int(first), int(last) + 1 if last else len(data)
            status, data = 206, data[start:end]
        self.send_response(status)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(data)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{st.st_size}")
        self.end_headers()
        cut = srv.cut_after.pop(self.path, None) if rng != "bytes=0-0" else None
        if cut is not None and cut < len(data):
            self.wfile.write(data[:cut])  # promise the whole body, then drop the connection
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)


@pytest.fixture
def web(run_dir):
    """Serves the run directory over HTTP, as a public bucket or web server would."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.root, srv.log, srv.cut_after = str(run_dir), [], {}
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def body_gets(srv, name):
    """GETs of a track other than the one-byte size probes."""
    return [r for p, r in srv.log if p.endswith(name) and r != "bytes=0-0"]


# --------------------------------------------------------------------------- listing
def test_list_local_run_sorted_with_sizes(run_dir):
    files = dl.list_outputs(str(run_dir))
    assert [f.name for f in files] == [f"{c}.{a}" for c in CELLS for a in ASSAYS]
    for f in files:
        assert f.size == os.path.getsize(run_dir / f.path) and f.md5 is None
    more = dl.list_outputs(str(run_dir), include_model=True)
    others = [f.path for f in more if not f.is_track]
    # the genome factors (tens of GB for a real genome) are never part of a download
    assert others == ["model/model.json", "model/factors.npz", "run.json"]


def test_index_gives_md5s_and_a_stale_entry_is_ignored(run_dir):
    uri = layout.write_track_index(str(run_dir))
    assert uri == os.path.join(str(run_dir), layout.INDEX_FILE)
    doc = json.loads(Path(uri).read_text())
    assert doc["format"] == "predictd-tracks/1" and len(doc["tracks"]) == 6
    entry = doc["tracks"][0]
    assert entry["md5"] == md5(run_dir / entry["path"])
    assert {f["path"] for f in doc["files"]} == {"model/model.json", "model/factors.npz",
                                                 "run.json"}
    assert [f for f in doc["files"] if f["path"] == "run.json"][0]["md5"] is None
    files = {f.path: f for f in dl.list_outputs(str(run_dir))}
    assert all(f.md5 == md5(run_dir / p) for p, f in files.items())
    # a track rewritten after the index: its old md5 must not be used
    stale = run_dir / "tracks" / "E017.H3K9me3.imputed.bw"
    stale.write_bytes(stale.read_bytes() + b"x")
    files = {f.path: f for f in dl.list_outputs(str(run_dir))}
    assert files["tracks/E017.H3K9me3.imputed.bw"].md5 is None
    assert files["tracks/E003.H3K9me3.imputed.bw"].md5 is not None


def test_index_uses_md5s_given_by_the_writers(run_dir):
    doc = layout.track_index(str(run_dir), md5s={"E003.H3K4me3": "a" * 32})
    got = {t["path"]: t["md5"] for t in doc["tracks"]}
    assert got["tracks/E003.H3K4me3.imputed.bw"] == "a" * 32
    assert got["tracks/E017.H3K4me3.imputed.bw"] == md5(run_dir /
                                                       "tracks/E017.H3K4me3.imputed.bw")


def test_select_patterns_and_commas(run_dir):
    files = dl.list_outputs(str(run_dir))
    assert [f.name for f in dl.select(files, ["E01*"], ["H3K4me3,H3K9me3"])] == \
        ["E017.H3K4me3", "E017.H3K9me3"]
    assert [f.name for f in dl.select(files, assays=["H3K27me3"])] == \
        ["E003.H3K27me3", "E017.H3K27me3"]
    assert dl.select(files, ["E999"]) == []


def test_missing_prefix_and_no_match_are_one_line_errors(run_dir, tmp_path):
    with pytest.raises(PredictdError, match=r"^no predictd output at .*nowhere"):
        dl.list_outputs(str(tmp_path / "nowhere"))
    started = tmp_path / "started"
    started.mkdir()
    (started / "run.json").write_text("{}")
    with pytest.raises(PredictdError, match="no imputed tracks yet"):
        dl.list_outputs(str(started))
    with pytest.raises(PredictdError) as e:
        dl.download(str(run_dir), str(tmp_path / "d"), cell_types=["E116"])
    msg = str(e.value)
    assert "\n" not in msg and "--cell-type E116" in msg and "E003, E017" in msg
    assert not (tmp_path / "d").exists()


def test_unsafe_index_is_refused():
    bad = json.dumps({"format": "predictd-tracks/1",
                      "tracks": [{"path": "../../etc/E003.X.imputed.bw", "bytes": 1}]})
    with pytest.raises(PredictdError, match="unsafe path"):
        layout.read_track_index(bad, "idx")
    with pytest.raises(PredictdError, match="not a predictd track index"):
        layout.read_track_index("[]", "idx")


# --------------------------------------------------------------------------- downloading
def test_local_download_filters_skips_and_dry_run(run_dir, tmp_path):
    dest = tmp_path / "d"
    rep = dl.download(str(run_dir), str(dest), assays=["H3K4me3"], include_model=True)
    assert sorted(f.path for f in rep.fetched) == [
        "model/factors.npz", "model/model.json", "run.json",
        "tracks/E003.H3K4me3.imputed.bw", "tracks/E017.H3K4me3.imputed.bw"]
    for f in rep.fetched:
        assert (dest / f.path).read_bytes() == (run_dir / f.path).read_bytes()
    assert sorted(os.listdir(dest / "tracks")) == ["E003.H3K4me3.imputed.bw",
                                                   "E017.H3K4me3.imputed.bw"]
    plan = dl.download(str(run_dir), str(dest), dry_run=True)
    assert plan.dry_run and len(plan.skipped) == 2 and len(plan.fetched) == 4
    assert len(os.listdir(dest / "tracks")) == 2  # a dry run fetches nothing
    again = dl.download(str(run_dir), str(dest), assays=["H3K4me3"])
    assert again.fetched == [] and len(again.skipped) == 2
    # a damaged local copy (same size, other bytes) is fetched again when the md5 is known
    layout.write_track_index(str(run_dir))
    target = dest / "tracks" / "E003.H3K4me3.imputed.bw"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    rep = dl.download(str(run_dir), str(dest), assays=["H3K4me3"])
    assert [f.name for f in rep.fetched] == ["E003.H3K4me3"]
    assert md5(target) == md5(run_dir / "tracks" / "E003.H3K4me3.imputed.bw")


def test_destination_that_is_a_file(run_dir, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PredictdError, match="is a file, not a directory"):
        dl.download(str(run_dir), str(tmp_path / "f"))


def test_http_download_with_index_verifies_md5(run_dir, web, tmp_path):
    layout.write_track_index(str(run_dir))
    files = dl.list_outputs(web.url)
    assert len(files) == 6 and all(f.md5 and f.size for f in files)
    dest = tmp_path / "d"
    rep = dl.download(web.url, str(dest), cell_types=["E017"])
    assert [f.name for f in rep.fetched] == [f"E017.{a}" for a in ASSAYS]
    for f in rep.fetched:
        assert md5(dest / f.path) == f.md5
    assert sorted(os.listdir(dest / "tracks")) == sorted(  # no .part / .lock left behind
        f"E017.{a}.imputed.bw" for a in ASSAYS)
    n = len(web.log)
    rep = dl.download(web.url, str(dest), cell_types=["E017"])
    assert rep.fetched == [] and len(rep.skipped) == 3
    # only the index was read: complete files need no request
    assert {p for p, _ in web.log[n:]} == {"/" + layout.INDEX_FILE}

    # an index whose md5 disagrees with the served bytes: one line naming the URL
    idx = json.loads((run_dir / layout.INDEX_FILE).read_text())
    idx["tracks"][0]["md5"] = "0" * 32
    (run_dir / layout.INDEX_FILE).write_text(json.dumps(idx))
    with pytest.raises(PredictdError, match=r"md5 mismatch for http://127\.0\.0\.1:\d+/tracks/"
                                            r"E003\.H3K27me3\.imputed\.bw"):
        dl.download(web.url, str(tmp_path / "e"), cell_types=["E003"], assays=["H3K27me3"])


def test_http_without_index_lists_the_model_tracks(run_dir, web, tmp_path):
    files = dl.list_outputs(web.url)
    assert [f.name for f in files] == [f"{c}.{a}" for c in CELLS for a in ASSAYS]
    assert all(f.size is None for f in files)
    dest = tmp_path / "d"
    rep = dl.download(web.url, str(dest), assays=["H3K9me3"])
    assert len(rep.fetched) == 2 and all(f.size for f in rep.fetched)
    rep = dl.download(web.url, str(dest), assays=["H3K9me3"])
    assert rep.fetched == [] and len(rep.skipped) == 2
    with pytest.raises(PredictdError, match="neither tracks.json nor model/model.json"):
        dl.list_outputs(web.url + "/tracks")


@pytest.mark.slow
def test_http_interrupted_download_resumes(run_dir, web, tmp_path, monkeypatch):
    name = "E003.H3K9me3.imputed.bw"
    # a track of a few MiB: bytes are kept in 1 MiB chunks, so a cut must come after the first
    n = 600_000
    with BigWigWriter(str(run_dir / "tracks" / name), [("chr1", n * 25)]) as w:
        w.add_block("chr1", 0, np.random.default_rng(1).gamma(2.0, size=n).astype(np.float32))
    size = (run_dir / "tracks" / name).stat().st_size
    assert size > 2 * 1024 * 1024
    layout.write_track_index(str(run_dir))
    cut = size * 2 // 3
    web.cut_after[f"/tracks/{name}"] = cut
    monkeypatch.setattr(storage, "DOWNLOAD_ATTEMPTS", 1)
    dest = tmp_path / "d"
    with pytest.raises(PredictdError, match="kept failing"):
        dl.download(web.url, str(dest), cell_types=["E003"], assays=["H3K9me3"])
    have = (dest / "tracks" / f"{name}.part").stat().st_size
    assert 0 < have <= cut and not (dest / "tracks" / name).exists()
    rep = dl.download(web.url, str(dest), cell_types=["E003"], assays=["H3K9me3"])
    assert [f.name for f in rep.fetched] == ["E003.H3K9me3"]
    assert body_gets(web, name)[-1] == f"bytes={have}-"
    assert md5(dest / "tracks" / name) == md5(run_dir / "tracks" / name)


# --------------------------------------------------------------------------- CLI
def invoke(*args):
    from predictd.cli import download as _registers  # noqa: F401
    from predictd.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_list_and_download(run_dir, tmp_path):
    r = invoke("list", run_dir, "--assay", "H3K4me3")
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.output.splitlines()]
    assert rows[0] == ["cell_type", "assay", "size", "path"]
    assert [row[:2] for row in rows[1:3]] == [["E003", "H3K4me3"], ["E017", "H3K4me3"]]
    assert rows[-1][:2] == ["2", "tracks"]
    r = invoke("list", run_dir, "--json", "-c", "E017", "-a", "H3K9me3")
    assert [json.loads(ln)["path"] for ln in r.output.splitlines()] == \
        ["tracks/E017.H3K9me3.imputed.bw"]
    r = invoke("download", run_dir, tmp_path / "d", "-c", "E003", "--dry-run")
    assert r.exit_code == 0 and r.output.count("would fetch") == 3
    assert not (tmp_path / "d").exists()
    r = invoke("download", run_dir, tmp_path / "d", "-c", "E003")
    assert r.exit_code == 0 and "3 fetched" in r.output
    r = invoke("download", run_dir, tmp_path / "d", "-c", "E404")
    assert r.exit_code == 2 and "no track at" in r.output
    # run.json's size is not indexed: the total counts the rest and says so; the group's
    # -q may follow the command
    r = invoke("list", run_dir, "--include-model", "-q")
    assert r.exit_code == 0, r.output
    assert re.search(r"^6 tracks \([\d.]+ \w+ \+ 1 file of unknown size\)",
                     r.output.splitlines()[-1])


def test_list_into_a_closed_pipe_stops_quietly(run_dir):
    """`predictd list OUT | head -1`: the reader leaves early; no error, as Unix tools do."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "predictd", "list", str(run_dir), "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    p.stdout.close()  # before predictd writes anything
    assert p.wait(timeout=120) == 141
    assert p.stderr.read().decode().strip() == ""


def test_list_says_when_a_run_has_not_finished(run_dir):
    """An interrupted run (identity claimed, impute stage not complete): its tracks are listed
    with a note that they are those written so far."""
    storage.write_text_atomic(layout.identity_file(str(run_dir)), "{}")
    r = invoke("list", run_dir)
    assert r.exit_code == 0 and "has not finished writing its tracks" in r.stderr
    for stage in ("folds", "impute"):  # a --folds run's tracks are its folds stage's
        storage.write_text_atomic(layout.marker_file(str(run_dir), stage), "{}")
        r = invoke("list", run_dir)
        assert r.exit_code == 0 and "has not finished" not in r.stderr
        os.remove(layout.marker_file(str(run_dir), stage))
