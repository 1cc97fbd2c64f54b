"""Keep/drop rules by field regex, like Fluent Bit's grep filter or Promtail's drop stage.

``keep``: only records whose field matches pass (a missing field does not match).
``drop``: records whose field matches are dropped (a missing field does not match).
Rules run in order; the first rule that rejects a record names it in the metrics.
Fields under ``kubernetes.`` are the same for every line of a file, so they are looked up
in the file's metadata instead of the record.
"""

from shipper.config import FilterRule


class RecordFilter:
    __slots__ = ("_rules",)

    def __init__(self, rules: tuple[FilterRule, ...]) -> None:
        self._rules = [(rule, rule.field.split("."), rule.action == "keep") for rule in rules]

    def apply(self, records: list[dict], offsets: list[int], kubernetes: dict) -> dict[str, int]:
        """Remove rejected records (and their offsets) in place; returns drops per rule name."""
        dropped: dict[str, int] = {}
        kept_records, kept_offsets = [], []
        for record, offset in zip(records, offsets):
            for rule, path, keep in self._rules:
                if path[0] == "kubernetes":
                    value = _lookup(kubernetes, path[1:])
                else:
                    value = _lookup(record, path)
                matched = value is not None and rule.regex.search(value) is not None
                if matched != keep:
                    dropped[rule.name] = dropped.get(rule.name, 0) + 1
                    break
            else:
                kept_records.append(record)
                kept_offsets.append(offset)
        records[:] = kept_records
        offsets[:] = kept_offsets
        return dropped


def _lookup(record: dict, path: list[str]) -> str | None:
    value = record
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if value is None or isinstance(value, (dict, list)):
        return None
    return value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
