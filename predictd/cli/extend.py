"""``predictd extend``: impute new cell types against a finished run (the reference)."""

from __future__ import annotations

import click

from . import options
from .main import cli


@cli.command(name="extend")
@click.option("--reference", "-r", required=True, metavar="REF",
              help="OUT of a finished `predictd run` (a directory, or s3://, gs://, az:// ...); only read.")
@click.option("--manifest", "-m", required=True, metavar="NEW.tsv",
              help="Tracks of the new cell types (cell_type, assay, uri), on the reference's "
                   "assays; cell types not in the reference.")
@options.out
@click.option("--assay", "assays", multiple=True, metavar="A",
              help="Impute only this assay (repeatable; default every assay of the reference "
                   "the new cell type has no track of).")
@click.option("--regions", metavar="BED",
              help="Compute and write only these regions (the tracks have no data elsewhere).")
@options.config
@options.set_opt
@options.holdout
@options.master
@options.no_spark
@options.overwrite
@options.public
@options.uncertainty
def extend(reference, manifest, out, assays, regions, config_path, sets, holdout, master,
           no_spark, overwrite, public, uncertainty):
    """Impute new cell types against a trained reference, without retraining it.

    \b
    The new cell types' factors and transfer regression are fitted against the reference's
    frozen model; REF is never written. Writes OUT/tracks/{cell_type}.{assay}.imputed.bw for
    every reference assay the new cell type lacks (or the --assay ones), OUT/model (the new
    cell types' factors), run.json, and with --holdout a report. Re-running resumes.

    \b
    Example:
      predictd extend --reference s3://bucket/roadmap --manifest my_sample.tsv --out my_out/
      predictd extend -r ref/ -m new.tsv -o out/ --assay H3K27me3 --regions loci.bed
      predictd extend -r ref/ -m new.tsv -o out/ --uncertainty  # + *.uncertainty.bw
    """
    from .. import extend as ext
    ref = ext.open_reference(reference)
    overrides = options.config_overrides(config_path, sets)
    # asked for here, not inherited from the reference's config
    overrides["uncertainty"] = uncertainty or bool(overrides.get("uncertainty", False))
    cfg = ref.config(overrides)
    run = ext.open_extension(ref, manifest, out, cfg, holdout=holdout, assays=assays,
                             regions=regions, public=public)
    if not no_spark:
        from ..spark import get_context
        run.sc = get_context(master)
    results = ext.extend_all(run, overwrite=overwrite)
    click.echo(f"predictd: outputs in {run.out} (reference {reference})")
    for stage, info in results.items():
        state = "skipped (already complete)" if info.get("skipped") else \
            f"{info.get('seconds', 0):8.1f} s"
        click.echo(f"  {stage:<9} {state}")
    for row in results.get("evaluate", {}).get("metrics", []):
        click.echo(f"  {row['cell_type']}.{row['assay']:<12} {row['method']:<8} "
                   f"mse {row['mse']:.4f}  gwcorr {row['gwcorr']:.3f}")
