"""``predictd run`` and the stage commands ``ingest``, ``train``, ``impute``, ``evaluate``."""

from __future__ import annotations


import click

from .. import pipeline
from . import options
from .main import cli


def _open(manifest, genome, out, config_path, sets, holdout, master, no_spark, public,
          selection=None, uncertainty=False):
    cfg = options.load_config(config_path, sets, uncertainty)
    run = pipeline.open_run(manifest, genome, out, cfg, holdout, public=public,
                            progress=True, **(selection or {}))
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
    ev = results.get("evaluate") or results.get("folds") or {}
    if "ensemble_mse_reduction" in ev:
        click.echo(f"  mean over tracks: model mse {ev['model_mean_mse']:.4f}, ensemble mse "
                   f"{ev['ensemble_mean_mse']:.4f} ({100 * ev['ensemble_mse_reduction']:.1f} % "
                   f"lower), average mse {ev.get('average_mean_mse', float('nan')):.4f}")
    for row in ev.get("metrics", []):
        click.echo(f"  {row['cell_type']}.{row['assay']:<12} {row['method']:<8} "
                   f"mse {row['mse']:.4f}  gwcorr {row['gwcorr']:.3f}")


def _stage_command(name, stages, doc, with_folds=False, with_selection=True):
    def selecting(f):
        # the selection narrows the write stage: no use to the commands that stop before it
        return options.selection_options(f) if with_selection else f

    @cli.command(name=name, help=doc)
    @options.pipeline_options
    @selecting
    @click.option("--folds", type=int, default=0, metavar="T",
                  help="Cross-validate: T balanced test folds of tracks, `ensemble_size` models "
                       "per fold, tracks imputed by the models that did not see them, and a "
                       "report scoring every observed track (model, ensemble, average).",
                  hidden=not with_folds)
    @options.uncertainty
    def command(manifest, genome, out, config_path, sets, holdout, master, no_spark, overwrite,
                public, folds, uncertainty, **selection):
        if folds and holdout:
            raise click.BadParameter("use either --folds or --holdout", param_hint="--folds")
        if name == "evaluate" and not holdout:
            raise click.UsageError("evaluate scores the --holdout tracks: give at least one "
                                   "(or cross-validate every track with `predictd run --folds`)")
        run = _open(manifest, genome, out, config_path, sets, holdout, master, no_spark, public,
                    selection, uncertainty)
        results = pipeline.run_all(run, overwrite=overwrite, stages=stages, folds=folds)
        _summary(run, results)
    return command


_stage_command("run", pipeline.STAGES, with_folds=True, doc="""Run the whole pipeline: ingest → train → impute →
evaluate.

\b
Writes OUT/tracks/{cell_type}.{assay}.imputed.bw for every (cell type, assay) pair (or those
--targets, --cell-type and --assay choose; --regions writes only those loci), the model
(OUT/model), run.json, and with --holdout a report (OUT/report/index.html). Re-running the same
command resumes: completed stages, blocks and tracks are skipped.

\b
Example:
  predictd run -m tracks.tsv -g hg38 -o out/ --holdout E116:H3K4me3 --set latent_factors=30
  predictd run -m tracks.tsv -g hg38 -o out/ --folds 5        # cross-validated ensemble
  predictd run -m tracks.tsv -g hg38 -o out/ --cell-type 'E11*' --assay H3K27me3
  predictd run -m tracks.tsv -g hg38 -o out/ --uncertainty   # + *.uncertainty.bw (sd per bin)
""")
_stage_command("ingest", ("ingest",), with_selection=False, doc="""Bin the manifest's bigWigs
into the tensor (OUT/tensor, Parquet + header.json).""")
_stage_command("train", ("ingest", "train"), with_selection=False, doc="""Fit the model on a
training subset of bins (ingests first if needed).""")
_stage_command("impute", ("ingest", "train", "impute"), """Write every imputed track (runs the
earlier stages first if needed).""")
_stage_command("evaluate", pipeline.STAGES, """Score the --holdout tracks against the average
baseline and write OUT/report.""")
