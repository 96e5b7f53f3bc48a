"""Entry point: ``spark-submit jobs/label.py --conf conf/local.yaml [--labeller replay] [--budget 0.2]``."""

import sys

from persona_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]]))
