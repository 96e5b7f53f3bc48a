"""Entry point: ``spark-submit jobs/evaluate.py accuracy|recommend|stability --conf conf/local.yaml``."""

import sys

from persona_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
