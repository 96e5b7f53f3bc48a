"""The JVM libraries a local Spark needs (Delta; GraphFrames where Maven Central serves it).

``scripts/setup.sh`` fetches them with Maven into ``.jars/``; this module finds and verifies
them so the session factory can pass them to Spark as local files (``spark.jars``) and
nothing resolves at run time.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from persona_lib.errors import DependencyError

# Prefixes of the JARs the job cannot run without.
REQUIRED_JARS = ("delta-spark_4.1_2.13-", "delta-storage-")
# GraphFrames' JVM side: used when present (PPR baseline), never required; see README.
OPTIONAL_JARS = ("graphframes-spark4_2.13-", "graphframes-graphx-spark4_2.13-")
SETUP_HINT = "run `bash scripts/setup.sh` from the repository root to fetch them"


def list_jars(jars_dir: Path) -> list[Path]:
    return sorted(jars_dir.glob("*.jar")) if jars_dir.is_dir() else []


def required_jars(jars_dir: Path) -> list[Path]:
    """All JARs in ``jars_dir``, after checking that the required ones are there and readable."""
    jars = list_jars(jars_dir)
    missing = [p for p in REQUIRED_JARS if not any(j.name.startswith(p) for j in jars)]
    if missing:
        raise DependencyError(f"missing Spark JARs {missing} in {jars_dir}: {SETUP_HINT}")
    for jar in jars:
        try:
            with zipfile.ZipFile(jar) as archive:
                if archive.testzip() is not None:
                    raise zipfile.BadZipFile("corrupt member")
        except zipfile.BadZipFile as exc:
            raise DependencyError(f"{jar} is not a valid JAR ({exc}): delete it and {SETUP_HINT}") from exc
    return jars


def has_graphframes(jars: list[Path]) -> bool:
    return any(j.name.startswith(OPTIONAL_JARS[0]) for j in jars)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "verify":
        print("usage: python -m persona_lib.jars verify DIR", file=sys.stderr)
        return 2
    try:
        jars = required_jars(Path(argv[1]))
    except DependencyError as exc:
        print(f"jars: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"jars: {len(jars)} verified in {argv[1]}"
          + ("" if has_graphframes(jars) else " (GraphFrames JVM library not present)"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
