"""predictd.hub: UCSC track hub files, checked for what UCSC's hubCheck rejects.

hubCheck itself (a UCSC binary) cannot be installed here — it is neither on PyPI nor in Debian —
so :func:`predictd.hub.check_hub` stands in for it, and these tests also show that it catches
each kind of mistake it claims to.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from predictd import hub, layout, storage
from predictd.errors import PredictdError


@pytest.fixture
def run_dir(tmp_path, make_run):
    return make_run(tmp_path / "out")


def stanzas(text):
    return hub.parse_ra(text)


def test_hubcheck_is_not_installed():
    # If it ever is, these tests should run it too; until then check_hub is the stand-in.
    assert shutil.which("hubCheck") is None


def test_write_hub_composite_relative_urls(run_dir):
    written = hub.write_hub(str(run_dir))
    assert [w.rsplit("/", 1)[1] for w in written] == ["tracks.json", "hub.txt", "genomes.txt",
                                                      "trackDb.txt"]
    files = {n: (run_dir / n).read_text() for n in layout.HUB_FILES}
    hub.check_hub(files)
    h = stanzas(files["hub.txt"])[0]
    assert h["hub"] == "predictd_out" and h["genomesFile"] == "genomes.txt" and h["email"]
    assert stanzas(files["genomes.txt"]) == [{"__line__": "1", "genome": "hg38",
                                              "trackDb": "trackDb.txt"}]
    tdb = stanzas(files["trackDb.txt"])
    comp, subs = tdb[0], tdb[1:]
    assert comp["compositeTrack"] == "on" and comp["dimensions"] == "dimX=assay dimY=cell"
    assert comp["subGroup1"] == "cell Cell_type E003=E003 E017=E017"
    assert len(subs) == 6
    for st in subs:
        cell, assay = st["subGroups"].replace("cell=", "").replace("assay=", "").split()
        assert st["bigDataUrl"] == f"tracks/{cell}.{assay}.imputed.bw"
        assert (run_dir / st["bigDataUrl"]).exists()  # relative to the hub: resolvable
        assert st["parent"] == "predictd_imputed on" and st["type"] == "bigWig"
    colors = {st["subGroups"].split("assay=")[1]: st["color"] for st in subs}
    assert colors["H3K4me3"] == "255,0,0" and len(set(colors.values())) == 3


def test_url_base_flat_and_observed(run_dir, tmp_path):
    (run_dir / "report").mkdir()
    (run_dir / "report" / "index.html").write_text("<html></html>")
    manifest = tmp_path / "m.tsv"
    manifest.write_text("cell_type\tassay\turi\n"
                        "E003\tH3K4me3\thttps://www.encodeproject.org/files/X/@@download/X.bw\n"
                        "GM12878+IFN\tH2A.Z\ts3://my-bucket/in/a b.bw\n")
    hub.write_hub(str(run_dir), genome="hg38", url_base="https://data.example.org/runs/r1/",
                  observed_manifest=str(manifest), composite=False, email="me@lab.org")
    files = {n: (run_dir / n).read_text() for n in layout.HUB_FILES}
    hub.check_hub(files)
    tdb = stanzas(files["trackDb.txt"])
    assert not any("compositeTrack" in st or "parent" in st for st in tdb)
    imputed = [st for st in tdb if st["track"].endswith("_imp")]
    observed = [st for st in tdb if st["track"].endswith("_obs")]
    assert len(imputed) == 6 and len(observed) == 2
    assert imputed[0]["bigDataUrl"] == \
        "https://data.example.org/runs/r1/tracks/E003.H3K27me3.imputed.bw"
    assert observed[0]["bigDataUrl"].startswith("https://www.encodeproject.org/")
    assert observed[1]["track"] == "GM12878_IFN_H2A_Z_obs"
    assert observed[1]["bigDataUrl"] == "https://my-bucket.s3.amazonaws.com/in/a%20b.bw"
    assert observed[1]["shortLabel"] == "GM12878+IFN H2A.Z"  # 17 characters: kept whole
    assert all(st["visibility"] == "hide" for st in observed)
    assert stanzas(files["hub.txt"])[0]["descriptionUrl"].startswith("https://data.example.org")


def test_observed_local_file_is_refused(run_dir, tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("cell_type\tassay\turi\nE003\tH3K4me3\tE003.bw\n")
    with pytest.raises(PredictdError, match=r"m\.tsv, row 2 \(E003\.H3K4me3\).*local file"):
        hub.write_hub(str(run_dir), observed_manifest=str(manifest))
    assert not (run_dir / "hub.txt").exists()


def test_genome_must_be_an_assembly_and_match_the_run(run_dir):
    with pytest.raises(PredictdError, match="the run at .* is on hg38"):
        hub.write_hub(str(run_dir), genome="mm10")
    (run_dir / "run.json").write_text(json.dumps({"genome": {"name": "/data/x.chrom.sizes"}}))
    with pytest.raises(PredictdError, match="give --genome"):
        hub.write_hub(str(run_dir))
    hub.write_hub(str(run_dir), genome="hg19")
    assert "genome hg19" in (run_dir / "genomes.txt").read_text()


def test_a_bundled_assembly_without_the_runs_chromosomes_warns(run_dir, caplog):
    """A run on a custom chrom.sizes is drawn on the assembly it belongs to: checked against
    the bundled ones, from the run's tensor header (a warning: the hub is still written)."""
    from predictd import layout, tensor
    from predictd.genome import load_genome

    def on(chroms):
        tensor.write_header(layout.tensor_dir(str(run_dir)), tensor.TensorHeader(
            experiments=["E003.H3K4me3"], cell_types=["E003"], assays=["H3K4me3"],
            genome={"name": "my.sizes", "chroms": chroms}, bin_size=25, block_bins=1024,
            transform="arcsinh"))
    (run_dir / "run.json").write_text(json.dumps({"genome": {"name": "/data/my.sizes"}}))
    on([["pilot", 6_250_000]])
    hub.write_hub(str(run_dir), genome="hg19")
    assert "the run's chromosome pilot (6,250,000 bp) is not hg19's; the browser" in caplog.text
    assert "genome hg19" in (run_dir / "genomes.txt").read_text()
    on([["chr21", 48_129_895]])  # hg19's length, not hg38's
    hub.write_hub(str(run_dir), genome="hg38")
    assert "chr21 (48,129,895 bp) is not hg38's (46,709,983 bp)" in caplog.text
    assert load_genome("hg19").sizes["chr21"] == 48_129_895
    caplog.clear()
    hub.write_hub(str(run_dir), genome="hg19")
    assert "is not hg19's" not in caplog.text


