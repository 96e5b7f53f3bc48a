"""Entry point: ``spark-submit jobs/ingest.py --conf conf/local.yaml [--cut paper]``."""

import sys

from persona_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
