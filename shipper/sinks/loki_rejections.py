"""Which entries of a push Loki refused, read from its 400 answer.

Loki writes the valid entries of a push and answers 400 for the rest (``distributor.go``), so
the sink must not send the accepted ones again and must dead-letter exactly the refused ones.
The answer names streams and reasons but not entries, so each reason is traced back by the rule
Loki applied (PROTOCOLS.md section 2; Loki ``validate.go`` and the ingester):

- label problems (too many, too long, duplicate): the whole stream;
- ``timestamp too old``/``too new``: the N oldest/newest entries of the stream (N messages, or
  ``N errors like: ``), since the limit is a time;
- ``max entry size 'L'``: the stream's lines longer than L bytes;
- structured metadata not allowed, too large, too many: the entries carrying such metadata;
- the ingester's ``total ignored: N out of M for stream: {…}`` (too far behind, out of order):
  the N oldest entries the distributor let through, since entries go in time order.

Loki prints label sets with ``service_name`` added; it is removed before comparing. What cannot
be traced (an unknown message, or a stream we did not send) is returned as ``unexplained`` so
the sink can dead-letter conservatively rather than count a refused entry as delivered.

Loki reports the ingester error of the last stream only, and no validation errors at all when
an ingester error exists; those refusals are invisible to any client (Promtail drops the batch).
"""

import re
from dataclasses import dataclass, field

_SPLIT = re.compile(
    r"; (?=(?:\d+ errors like: )?(?:entry for stream '|max entry size '|stream '|entry with timestamp |"
    r"error at least one label pair|couldn't parse labels|ingestion|max entry))",
    re.IGNORECASE,
)
_GROUPED = re.compile(r"(\d+) errors like: ", re.IGNORECASE)
_SERVICE_NAME = re.compile(r'(?:service_name="(?:[^"\\]|\\.)*", |, service_name="(?:[^"\\]|\\.)*"|'
                           r'service_name="(?:[^"\\]|\\.)*")')
_LINE_LIMIT = re.compile(r"max entry size '(\d+)' bytes", re.IGNORECASE)
_METADATA_SIZE_LIMIT = re.compile(r"limit: '(\d+)' bytes", re.IGNORECASE)
_METADATA_COUNT_LIMIT = re.compile(r"limit: '(\d+)'\.", re.IGNORECASE)
_INGESTER_TOTAL = re.compile(r"total ignored: (\d+) out of \d+ for stream: ", re.IGNORECASE)

# (text in the message, reason, how the refused entries are found)
_STREAM_REASONS = (
    ("label names; limit", "too_many_labels"),
    ("label name too long", "label_name_too_long"),
    ("label value too long", "label_value_too_long"),
    ("duplicate label name", "duplicate_label"),
    ("at least one label pair", "no_labels"),
)


def without_service_name(labels_text: str) -> str:
    return _SERVICE_NAME.sub("", labels_text)


@dataclass
class Rejections:
    """Per stream index, the refused entry indexes with ``(reason, Loki's message)``."""

    refused: dict[int, dict[int, tuple[str, str]]] = field(default_factory=dict)
    unexplained: list[str] = field(default_factory=list)

    def refuse(self, stream: int, entry: int, reason: str, message: str) -> None:
        self.refused.setdefault(stream, {}).setdefault(entry, (reason, message))


def split_messages(body: str) -> list[tuple[int, str]]:
    """Loki's joined error text as ``(count, message)``: ``; ``-separated, ``N errors like: ``
    prefixes for repeats. Splits only before a known message start, since label values and
    lines inside a message may contain ``; ``."""
    messages = []
    for part in _SPLIT.split(body.strip()):
        grouped = _GROUPED.match(part)
        if grouped:
            messages.append((int(grouped.group(1)), part[grouped.end():]))
        else:
            messages.append((1, part))
    return messages


