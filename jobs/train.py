"""spark-submit entry point for `predictd train`.

    spark-submit --master yarn jobs/train.py --manifest M --genome G --out OUT [--config C.toml]

Takes exactly the options of `predictd train --help`; the master comes from spark-submit.
"""

import sys

from predictd.cli.main import main

if __name__ == "__main__":
    sys.argv = ["predictd", "train", *sys.argv[1:]]
    main()
