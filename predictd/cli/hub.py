"""``predictd hub``: a UCSC track hub for a run's tracks."""

from __future__ import annotations

import click

from .. import hub as hub_mod
from .main import cli


@cli.command(name="hub")
@click.argument("out", metavar="OUT")
@click.option("--genome", "-g", metavar="G",
              help="UCSC assembly name (hg19, hg38, mm10, ...); default: the run's genome.")
@click.option("--url-base", metavar="URL",
              help="Public http(s) URL of OUT; track URLs become absolute under it (default: "
                   "relative to the hub).")
@click.option("--observed", "observed_manifest", metavar="MANIFEST",
              help="Also show the observed tracks of this manifest (http(s)://, s3://, gs:// or az:// URIs).")
@click.option("--email", default=hub_mod.DEFAULT_EMAIL, show_default=True,
              help="Contact address shown by the browser (the hub format requires one).")
@click.option("--flat", is_flag=True,
              help="One top-level track per file instead of a cell type × assay composite.")
@click.option("--name", metavar="NAME", help="Label of the hub (default: OUT's last part).")
@click.option("--public", is_flag=True,
              help="Make the hub files readable anonymously (S3 and GCS: per object; Azure: the "
                   "container's blobs). The tracks must be readable too: run the pipeline "
                   "with --public, or use a bucket policy. On an object store the hub and a "
                   "track are then fetched as the browser fetches them, and a refusal is an "
                   "error.")
def hub_command(out, genome, url_base, observed_manifest, email, flat, name, public):
    """Write a UCSC track hub (hub.txt, genomes.txt, trackDb.txt) for the run at OUT.

    OUT is the run's local directory, s3://, gs:// or az:// prefix; the hub files are written there, next to
    tracks/. Serve OUT over HTTP(S) and paste the URL of OUT/hub.txt into the UCSC browser
    (My Data → Track Hubs → Connected Hubs).

    \b
    Example:
      predictd hub s3://my-bucket/results/roadmap --genome hg19 --public
    """
    written = hub_mod.write_hub(out, genome=genome, url_base=url_base,
                                observed_manifest=observed_manifest, email=email,
                                composite=not flat, public=public, name=name)
    for uri in written:
        click.echo(f"wrote {uri}")
    url = hub_mod.hub_url(out, url_base)
    if url:
        click.echo(f"Hub URL for the genome browser: {url}")
    else:
        click.echo("Serve OUT over HTTP(S) (or pass --url-base) and give the browser the URL of "
                   "OUT/hub.txt")