def refusals_in_push(body: str, pushed: list[tuple]) -> Rejections:
    """Loki's 400 ``body`` traced to ``pushed``: per stream as pushed, its labels and its
    entries as ``(ts_ns, line, metadata pairs, _)`` tuples."""
    return find_rejections(body, [
        (labels.text, [(ts_ns, len(line.encode()), sum(len(n.encode()) + len(v.encode()) for n, v in metadata),
                        len(metadata)) for ts_ns, line, metadata, _ in entries])
        for labels, entries in pushed
    ])


def find_rejections(body: str, streams: list[tuple[str, list[tuple[int, int, int, int]]]]) -> Rejections:
    """``streams``: per pushed stream, its label text and its entries in push order as
    ``(ts_ns, line bytes, metadata bytes, metadata pairs)``."""
    result = Rejections()
    names = [without_service_name(text) for text, _ in streams]
    too_old: dict[int, tuple[int, str]] = {}
    too_new: dict[int, tuple[int, str]] = {}
    ingester: list[tuple[int, int, str, str]] = []
    for count, message in split_messages(body):
        lowered = message.lower()
        if "couldn't parse labels" in lowered:  # the whole request failed; nothing was written
            for index, (_, entries) in enumerate(streams):
                for entry in range(len(entries)):
                    result.refuse(index, entry, "invalid_labels", message)
            continue
        plain = without_service_name(message)
        index = _named_stream(plain, names)
        if index is None:
            result.unexplained.append(message)
            continue
        entries = streams[index][1]
        stream_reason = next((reason for text, reason in _STREAM_REASONS if text in lowered), None)
        if stream_reason:
            for entry in range(len(entries)):
                result.refuse(index, entry, stream_reason, message)
        elif "timestamp too old" in lowered:
            total, _ = too_old.get(index, (0, ""))
            too_old[index] = (total + count, message)
        elif "timestamp too new" in lowered:
            total, _ = too_new.get(index, (0, ""))
            too_new[index] = (total + count, message)
        elif (limit := _LINE_LIMIT.search(message)) is not None:
            for entry, (_, size, _, _) in enumerate(entries):
                if size > int(limit.group(1)):
                    result.refuse(index, entry, "line_too_long", message)
        elif "structured metadata" in lowered:
            _refuse_metadata(result, index, entries, lowered, message)
        elif (total := _INGESTER_TOTAL.search(message)) is not None:
            reason = "too_far_behind" if "too far behind" in lowered else (
                "out_of_order" if "out of order" in lowered else "ingester")
            ingester.append((index, int(total.group(1)), reason, message))
        else:
            result.unexplained.append(message)
    for index, (count, message) in too_old.items():
        for entry in _oldest(streams[index][1], count, set()):
            result.refuse(index, entry, "too_old", message)
    for index, (count, message) in too_new.items():
        for entry in _oldest(streams[index][1], count, set(), newest=True):
            result.refuse(index, entry, "too_new", message)
    for index, count, reason, message in ingester:
        # The ingester saw only what the distributor let through.
        for entry in _oldest(streams[index][1], count, set(result.refused.get(index, ()))):
            result.refuse(index, entry, reason, message)
    return result


def _named_stream(message: str, names: list[str]) -> int | None:
    for index, name in enumerate(names):
        if f"'{name}'" in message or message.endswith("for stream: " + name):
            return index
    return None


def _oldest(entries: list[tuple], count: int, skip: set, newest: bool = False) -> list[int]:
    order = sorted((i for i in range(len(entries)) if i not in skip), key=lambda i: entries[i][0], reverse=newest)
    return order[:count]


def _refuse_metadata(result: Rejections, index: int, entries: list[tuple], lowered: str, message: str) -> None:
    if "disallowed" in lowered:
        refused = [i for i, entry in enumerate(entries) if entry[3]]
    elif "too large" in lowered and (limit := _METADATA_SIZE_LIMIT.search(message)):
        refused = [i for i, entry in enumerate(entries) if entry[2] > int(limit.group(1))]
    elif "too many" in lowered and (limit := _METADATA_COUNT_LIMIT.search(message)):
        refused = [i for i, entry in enumerate(entries) if entry[3] > int(limit.group(1))]
    else:
        result.unexplained.append(message)
        return
    for entry in refused:
        result.refuse(index, entry, "structured_metadata", message)