def test_many_tracks_only_some_on_and_distinct_tags():
    names = ["a.b", "a_b", "a+b"]
    tracks = [hub.HubTrack(c, f"M{k}", f"tracks/{c}.M{k}.imputed.bw")
              for c in names for k in range(5)]
    files = hub.render_hub("big", "hg38", tracks)
    hub.check_hub(files)
    tdb = stanzas(files["trackDb.txt"])
    assert sum(st.get("parent", "").endswith(" on") for st in tdb) == hub.DEFAULT_ON
    tags = tdb[0]["subGroup1"].split()[2:]
    assert tags == ["a_b=a+b", "a_b_2=a.b", "a_b_3=a_b"]
    assert len({st["track"] for st in tdb}) == len(tdb)
    long = hub.render_hub("x", "hg38", [hub.HubTrack("GM12878+IFN", "H3K27me3", "t.bw")])
    assert "shortLabel GM12878+IFN H3K2~\n" in long["trackDb.txt"]


GOOD = hub.render_hub("t", "hg38", [hub.HubTrack("E003", "H3K4me3", "tracks/a.bw"),
                                     hub.HubTrack("E017", "H3K4me3", "tracks/b.bw")])


@pytest.mark.parametrize("fname, old, new, message", [
    ("hub.txt", "email none@example.org\n", "", "missing 'email'"),
    ("hub.txt", "genomesFile genomes.txt", "genomesFile gen.txt", "genomesFile gen.txt is missing"),
    ("genomes.txt", "trackDb trackDb.txt", "trackDb hg38/trackDb.txt", "is missing"),
    ("trackDb.txt", "track E003_H3K4me3_imp", "track 3E003", "must start with a letter"),
    ("trackDb.txt", "track E017_H3K4me3_imp", "track E003_H3K4me3_imp", "defined twice"),
    ("trackDb.txt", "    bigDataUrl tracks/a.bw\n", "", "has no 'bigDataUrl'"),
    ("trackDb.txt", "parent predictd_imputed on\n    subGroups cell=E003",
     "parent predictd_other on\n    subGroups cell=E003", "not an earlier composite"),
    ("trackDb.txt", "subGroups cell=E003 assay=H3K4me3", "subGroups cell=E003",
     "must give assay"),
    ("trackDb.txt", "subGroups cell=E003", "subGroups cell=E116", "must give cell"),
    ("trackDb.txt", "dimensions dimX=assay", "dimensions dimX=mark", "undefined subgroup"),
    ("trackDb.txt", "shortLabel E003 H3K4me3", "shortLabel E003 H3K4me3 imputed signal",
     "shortLabel longer"),
    ("trackDb.txt", "    type bigWig\n    bigDataUrl tracks/a.bw",
     "    bigDataUrl tracks/a.bw", "has no 'type'"),
    ("trackDb.txt", "    color", "    color 1,2,3\n    color", "given twice"),
])
def test_check_hub_catches_each_mistake(fname, old, new, message):
    assert old in GOOD[fname]
    files = {**GOOD, fname: GOOD[fname].replace(old, new, 1)}
    with pytest.raises(PredictdError, match=message):
        hub.check_hub(files)


