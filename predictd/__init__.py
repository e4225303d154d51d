"""predictd: impute missing epigenomic experiments with a PARAFAC model (PREDICTD), on Spark.

The library is usable without Spark: the numpy cores live in :mod:`predictd.model`,
:mod:`predictd.solvers` and :mod:`predictd.metrics`; :mod:`predictd.spark` is the only place a
SparkSession is created.
"""

__version__ = "0.1.0"
