"""A strict parser and evaluator for the LogQL the shipped Grafana dashboards use.

Covers stream selectors (``=``, ``!=``, ``=~``, ``!~``), line filters (``|=``, ``!=``, ``|~``,
``!~``), the ``| json`` and ``| logfmt`` parsers, label filters (string: ``=``, ``!=``, ``=~``,
``!~``; numeric: ``==``, ``!=``, ``>``, ``>=``, ``<``, ``<=``), the range aggregations
``count_over_time``, ``rate``, ``bytes_over_time`` and ``bytes_rate`` (range after the pipeline,
or between selector and pipeline), and ``sum``/``count``/``min``/``max``/``avg`` with ``by`` or
``without``. Anything else is refused with ``LogQLError``, malformed or merely outside this
subset, so a dashboard query that passes here is one Loki parses the same way.

Evaluation follows Loki (grafana/loki v3.7 ``pkg/logql``): a missing label matches like an empty
one; ``| json`` flattens nested objects with ``_``, skips arrays, sanitises names and suffixes
``_extracted`` to a name the stream already has, and marks a line that is not a JSON object with
``__error__="JSONParserErr"``; a metric query over a sample still carrying ``__error__`` fails, as
Loki's "pipeline error" does. Regular expressions are Python's, close to RE2 for these queries.
Entries come from ``LokiReceiver.entries()``; the receiver itself is not changed.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NANOS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9,
         "w": 7 * 86400 * 10**9, "y": 365 * 86400 * 10**9}
RANGE_FUNCTIONS = ("count_over_time", "rate", "bytes_over_time", "bytes_rate")
VECTOR_OPERATORS = ("sum", "count", "min", "max", "avg")
MATCH_OPERATORS = ("=", "!=", "=~", "!~")
LINE_FILTERS = ("|=", "!=", "|~", "!~")
NUMERIC_OPERATORS = ("==", "!=", ">", ">=", "<", "<=")

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+)
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<identifier>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\|=|\|~|!=|!~|=~|==|>=|<=|=|>|<|\||[{}()\[\],])
""", re.VERBOSE)
_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}


class LogQLError(ValueError):
    """A query that does not parse, or one that fails to evaluate (Loki's pipeline error)."""


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


@dataclass(frozen=True)
class Matcher:
    name: str
    operator: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.operator in ("=", "!="):
            return (actual == self.value) == (self.operator == "=")
        return (re.fullmatch(self.value, actual, re.DOTALL) is not None) == (self.operator == "=~")


@dataclass(frozen=True)
class LineFilter:
    operator: str
    value: str

    def keeps(self, line: str) -> bool:
        if self.operator in ("|=", "!="):
            return (self.value in line) == (self.operator == "|=")
        return (re.search(self.value, line) is not None) == (self.operator == "|~")


@dataclass(frozen=True)
class Parser:
    name: str  # json or logfmt


@dataclass(frozen=True)
class LabelFilter:
    name: str
    operator: str
    value: str | float

    def keeps(self, labels: Mapping[str, str]) -> bool:
        if isinstance(self.value, str):
            return Matcher(self.name, self.operator, self.value).matches(labels)
        try:
            actual = float(labels.get(self.name, ""))
        except ValueError:
            return False
        return {"==": actual == self.value, "!=": actual != self.value, ">": actual > self.value,
                ">=": actual >= self.value, "<": actual < self.value, "<=": actual <= self.value}[self.operator]


Stage = LineFilter | Parser | LabelFilter


@dataclass(frozen=True)
class LogQuery:
    matchers: tuple[Matcher, ...]
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class RangeAggregation:
    function: str
    query: LogQuery
    range_ns: int


@dataclass(frozen=True)
class VectorAggregation:
    operator: str
    grouping: str | None  # by, without, or None (everything in one series)
    labels: tuple[str, ...]
    inner: RangeAggregation | VectorAggregation


Query = LogQuery | RangeAggregation | VectorAggregation


# ---- parsing ----------------------------------------------------------------------------------


def _tokens(query: str) -> list[Token]:
    tokens, index = [], 0
    while index < len(query):
        match = _TOKEN.match(query, index)
        if match is None:
            what = "unterminated string" if query[index] in "\"`" else f"unexpected {query[index]!r}"
            raise LogQLError(f"parse error at col {index + 1}: {what}")
        if match.lastgroup != "space":
            tokens.append(Token(match.lastgroup, match.group(), index))
        index = match.end()
    tokens.append(Token("eof", "", len(query)))
    return tokens


def _unquote(text: str, pos: int) -> str:
    if text[0] == "`":
        return text[1:-1]
    out, index, body = [], 0, text[1:-1]
    while index < len(body):
        ch = body[index]
        if ch == "\\":
            escape = body[index + 1]
            if escape == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[index + 2: index + 6]):
                out.append(chr(int(body[index + 2: index + 6], 16)))
                index += 6
                continue
            if escape not in _ESCAPES:
                raise LogQLError(f"parse error at col {pos + index + 2}: invalid escape \\{escape}")
            out.append(_ESCAPES[escape])
            index += 2
        else:
            out.append(ch)
            index += 1
    return "".join(out)


