"""Multiline grouping: continuation lines (stack traces, tracebacks, panics) joined into the
record they belong to, per container stream.

Only for containers a rule names (``inputs.<name>.multiline``): guessing elsewhere would glue
unrelated lines together. A rule says which lines continue the open record, by a ``continue``
pattern or a preset (``java``, ``python``, ``go``), or which lines start a new one (``start``:
everything else continues). A group is cut at ``max_lines`` or ``max_bytes`` (the rest starts
the next record, so nothing is lost), and an open group is shipped when the file goes idle
(``read.partial_flush_secs``) or at the end of a one-shot read, so the last record of a burst
is never held back.

``MultilineDecoder`` wraps a runtime decoder and exposes the same ``partials`` contract the
pipeline uses for split lines (``pending``, ``oldest_offset()``, ``flush()``), so the
checkpoint never passes the first line of an open group and a replay rebuilds the same record
with the same offset.
"""

import fnmatch
import re
from dataclasses import dataclass

from shipper.decode.flags import MALFORMED, MULTILINE_SPLIT

PRESETS = {
    # The exception line after a logged message ("java.lang.IllegalStateException: ..."),
    # "\tat ...", "\t... 12 more", "Caused by: ...", "\tSuppressed: ...", and any indented line.
    "java": r"^\s|^Caused by: |^\.\.\. \d+ (more|common frames omitted)|^[\w$.]+(Exception|Error|Throwable)(: |$)",
    # The traceback after a logged message, its indented frames, the chained-exception
    # sentences, and the final "SomeError: message" line.
    "python": (
        r"^\s|^Traceback \(most recent call last\):|^During handling of the above exception"
        r"|^The above exception was the direct cause|^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)(: |$)"
    ),
    # "goroutine 1 [running]:", "main.main()", "created by ...", "\t/src/x.go:12 +0x1d", blank lines.
    "go": r"^\s|^$|^goroutine \d+ \[|^created by |^[\w./*()\[\]-]+\(.*\)$",
}


@dataclass(frozen=True)
class MultilineRule:
    containers: tuple[str, ...]  # fnmatch patterns on the container name
    pattern: str  # the regex text
    starts: bool  # True: ``pattern`` matches a line that starts a record; False: one that continues
    max_lines: int = 500
    max_bytes: int = 256 << 10

    def matches_container(self, container: str | None) -> bool:
        return container is not None and any(fnmatch.fnmatchcase(container, p) for p in self.containers)


def rule_for(rules: tuple[MultilineRule, ...], container: str | None) -> MultilineRule | None:
    """The first rule naming ``container``."""
    for rule in rules:
        if rule.matches_container(container):
            return rule
    return None


class MultilineJoiner:
    """Open groups per stream: ``stream -> [offset, time, parts, bytes, flags]``."""

    __slots__ = ("_rule", "_bytes_pattern", "_text_pattern", "pending")

    def __init__(self, rule: MultilineRule) -> None:
        self._rule = rule
        # CRI content is bytes, docker content str: one compiled pattern for each.
        self._bytes_pattern = re.compile(rule.pattern.encode())
        self._text_pattern = re.compile(rule.pattern)
        self.pending: dict = {}

    def feed(self, decoded: list[tuple], out: list) -> None:
        rule, pending, append = self._rule, self.pending, out.append
        for line in decoded:
            offset, time, stream, content, flags = line
            if flags & MALFORMED:  # not a runtime line: never part of a container's record
                append(line)
                continue
            pattern = self._bytes_pattern if type(content) is bytes else self._text_pattern
            continues = (pattern.match(content) is None) if rule.starts else (pattern.match(content) is not None)
            group = pending.get(stream)
            if group is not None and continues and len(group[2]) < rule.max_lines \
                    and group[3] + len(content) + 1 <= rule.max_bytes:
                group[2].append(content)
                group[3] += len(content) + 1
                group[4] |= flags
                continue
            if group is not None:
                append(self._joined(stream, group, cut=continues))
            pending[stream] = [offset, time, [content], len(content), flags]

    def _joined(self, stream, group: list, cut: bool = False) -> tuple:
        offset, time, parts, _size, flags = group
        separator = b"\n" if type(parts[0]) is bytes else "\n"
        # Cut at a limit: the rest continues in the next record; flagged so it can be found.
        return (offset, time, stream, separator.join(parts), flags | (MULTILINE_SPLIT if cut else 0))

    def oldest_offset(self) -> int | None:
        if not self.pending:
            return None
        return min(group[0] for group in self.pending.values())

    def flush(self) -> list[tuple]:
        lines = [self._joined(stream, group) for stream, group in self.pending.items()]
        self.pending.clear()
        lines.sort(key=lambda line: line[0])
        return lines


class _Stages:
    """The split-line joiner then the multiline joiner, seen by the pipeline as one."""

    __slots__ = ("_parts", "_groups")

    def __init__(self, parts, groups: MultilineJoiner) -> None:
        self._parts = parts
        self._groups = groups

    @property
    def pending(self) -> bool:
        return bool(self._parts.pending or self._groups.pending)

    def oldest_offset(self) -> int | None:
        offsets = [o for o in (self._parts.oldest_offset(), self._groups.oldest_offset()) if o is not None]
        return min(offsets) if offsets else None

    def flush(self) -> list[tuple]:
        out: list = []
        self._groups.feed(self._parts.flush(), out)
        out.extend(self._groups.flush())
        return out


class MultilineDecoder:
    """A runtime decoder whose lines are then grouped by a multiline rule."""

    __slots__ = ("_inner", "_groups", "partials")

    def __init__(self, inner, rule: MultilineRule) -> None:
        self._inner = inner
        self._groups = MultilineJoiner(rule)
        self.partials = _Stages(inner.partials, self._groups)

    def decode(self, lines: list[bytes], offset: int, out: list) -> None:
        lines_decoded: list = []
        self._inner.decode(lines, offset, lines_decoded)
        self._groups.feed(lines_decoded, out)
