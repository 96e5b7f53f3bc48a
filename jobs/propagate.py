"""Entry point: ``spark-submit jobs/propagate.py --conf conf/local.yaml [--labels-from replay-all]``."""

import sys

from persona_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["propagate", *sys.argv[1:]]))