@pytest.mark.slow
@pytest.mark.cloud
def test_cli_hub_on_s3_public(s3_endpoint, make_run, tmp_path):
    run_dir = make_run(tmp_path / "out")
    storage.s3_client().create_bucket(Bucket="hubs")
    for rel, _ in storage.list_prefix(str(run_dir)):
        storage.upload_file(run_dir / rel, f"s3://hubs/r1/{rel}")
    from predictd.cli import hub as _registers  # noqa: F401
    from predictd.cli.main import cli

    # the tracks were uploaded private: the browser would load the hub and none of its tracks
    r = CliRunner().invoke(cli, ["hub", "s3://hubs/r1", "--public"])
    assert r.exit_code == 2, r.output
    first = hub.imputed_tracks(str(run_dir))[0].url
    assert (f"the hub is written, but the genome browser cannot read "
            f"{s3_endpoint}/hubs/r1/{first} (HTTP 403): the run's tracks are private: run the "
            "same `predictd run` command again with --public") in r.output
    for rel, _ in storage.list_prefix("s3://hubs/r1/tracks"):
        storage.make_public(f"s3://hubs/r1/tracks/{rel}")
    r = CliRunner().invoke(cli, ["hub", "s3://hubs/r1", "--public"])
    assert r.exit_code == 0, r.output
    assert f"{s3_endpoint}/hubs/r1/hub.txt" in r.output
    for name in (*layout.HUB_FILES, "tracks.json"):
        acl = storage.s3_client().get_object_acl(Bucket="hubs", Key=f"r1/{name}")
        assert any(g["Grantee"].get("URI", "").endswith("AllUsers") for g in acl["Grants"])
    files = {n: storage.read_text(f"s3://hubs/r1/{n}") for n in layout.HUB_FILES}
    hub.check_hub(files)
    index = json.loads(storage.read_text("s3://hubs/r1/tracks.json"))
    assert len(index["tracks"]) == 6 and all(t["md5"] is None for t in index["tracks"])
    r = CliRunner().invoke(cli, ["hub", "s3://hubs/none"])
    assert r.exit_code == 2 and "no predictd output at s3://hubs/none" in r.output


def test_anonymous_read_tells_a_refusal_from_a_server_it_cannot_ask():
    from predictd.localcluster import free_port

    port = free_port()  # nobody listens there
    assert storage.anonymous_read(f"http://127.0.0.1:{port}/hub.txt") == (None,
                                                                          "ConnectionError")


def test_anonymous_read_reads_the_status_the_browser_would_get(tmp_path, monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    # credentials for the host in ~/.netrc, which requests would otherwise send
    (tmp_path / "netrc").write_text("machine 127.0.0.1 login user password secret\n")
    (tmp_path / "netrc").chmod(0o600)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # /403, /503, /206: that status; no credentials reach it
            assert "Authorization" not in self.headers and self.headers["Range"] == "bytes=0-0"
            self.send_response(int(self.path[1:]))
            self.send_header("Content-Length", "1")
            self.end_headers()
            self.wfile.write(b"x")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert storage.anonymous_read(f"{base}/206") == (True, "")
        assert storage.anonymous_read(f"{base}/403") == (False, "HTTP 403")
        assert storage.anonymous_read(f"{base}/404") == (False, "HTTP 404")
        # a server error says nothing about who may read: not a refusal
        assert storage.anonymous_read(f"{base}/503") == (None, "HTTP 503")
    finally:
        server.shutdown()
