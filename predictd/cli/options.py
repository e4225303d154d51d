"""Options shared by the pipeline commands."""

from __future__ import annotations

import click

from .. import config as config_mod

manifest = click.option("--manifest", "-m", required=True, metavar="FILE",
                        help="TSV with columns cell_type, assay, uri (local path, file://, "
                             "http(s)://, s3://, gs://, az://); optional md5, accession. One row per track.")
genome = click.option("--genome", "-g", required=True, metavar="G",
                      help="hg19, hg38, mm10, or a chrom.sizes file.")
out = click.option("--out", "-o", required=True, metavar="OUT",
                   help="Output directory, or s3://, gs:// or az:// (abfss://, wasbs://) prefix "
                        "(tracks/, model/, report/, run.json).")
config = click.option("--config", "-c", "config_path", metavar="FILE.toml",
                      help="TOML config; `predictd config --show` lists every key.")
holdout = click.option("--holdout", multiple=True, metavar="CELL:ASSAY",
                       help="Leave this observed track out of training and score its "
                            "imputation (repeatable).")
master = click.option("--master", metavar="URL",
                      help="Spark master (default local[*]; e.g. spark://host:7077). Ignored "
                           "under spark-submit.")
no_spark = click.option("--no-spark", is_flag=True,
                        help="Run every stage in this process without Spark (small data, "
                             "notebooks, debugging).")
overwrite = click.option("--overwrite", is_flag=True,
                         help="Replace a different run found at --out (default: refuse).")
public = click.option("--public", is_flag=True,
                      help="Make uploaded S3 and GCS objects public-read; on Azure, open the "
                           "container to anonymous blob reads (default private).")
set_opt = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                       help="Override one config key (TOML value syntax), e.g. --set "
                            "stack_ridge=0.01 (repeatable; `predictd config --show` lists "
                            "them).")


uncertainty = click.option(
    "--uncertainty", is_flag=True,
    help="Also write OUT/tracks/{cell_type}.{assay}.uncertainty.bw: a standard deviation per "
         "bin, in the input's units, from the stacked regression's predictive variance, "
         "calibrated on the training cell types so that imputed ± 1.645 sd holds about 90 % "
         "of the bins (docs/accuracy.md). Costs two more passes over the stacking sample in "
         "training, and reads each block's every track when writing.")


targets = click.option("--targets", multiple=True, metavar="CELL:ASSAY",
                       help="Write only this track (repeatable; with --cell-type/--assay: "
                            "their union). Default: every (cell type, assay) pair.")
cell_type = click.option("--cell-type", "cell_types", multiple=True, metavar="C",
                         help="Write only this cell type's tracks (repeatable; comma-separated "
                              "or shell patterns such as 'E0*').")
assay = click.option("--assay", "assays", multiple=True, metavar="A",
                     help="Write only this assay's tracks (repeatable; comma-separated or "
                          "patterns).")
regions = click.option("--regions", metavar="BED",
                       help="Compute and write only these regions (the tracks have no data "
                            "elsewhere).")


def selection_options(f):
    for opt in reversed([targets, cell_type, assay, regions]):
        f = opt(f)
    return f


def pipeline_options(f):
    for opt in reversed([manifest, genome, out, config, set_opt, holdout, master, no_spark,
                         overwrite, public]):
        f = opt(f)
    return f


def load_config(path, sets, uncertainty: bool = False):
    """The config of a file and --set values; ``--uncertainty`` sets ``uncertainty``."""
    values = _set_values(sets)
    if uncertainty:
        values["uncertainty"] = True
    return config_mod.load(path, values)


def config_overrides(path, sets) -> dict:
    """Only the keys the config file and --set give (validated), for commands whose other
    keys come from elsewhere (``extend``: the reference's config)."""
    data = config_mod.read_toml(path) if path else {}
    data.update(_set_values(sets))
    config_mod.from_dict(data, source=f"config file {path}" if path else "config")
    return data


def _set_values(sets) -> dict:
    overrides = {}
    for s in sets or ():
        if "=" not in s:
            raise click.BadParameter(f"{s!r}: expected KEY=VALUE", param_hint="--set")
        k, v = s.split("=", 1)
        try:
            overrides[k.strip()] = config_mod.tomllib.loads(f"x = {v}")["x"]
        except config_mod.tomllib.TOMLDecodeError:
            overrides[k.strip()] = v  # a bare string
    return overrides
