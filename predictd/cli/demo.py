"""``predictd demo`` — the whole pipeline on bundled real Roadmap data."""

from __future__ import annotations

import os

import click

from .. import demo as demo_mod
from .. import layout, pipeline, storage
from . import options
from .main import cli


@cli.command(name="demo")
@options.out
@click.option("--holdout", default=demo_mod.DEFAULT_HOLDOUT, show_default=True,
              metavar="CELL:ASSAY", help="The track to leave out and score.")
@options.set_opt
@options.master
@options.no_spark
@options.overwrite
@click.option("--pilot-dir", metavar="DIR", help="Use the full shared Roadmap pilot arrays "
              "(../shared/data/roadmap_pilot: 1.13 M bins) instead of the bundled slice.")
@click.option("--inputs-only", is_flag=True, help="Only write the bigWigs, manifest and "
              "chrom.sizes to OUT/inputs (e.g. for `predictd run --folds`).")
def demo_command(out, holdout, sets, master, no_spark, overwrite, pilot_dir, inputs_only):
    """Run ingest → train → impute → evaluate on a bundled slice of real Roadmap data.

    \b
    4 cell types (H1, IMR-90, GM12878, HeLa-S3) × 5 histone marks over 6.25 Mbp of the ENCODE
    pilot regions. One track is held out; the demo prints how its imputation scores against
    the average of the other cell types, and where the 20 imputed bigWigs are.
    """
    inputs = os.path.join(out, "inputs") if not storage.is_remote(out) else None
    if inputs is None:
        raise click.BadParameter("the demo writes its inputs locally; give a local --out",
                                 param_hint="--out")
    manifest, sizes = demo_mod.write_inputs(inputs, pilot_dir=pilot_dir)
    if inputs_only:
        click.echo(f"wrote {manifest} and {sizes}")
        return
    cfg = demo_mod.demo_config(**({"block_bins": 262_144, "training_fraction": 0.01}
                                  if pilot_dir else {}))
    if sets:
        cfg = cfg.replace(**options.load_config(None, sets).to_dict() | {
            k: v for k, v in cfg.to_dict().items() if not any(s.startswith(k + "=")
                                                              for s in sets)})
    run = pipeline.open_run(manifest, sizes, out, cfg, [holdout])
    if not no_spark:
        from ..spark import get_context
        run.sc = get_context(master)
    results = pipeline.run_all(run, overwrite=overwrite)
    click.echo("")
    click.echo(f"Imputed tracks ({results['impute'].get('tracks', 20)}): "
               f"{layout.track_file(out, '<cell>.<mark>')}")
    click.echo(f"Report: {layout.report_page(out)}")
    rows = {r["method"]: r for r in results["evaluate"].get("metrics", [])}
    if rows:
        m, b = rows["model"], rows.get("average")
        click.echo(f"Held-out {holdout}:  model   MSE {m['mse']:.4f}  Pearson {m['gwcorr']:.3f}")
        if b:
            click.echo(f"{'':>{10 + len(holdout)}}average MSE {b['mse']:.4f}  Pearson "
                       f"{b['gwcorr']:.3f}  (mean of the other cell types)")
    for stage, info in results.items():
        click.echo(f"  {stage:<9} {info.get('seconds', 0):6.1f} s"
                   + ("  (skipped: already complete)" if info.get("skipped") else ""))
