"""``predictd run`` and the stage commands ``ingest``, ``train``, ``impute``, ``evaluate``."""

from __future__ import annotations

import sys

import click

from .. import pipeline
from . import options
from .main import cli


def _open(manifest, genome, out, config_path, sets, holdout, master, no_spark, public):
    cfg = options.load_config(config_path, sets)
    run = pipeline.open_run(manifest, genome, out, cfg, holdout, public=public,
                            progress=sys.stderr.isatty() or True)
    if not no_spark:
        from ..spark import get_context
        run.sc = get_context(master)
    return run


def _summary(run, results):
    click.echo(f"predictd: outputs in {run.out}")
    for stage, info in results.items():
        if info.get("skipped"):
            click.echo(f"  {stage:<9} skipped (already complete)")
        else:
            click.echo(f"  {stage:<9} {info.get('seconds', 0):8.1f} s")
    ev = results.get("evaluate", {})
    for row in ev.get("metrics", []):
        click.echo(f"  {row['cell_type']}.{row['assay']:<12} {row['method']:<8} "
                   f"mse {row['mse']:.4f}  gwcorr {row['gwcorr']:.3f}")


def _stage_command(name, stages, doc):
    @cli.command(name=name, help=doc)
    @options.pipeline_options
    def command(manifest, genome, out, config_path, sets, holdout, master, no_spark, overwrite,
                public):
        run = _open(manifest, genome, out, config_path, sets, holdout, master, no_spark, public)
        results = pipeline.run_all(run, overwrite=overwrite, stages=stages)
        _summary(run, results)
    return command


_stage_command("run", pipeline.STAGES, """Run the whole pipeline: ingest → train → impute →
evaluate.

\b
Writes OUT/tracks/{cell_type}.{assay}.imputed.bw for every (cell type, assay) pair, the model
(OUT/model), run.json, and with --holdout a report (OUT/report/index.html). Re-running the same
command resumes: completed stages, blocks and tracks are skipped.

\b
Example:
  predictd run -m tracks.tsv -g hg38 -o out/ --holdout E116:H3K4me3 --set latent_factors=30
""")
_stage_command("ingest", ("ingest",), """Bin the manifest's bigWigs into the tensor (OUT/tensor,
Parquet + header.json).""")
_stage_command("train", ("ingest", "train"), """Fit the model on a training subset of bins
(ingests first if needed).""")
_stage_command("impute", ("ingest", "train", "impute"), """Write every imputed track (runs the
earlier stages first if needed).""")
_stage_command("evaluate", pipeline.STAGES, """Score the --holdout tracks against the average
baseline and write OUT/report.""")