def _duration_ns(text: str, pos: int) -> int:
    match = _DURATION.match(text)
    if match is None or not any(match.groups()):
        raise LogQLError(f"parse error at col {pos + 1}: invalid duration {text!r} (units out of order?)")
    units = ("y", "w", "d", "h", "m", "s", "ms")
    total = sum(int(value) * NANOS[unit] for value, unit in zip(match.groups(), units) if value)
    if total == 0:
        raise LogQLError(f"parse error at col {pos + 1}: a range must be positive, got {text!r}")
    return total


def _regex(pattern: str, pos: int) -> str:
    try:
        re.compile(pattern)
    except re.error as error:
        raise LogQLError(f"parse error at col {pos + 1}: invalid regex {pattern!r}: {error}") from None
    return pattern


class _Parser:
    def __init__(self, query: str) -> None:
        self.tokens = _tokens(query)
        self.index = 0

    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self, *expected: str) -> Token:
        """The next token, which must be of a kind or operator text in ``expected``."""
        token = self.tokens[self.index]
        if token.kind not in expected and not (token.kind == "op" and token.text in expected):
            found = "end of query" if token.kind == "eof" else repr(token.text)
            wanted = " or ".join("end of query" if kind == "eof" else kind for kind in expected)
            raise LogQLError(f"parse error at col {token.pos + 1}: unexpected {found}, expecting {wanted}")
        self.index += 1
        return token

    def query(self) -> Query:
        token = self.peek()
        if token.kind == "op" and token.text == "{":
            parsed: Query = self.log_query()
        elif token.kind == "identifier" and token.text in RANGE_FUNCTIONS + VECTOR_OPERATORS:
            parsed = self.metric()
        else:
            self.take("{", *RANGE_FUNCTIONS, *VECTOR_OPERATORS)
        self.take("eof")
        return parsed

    def selector(self) -> tuple[Matcher, ...]:
        self.take("{")
        matchers = []
        while True:
            name = self.take("identifier").text
            operator = self.take(*MATCH_OPERATORS).text
            value_token = self.take("string")
            value = _unquote(value_token.text, value_token.pos)
            if operator in ("=~", "!~"):
                _regex(value, value_token.pos)
            matchers.append(Matcher(name, operator, value))
            if self.take(",", "}").text == "}":
                break
        if not any(m.operator == "=" and m.value or m.operator == "=~" and not re.fullmatch(m.value, "")
                   for m in matchers):
            raise LogQLError("parse error: queries require at least one regexp or equality matcher that does "
                             "not have an empty-compatible value")
        return tuple(matchers)

    def stages(self) -> tuple[Stage, ...]:
        stages: list[Stage] = []
        while (token := self.peek()).kind == "op" and token.text in LINE_FILTERS + ("|",):
            self.index += 1
            if token.text != "|":
                value_token = self.take("string")
                value = _unquote(value_token.text, value_token.pos)
                if token.text in ("|~", "!~"):
                    _regex(value, value_token.pos)
                stages.append(LineFilter(token.text, value))
                continue
            name = self.take("identifier")
            if name.text in ("json", "logfmt") and not self.starts_comparison():
                stages.append(Parser(name.text))
                continue
            operator = self.take(*MATCH_OPERATORS, *NUMERIC_OPERATORS)
            value_token = self.take("string", "number")
            if value_token.kind == "string":
                if operator.text not in MATCH_OPERATORS:
                    raise LogQLError(f"parse error at col {operator.pos + 1}: {operator.text} compares numbers")
                value: str | float = _unquote(value_token.text, value_token.pos)
                if operator.text in ("=~", "!~"):
                    _regex(value, value_token.pos)
            else:
                if operator.text not in NUMERIC_OPERATORS:
                    raise LogQLError(f"parse error at col {operator.pos + 1}: {operator.text} compares strings")
                value = float(value_token.text)
            stages.append(LabelFilter(name.text, operator.text, value))
        return tuple(stages)

    def starts_comparison(self) -> bool:
        token = self.peek()
        return token.kind == "op" and token.text in MATCH_OPERATORS + NUMERIC_OPERATORS

    def log_query(self) -> LogQuery:
        return LogQuery(self.selector(), self.stages())

    def range_ns(self) -> int:
        self.take("[")
        token = self.take("duration")
        self.take("]")
        return _duration_ns(token.text, token.pos)

    def metric(self) -> RangeAggregation | VectorAggregation:
        function = self.take("identifier")
        if function.text in RANGE_FUNCTIONS:
            self.take("(")
            matchers = self.selector()
            if self.peek().text == "[":  # {selector}[5m] | json ...
                range_ns = self.range_ns()
                stages = self.stages()
            else:  # {selector} | json ... [5m]
                stages = self.stages()
                range_ns = self.range_ns()
            self.take(")")
            return RangeAggregation(function.text, LogQuery(matchers, stages), range_ns)
        if function.text not in VECTOR_OPERATORS:
            raise LogQLError(f"parse error at col {function.pos + 1}: unknown function {function.text!r}")
        grouping, labels = self.grouping()
        self.take("(")
        inner = self.metric()
        self.take(")")
        if grouping is None:
            grouping, labels = self.grouping()
        elif self.peek().text in ("by", "without"):
            raise LogQLError(f"parse error at col {self.peek().pos + 1}: grouping given twice")
        return VectorAggregation(function.text, grouping, labels, inner)

    def grouping(self) -> tuple[str | None, tuple[str, ...]]:
        if self.peek().kind != "identifier" or self.peek().text not in ("by", "without"):
            return None, ()
        grouping = self.take("identifier").text
        self.take("(")
        labels = []
        if self.peek().text != ")":
            labels.append(self.take("identifier").text)
            while self.take(",", ")").text == ",":
                labels.append(self.take("identifier").text)
        else:
            self.take(")")
        return grouping, tuple(labels)


