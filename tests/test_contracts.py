"""The documented table contracts are the enforced ones."""

from persona_lib.config import REPO_ROOT, TABLE_KEYS
from persona_lib.contracts import CONTRACTS, render_markdown


def test_docs_tables_md_is_generated_from_the_contracts():
    documented = (REPO_ROOT / "docs" / "tables.md").read_text()
    assert documented == render_markdown(), "run: python -m persona_lib.contracts > docs/tables.md"


def test_every_contract_names_a_configured_table():
    assert {c.key for c in CONTRACTS} <= set(TABLE_KEYS)
