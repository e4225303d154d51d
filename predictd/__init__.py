"""predictd: impute missing epigenomic experiments with a PARAFAC model (PREDICTD), on Spark.

The library is usable without Spark: the numpy cores live in :mod:`predictd.model`,
:mod:`predictd.solvers` and :mod:`predictd.metrics`; :mod:`predictd.spark` is the only place a
SparkSession is created.
"""

__version__ = "0.1.0"


def open_reference(uri: str):
    """Open the output of a finished ``predictd run`` (a local path or s3://…) read-only, to
    impute new samples against it: ``open_reference(uri).extend("my_sample.tsv")`` (see
    :class:`predictd.extend.Reference`)."""
    from .extend import open_reference as _open
    return _open(uri)


def run(manifest: str, genome: str, out: str, holdout=(), master: str | None = None,
        overwrite: bool = False, targets=(), cell_types=(), assays=(),
        regions: str | None = None, progress: bool = True, **config) -> dict:
    """The whole pipeline (``predictd run``): ingest, train, impute and, with ``holdout``
    (``"CELL:ASSAY"`` or a list of them), evaluate. ``config`` sets config keys
    (``latent_factors=6``); ``master`` a Spark master (default: in this process);
    ``targets``, ``cell_types``, ``assays`` and ``regions`` choose the tracks written, as the
    command's options; ``progress`` shows each long stage's progress (a bar in a notebook).
    Returns each stage's summary."""
    from . import pipeline
    from .config import from_dict
    from .names import listed
    r = pipeline.open_run(manifest, genome, out, from_dict(config),
                          listed(holdout, "holdout"), progress=progress,
                          targets=listed(targets, "targets"),
                          cell_types=listed(cell_types, "cell_types"),
                          assays=listed(assays, "assays"), regions=regions)
    if master:
        from .spark import get_context
        r.sc = get_context(master)
    return pipeline.run_all(r, overwrite=overwrite)
