"""Entry point: ``spark-submit jobs/run_pipeline.py --conf conf/local.yaml``."""

import sys

from persona_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
