"""What the tests and the benchmarks share, so that ``bench/`` never imports ``tests``.

- ``reference``: the single-machine scipy oracle of the GPLR affinity (needs the ``test`` extra);
- ``tiny_model``: a tiny random-weight chat model for the vLLM tests and ``bench/labelling.py``
  (needs torch, transformers and tokenizers: the vLLM environment);
- ``TEST_CONF``: the test configuration file.
"""

from persona_lib.config import REPO_ROOT

TEST_CONF = REPO_ROOT / "conf" / "test.yaml"
