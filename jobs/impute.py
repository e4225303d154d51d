"""spark-submit entry point for `predictd impute`.

    spark-submit --master yarn jobs/impute.py --manifest M --genome G --out OUT [--config C.toml]

Takes exactly the options of `predictd impute --help`; the master comes from spark-submit.
"""

import sys

from predictd.cli.main import main

if __name__ == "__main__":
    sys.argv = ["predictd", "impute", *sys.argv[1:]]
    main()
