"""The README's migration table from Fluentd and Promtail names only keys shipper reads."""

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
KEY_PREFIXES = ("inputs.", "read.", "positions.", "kube.", "buffer.", "batch.", "retry.", "auth.", "tls.", "json.",
                "metrics.", "sinks.")


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    return text[start:text.index("\n## ", start + 1)]


def table_cells(text: str, column: int) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [re.split(r"(?<!\\)\|", row)[column + 1] for row in rows]


def reference_keys(text: str) -> set[str]:
    """Every key in the first column of the README's key tables (`key | default | meaning`)."""
    keys = set()
    for block in text.split("| key | default | meaning |")[1:]:
        table = block.split("\n\n")[0]
        for cell in table_cells(table, 0):
            keys.update(re.findall(r"`([^`]+)`", cell))
    return keys


def migrated_keys(text: str) -> set[str]:
    """Keys the migration tables' shipper column tells users to set: ``key: value`` forms and
    dotted names under the config's sections."""
    keys = set()
    for cell in table_cells(section(text, "Migrating from Fluentd and Promtail"), 1):
        for token in re.findall(r"`([^`]+)`", cell):
            if re.fullmatch(r"[a-z_.<>]+: .*", token):
                keys.add(token.split(":")[0])
            elif token.startswith(KEY_PREFIXES) and re.fullmatch(r"[a-z_.<>*]+", token):
                keys.add(token)
    return keys


def test_every_key_the_migration_table_names_is_in_the_reference():
    text = open(README).read()
    reference = reference_keys(text)
    migrated = migrated_keys(text)
    assert len(migrated) > 30  # both tables were read
    unknown = {key for key in migrated
               if not any(ref == key or ref.endswith("." + key) or key.endswith("." + ref) for ref in reference)}
    assert unknown == set(), f"keys in the migration table but not in any key table: {sorted(unknown)}"
