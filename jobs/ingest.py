"""spark-submit entry point for `predictd ingest`.

    spark-submit --master yarn jobs/ingest.py --manifest M --genome G --out OUT [--config C.toml]

Takes exactly the options of `predictd ingest --help`; the master comes from spark-submit.
"""

import sys

from predictd.cli.main import main

if __name__ == "__main__":
    sys.argv = ["predictd", "ingest", *sys.argv[1:]]
    main()