def parse(query: str) -> Query:
    return _Parser(query).query()


# ---- evaluation ------------------------------------------------------------------------------


def _sanitize(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return "_" + name if name[:1].isdigit() else name


def _json_labels(value: object, prefix: str = "") -> Iterable[tuple[str, str]]:
    for key, item in value.items():  # type: ignore[union-attr]
        name = f"{prefix}_{key}" if prefix else key
        if isinstance(item, dict):
            yield from _json_labels(item, name)
        elif isinstance(item, bool):
            yield _sanitize(name), "true" if item else "false"
        elif isinstance(item, (str, int, float)):
            yield _sanitize(name), str(item)
        # arrays and nulls add no label


def _logfmt_labels(line: str) -> Iterable[tuple[str, str]] | None:
    pairs = re.findall(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)', line)
    if not pairs:
        return None
    return [(_sanitize(key), json.loads(value) if value.startswith('"') else value) for key, value in pairs]


def _extract(labels: dict[str, str], stream: Mapping[str, str], parser: str, line: str) -> None:
    if parser == "json":
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        extracted = _json_labels(value) if isinstance(value, dict) else None
    else:
        extracted = _logfmt_labels(line)
    if extracted is None:
        labels["__error__"] = "JSONParserErr" if parser == "json" else "LogfmtParserErr"
        return
    for name, text in extracted:
        labels[f"{name}_extracted" if name in stream else name] = text


def select(query: LogQuery, entries: Iterable) -> list[tuple[dict[str, str], int, str]]:
    """(labels after the pipeline, ts_ns, line) of the entries the query keeps, in the given order.
    ``entries`` are objects with ``labels``, ``ts_ns`` and ``line`` (the receiver's LogEntry)."""
    kept = []
    for entry in entries:
        if not all(matcher.matches(entry.labels) for matcher in query.matchers):
            continue
        labels = dict(entry.labels)
        for stage in query.stages:
            if isinstance(stage, LineFilter):
                keep = stage.keeps(entry.line)
            elif isinstance(stage, Parser):
                _extract(labels, entry.labels, stage.name, entry.line)
                keep = True
            else:
                keep = stage.keeps(labels)
            if not keep:
                break
        else:
            kept.append((labels, entry.ts_ns, entry.line))
    return kept


def evaluate(query: RangeAggregation | VectorAggregation, entries: list, at_ns: int) -> dict[tuple, float]:
    """An instant metric query at ``at_ns``: {sorted label pairs: value}."""
    if isinstance(query, RangeAggregation):
        window = [(labels, ts, line) for labels, ts, line in select(query.query, entries)
                  if at_ns - query.range_ns < ts <= at_ns]
        series: dict[tuple, float] = defaultdict(float)
        for labels, _, line in window:
            if "__error__" in labels:
                raise LogQLError(f"pipeline error: '{labels['__error__']}' for series {sorted(labels.items())}")
            bytes_counted = query.function.startswith("bytes")
            series[tuple(sorted(labels.items()))] += len(line.encode()) if bytes_counted else 1
        if query.function in ("rate", "bytes_rate"):
            return {key: value / (query.range_ns / 10**9) for key, value in series.items()}
        return dict(series)
    groups: dict[tuple, list[float]] = defaultdict(list)
    for key, value in evaluate(query.inner, entries, at_ns).items():
        if query.grouping == "by":
            key = tuple((name, value_) for name, value_ in key if name in query.labels)
        elif query.grouping == "without":
            key = tuple((name, value_) for name, value_ in key if name not in query.labels)
        else:
            key = ()
        groups[key].append(value)
    combine = {"sum": sum, "count": len, "min": min, "max": max, "avg": lambda values: sum(values) / len(values)}
    return {key: float(combine[query.operator](values)) for key, values in groups.items()}
