"""spark-submit entry point for `predictd run`.

    spark-submit --master yarn jobs/run.py --manifest M --genome G --out OUT [--config C.toml]

Takes exactly the options of `predictd run --help`; the master comes from spark-submit.
"""

import sys

from predictd.cli.main import main

if __name__ == "__main__":
    sys.argv = ["predictd", "run", *sys.argv[1:]]
    main()
