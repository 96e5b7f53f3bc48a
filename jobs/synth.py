"""Entry point: ``spark-submit jobs/synth.py --conf conf/local.yaml --events 1000000``."""

import sys

from persona_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
