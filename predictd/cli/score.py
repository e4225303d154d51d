"""``predictd score``: any imputed bigWig against an observed one, with predictd's metrics."""

from __future__ import annotations

import json
import math

import click

from .main import cli


@cli.command(name="score")
@click.option("--truth", required=True, metavar="T.bw", help="The observed track (bigWig).")
@click.option("--pred", required=True, metavar="P.bw",
              help="The imputation to score (bigWig): predictd's, another tool's, a replicate.")
@click.option("--genome", metavar="G",
              help="hg19, hg38, mm10 or a chrom.sizes file: score the genome's chromosomes "
                   "that the truth has. Default: all of the truth's chromosomes, the assembly "
                   "recognised from their lengths.")
@click.option("--var", metavar="V.bw",
              help="Per-bin variance of the assay across cell types, in arcsinh space "
                   "(the ENCODE Imputation Challenge's weights): adds msevar.")
@click.option("--no-blacklist", is_flag=True,
              help="Score the ENCODE blacklist's bins too (the blacklist is bundled for hg19, "
                   "hg38 and mm10; other assemblies are scored whole).")
@click.option("--transform", type=click.Choice(["arcsinh", "none"]), default="arcsinh",
              show_default=True,
              help="Space the metrics are computed in: arcsinh of the files' values, as the "
                   "pipeline scores; 'none' for files already in that space.")
@click.option("--bin-size", type=click.IntRange(1, 100_000), default=25, show_default=True,
              help="Bin width in bp; each bin is the mean of its bases (no data counts as 0).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object keyed by metric name (mse, gwcorr, ...).")
def score_command(truth, pred, genome, var, no_blacklist, transform, bin_size, as_json):
    """Score the bigWig P.bw against the observed T.bw with predictd's metrics (docs/design.md
    §8), computed in arcsinh space like the pipeline's held-out scores.

    \b
    Metrics: mse, gwcorr, gwspear, mse1obs, mse1imp, match1, catch1obs, catch1imp, aucobs1,
    aucimp1; msevar with --var; mseprom, msegene, mseenh on hg19 and hg38 (bundled
    annotations). On hg19, hg38 and mm10 the ENCODE blacklist's bins are left out unless
    --no-blacklist.

    \b
    Examples:
      predictd score --truth E116.H3K4me3.bw --pred out/tracks/E116.H3K4me3.imputed.bw
      predictd score --truth rep1.bw --pred rep2.bw --genome hg38 --json
    """
    from ..evaluate import score_bigwigs

    scores = score_bigwigs(truth, pred, genome=genome, var=var, blacklist=not no_blacklist,
                           transform=transform, bin_size=bin_size)
    if as_json:
        # NaN is not JSON: an undefined metric (constant track) is null
        click.echo(json.dumps({k: (None if math.isnan(v) else v) for k, v in scores.items()}))
        return
    width = max(map(len, scores))
    for k, v in scores.items():
        click.echo(f"{k:<{width}}  {v:.6g}")
