"""The persona taxonomy: the closed list of personas an answer may name.

A taxonomy is a YAML file (``conf/personas/<name>.yaml``)::

    name: online_retail
    max_personas: 8          # k: how many personas one answer may hold
    personas:
      - name: Gardening Lover
        definition: Those passionate about gardening ...
        examples: [GARDEN TOOL SET, WATERING CAN]     # optional

It is validated on load (unique names, 2 to 64 personas, non-empty definitions, 1 <= k <=
the number of personas) and versioned by a hash of its content, so a label records exactly
which list it was chosen from. ``Taxonomy.match`` maps an answer's persona name back to the
list: exact, else by case, spacing, punctuation, "&"/"and" and plural variants, else by a
close spelling; anything else is not a persona of this taxonomy.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from persona_lib.errors import ConfigError

UNREPRESENTABLE = "Unrepresentable"
MIN_PERSONAS = 2
MAX_PERSONAS = 64
# How alike (difflib ratio of the normalised forms) a misspelt name must be to its persona.
# 0.88 maps "Gardning Lover" and "Tea & Coffee Lovers" but not one persona onto a neighbour
# ("Home Decor Aficionado" vs "Home Decorator" is 0.8).
CLOSE_MATCH_CUTOFF = 0.88


@dataclass(frozen=True)
class Persona:
    name: str
    definition: str
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    name: str
    personas: tuple[Persona, ...]
    max_personas: int
    version: str  # sha256 of the canonical content (name, k, personas), first 16 hex digits
    source: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.personas)

    def match(self, answer_name: str) -> tuple[Optional[str], bool]:
        """(persona name, was it repaired) for one name from an answer; (None, True) if unknown.

        "Unrepresentable" matches itself (in any case or spacing).
        """
        if answer_name in self.names or answer_name == UNREPRESENTABLE:
            return answer_name, False
        key = _normalise(answer_name)
        if not key:
            return None, True
        by_key = _lookup(self)
        if key in by_key:
            return by_key[key], True
        close = difflib.get_close_matches(key, list(by_key), n=1, cutoff=CLOSE_MATCH_CUTOFF)
        return (by_key[close[0]], True) if close else (None, True)


    def match_strictly(self, name: str) -> tuple[Optional[str], Optional[str]]:
        """(persona name or None, a suggestion when None) for a name a person wrote.

        Exact names and case, spacing, '&' and plural variants are accepted ("Unrepresentable"
        included); a misspelling is not mapped (a typo never becomes a label) but suggested.
        """
        if name in self.names or name == UNREPRESENTABLE:
            return name, None
        key = _normalise(name)
        by_key = _lookup(self)
        if key and key in by_key:
            return by_key[key], None
        close = difflib.get_close_matches(key, list(by_key), n=1, cutoff=CLOSE_MATCH_CUTOFF) if key else []
        return None, (by_key[close[0]] if close else None)


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read and validate a taxonomy YAML; every problem is a ConfigError naming file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"taxonomy file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return taxonomy_from_mapping(raw, where=str(path))


def persona_list_problem(entries: object, what: str, fewest: int, most: int) -> Optional[str]:
    """Why ``entries`` (a mapping's ``personas`` field) is not a list of ``fewest`` to ``most``
    persona entries, or None; ``what`` names the document in the message ("a taxonomy")."""
    if not isinstance(entries, list):
        return "field 'personas' must be a list of {name, definition}"
    if not fewest <= len(entries) <= most:
        return f"field 'personas' holds {len(entries)} personas; {what} needs {fewest} to {most}"
    return None


def taxonomy_from_mapping(raw: object, where: str = "taxonomy") -> Taxonomy:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping with name, max_personas, personas")
    unknown = sorted(set(raw) - {"name", "max_personas", "personas"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: max_personas, name, personas")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: field 'name' must be a non-empty string")
    entries = raw.get("personas")
    problem = persona_list_problem(entries, "a taxonomy", MIN_PERSONAS, MAX_PERSONAS)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    personas = tuple(_persona(entry, f"{where}: personas[{i}]") for i, entry in enumerate(entries))
    _check_unique(personas, where)
    k = raw.get("max_personas")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(personas):
        raise ConfigError(f"{where}: field 'max_personas' must be an integer from 1 to "
                          f"{len(personas)} (the number of personas), got {k!r}")
    canonical = json.dumps(
        {"name": name.strip(), "max_personas": k,
         "personas": [[p.name, p.definition, list(p.examples)] for p in personas]},
        sort_keys=True, ensure_ascii=False,
    )
    version = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    return Taxonomy(name.strip(), personas, k, version, source=where)


def _persona(entry: object, where: str) -> Persona:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with name and definition, got {entry!r}")
    unknown = sorted(set(entry) - {"name", "definition", "examples"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: definition, examples, name")
    name, definition = entry.get("name"), entry.get("definition")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: must be a non-empty string")
    if _normalise(name) == _normalise(UNREPRESENTABLE):
        raise ConfigError(f"{where}.name: '{UNREPRESENTABLE}' is reserved for answers without a persona")
    if any(c in name for c in '"\\\n\r\t<>'):
        raise ConfigError(f"{where}.name: {name!r} holds a quote, backslash, angle bracket or "
                          f"control character")
    if not isinstance(definition, str) or not definition.strip():
        raise ConfigError(f"{where}.definition: persona {name!r} needs a non-empty definition")
    examples = entry.get("examples") or []
    if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
        raise ConfigError(f"{where}.examples: must be a list of strings")
    return Persona(name.strip(), " ".join(definition.split()), tuple(e.strip() for e in examples))


def _check_unique(personas: tuple[Persona, ...], where: str) -> None:
    seen: dict[str, str] = {}
    for i, persona in enumerate(personas):
        key = _normalise(persona.name)
        if key in seen:
            raise ConfigError(f"{where}: personas[{i}].name {persona.name!r} duplicates "
                              f"{seen[key]!r} (names must differ beyond case and spacing)")
        seen[key] = persona.name


def _normalise(text: str) -> str:
    """The comparison key of a name: lower case, '&' -> 'and', letters and digits only,
    one trailing plural 's' per word dropped."""
    words = re.findall(r"[a-z0-9]+", text.lower().replace("&", " and "))
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
                    for w in words)


def _lookup(taxonomy: Taxonomy) -> dict[str, str]:
    by_key = {_normalise(name): name for name in taxonomy.names}
    by_key[_normalise(UNREPRESENTABLE)] = UNREPRESENTABLE
    return by_key
