"""Persona accuracy against the paper: every budget and sampler over N seeds, side by side
with the authors' released outputs (the full ``personas evaluate accuracy``).

    .venv/bin/python bench/persona_accuracy.py [--budget 0.2] [--sampler du] [--seeds 3] [--workdir DIR]

Prints the table and, as the last line, the JSON of ``personas evaluate accuracy``.
"""

import sys

from persona_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", "accuracy", *sys.argv[1:]]))
