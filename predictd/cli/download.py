"""``predictd list`` and ``predictd download``: see and fetch what a run produced."""

from __future__ import annotations

import json
import sys

import click

from .. import download as dl
from .main import cli

_filters = [
    click.option("--cell-type", "-c", "cell_types", multiple=True, metavar="C",
                 help="Only this cell type (repeatable; comma-separated or shell patterns "
                      "like 'E0*' work too)."),
    click.option("--assay", "-a", "assays", multiple=True, metavar="A",
                 help="Only this assay (repeatable; comma-separated or patterns)."),
]


def filters(f):
    for opt in reversed(_filters):
        f = opt(f)
    return f


@cli.command(name="list")
@click.argument("source", metavar="SOURCE")
@filters
@click.option("--include-model", is_flag=True, help="Also list the model files and run.json.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a "
                                                     "table.")
def list_command(source, cell_types, assays, include_model, as_json):
    """Show the imputed tracks of a run at SOURCE (directory, s3://, gs://, az:// or http(s):// prefix).

    \b
    Examples:
      predictd list s3://my-bucket/results/roadmap
      predictd list https://my-bucket.s3.amazonaws.com/results/roadmap --assay H3K27ac
    """
    files = dl.find_outputs(source, cell_types, assays, include_model)
    tracks = [f for f in files if f.is_track]
    if dl.unfinished(source):
        click.echo(f"predictd: note: the run at {source} has not finished writing its tracks "
                   "(its impute stage is incomplete): these are the ones written so far",
                   err=True)
    if as_json:
        for f in files:
            click.echo(json.dumps(f.to_json(), sort_keys=True))
        return
    wc = max(len("cell_type"), *(len(f.cell_type) for f in tracks))
    wa = max(len("assay"), *(len(f.assay) for f in tracks))
    click.echo(f"{'cell_type':<{wc}}  {'assay':<{wa}}  {'size':>10}  path")
    for f in tracks:
        click.echo(f"{f.cell_type:<{wc}}  {f.assay:<{wa}}  {dl.format_size(f.size):>10}  "
                   f"{f.path}")
    for f in files:
        if not f.is_track:
            click.echo(f"{'':<{wc}}  {'':<{wa}}  {dl.format_size(f.size):>10}  {f.path}")
    known = [f.size for f in files if f.size is not None]
    # run.json's size is not indexed (it is rewritten after every stage)
    total = dl.format_size(sum(known)) + (
        f" + {_n(len(files) - len(known), 'file')} of unknown size" if len(known) < len(files)
        else "")
    cells = sorted({f.cell_type for f in tracks})
    assay_names = sorted({f.assay for f in tracks})
    n_sd = sum(f.kind == "uncertainty" for f in tracks)
    counted = _n(len(tracks) - n_sd, "track") + (f" + {n_sd} uncertainty" if n_sd else "")
    click.echo(f"{counted} ({total}): {_n(len(cells), 'cell type')}, "
               f"{_n(len(assay_names), 'assay')}")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@cli.command(name="download")
@click.argument("source", metavar="SOURCE")
@click.argument("dest", metavar="DEST", type=click.Path(file_okay=False))
@filters
@click.option("--include-model", is_flag=True,
              help="Also fetch model/ (factors.npz, model.json, history.json) and run.json.")
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be fetched.")
def download_command(source, dest, cell_types, assays, include_model, dry_run):
    """Fetch imputed tracks from SOURCE (directory, s3://, gs://, az:// or http(s):// prefix) into DEST.

    DEST mirrors the run's layout (DEST/tracks/{cell_type}.{assay}.imputed.bw). Files already
    complete in DEST are skipped; an interrupted download resumes where it stopped when the
    same command is run again.

    \b
    Examples:
      predictd download s3://my-bucket/results/roadmap ./roadmap --assay H3K27ac
      predictd download s3://my-bucket/results/roadmap ./roadmap -c E003 -c E116 --dry-run
    """
    report = dl.download(source, dest, cell_types, assays, include_model=include_model,
                         dry_run=dry_run, progress=sys.stderr.isatty())
    if dry_run:
        for f in report.fetched:
            click.echo(f"would fetch  {dl.format_size(f.size):>10}  {f.path}")
        for f in report.skipped:
            click.echo(f"complete     {dl.format_size(f.size):>10}  {f.path}")
        click.echo(f"{len(report.fetched)} to fetch, {len(report.skipped)} already complete "
                   f"in {dest}")
        return
    click.echo(f"predictd: {len(report.fetched)} fetched "
               f"({dl.format_size(report.fetched_bytes)}), {len(report.skipped)} already "
               f"complete, in {dest}")
