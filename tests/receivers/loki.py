"""A strict fake of Loki's push endpoint, for tests and benchmarks.

It answers ``POST /loki/api/v1/push`` the way Loki v3.7 does (grafana/loki v3.7.6, see
``/work/shared/PROTOCOLS.md`` section 2): the same content negotiation, label parsing,
validation messages, partial acceptance, ingester ordering window and deduplication. What it
accepts is kept per tenant and per stream, and can be read back with :meth:`LokiReceiver.entries`
or a small LogQL subset (:meth:`LokiReceiver.query`). Faults can be scripted for the next pushes
(:meth:`LokiReceiver.inject_fault`).

Run as a program for benchmarks::

    python -m tests.receivers.loki --port 3100 [--auth-enabled] [--count-only]

It prints ``listening on <url>`` once ready and its counters as JSON when stopped (SIGINT/SIGTERM).

Read from Loki's source where PROTOCOLS.md is silent, and one correction to it: a push without a
Content-Type is rejected with ``mime: no media type``, because Loki hands the header to Go's
``mime.ParseMediaType`` before choosing a decoder. Label strings are parsed with Prometheus 3's
grammar, so quoted names (``{"app.kubernetes.io/name"="x"}``) are accepted, while JSON keys are
written unquoted and a dotted key fails the request.

Known differences from a real Loki:

- the texts of Go's JSON, decompression and protobuf decoding errors are approximated (the status
  code is Loki's, JSON errors keep jsoniter's ``loghttp.PushRequest...`` prefix);
- protobuf strings must be UTF-8 (Go would take any bytes);
- no ``detected_level`` is added to structured metadata, and the per-stream rate limit and the
  active-stream limit are not enforced;
- the ingester's head block never cuts, so an entry identical to one the stream already holds is
  never stored twice (Loki stores it again once the block is cut; its queries then hide it).
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import urlsplit

import cramjam
from google.protobuf.message import DecodeError

from . import loki_push_pb2

PUSH_PATH = "/loki/api/v1/push"
FAKE_TENANT = "fake"
SERVICE_NAME = "service_name"
UNKNOWN_SERVICE = "unknown_service"
NANOS_PER_SECOND = 1_000_000_000
MIB = 1 << 20

# --------------------------------------------------------------------------------------------
# Go formatting: Loki builds its messages with strconv.Quote, %q, %#U and time formats.
# --------------------------------------------------------------------------------------------

_GO_SHORT_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utf8_len(text: str) -> int:
    """Length in bytes, as Go's len() counts it (surrogate escapes stand for single raw bytes)."""
    return len(text.encode("utf-8", "surrogateescape"))


def _go_escape(ch: str, quote: str) -> str:
    code = ord(ch)
    if ch == quote or ch == "\\":
        return "\\" + ch
    if ch in _GO_SHORT_ESCAPES:
        return _GO_SHORT_ESCAPES[ch]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (kept by surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if ch.isprintable():
        return ch
    if code < 0x80:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _go_quote(text: str) -> str:
    """Go's strconv.Quote (and ``%q`` of a string)."""
    return '"' + "".join(_go_escape(ch, '"') for ch in text) + '"'


def _go_quote_rune(ch: str) -> str:
    """Go's ``%q`` of a rune."""
    return "'" + _go_escape(ch, "'") + "'"


def _go_rune_description(ch: str) -> str:
    """Go's ``%#U``: ``U+0071 'q'``, without the quoted rune when it is not printable."""
    described = f"U+{ord(ch):04X}"
    return f"{described} '{ch}'" if ch.isprintable() else described


def _utc(ts_ns: int) -> tuple[datetime, int]:
    seconds, nanos = divmod(ts_ns, NANOS_PER_SECOND)
    return _EPOCH + timedelta(seconds=seconds), nanos


def _go_rfc3339(ts_ns: int) -> str:
    """``time.Format(time.RFC3339)`` in UTC (Loki runs in UTC in its images)."""
    moment, _ = _utc(ts_ns)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"


def _go_time_string(ts_ns: int) -> str:
    """``time.Time.String()`` in UTC: ``2006-01-02 15:04:05.999999999 +0000 UTC``."""
    moment, nanos = _utc(ts_ns)
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{moment.year:04d}-{moment:%m-%d %H:%M:%S}{fraction} +0000 UTC"


# --------------------------------------------------------------------------------------------
# Quoted strings, shared by the label parser and the LogQL parser (Go escape rules).
# --------------------------------------------------------------------------------------------


class _StringError(Exception):
    """A malformed quoted string; each parser reports it with its own position format."""


_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34}
_NUMERIC_ESCAPES = {"x": (2, 16, 0xFF), "u": (4, 16, 0x10FFFF), "U": (8, 16, 0x10FFFF)}  # digits, base, maximum


def _digit_value(ch: str) -> int:
    if "0" <= ch <= "9":
        return ord(ch) - ord("0")
    if "a" <= ch.lower() <= "f":
        return ord(ch.lower()) - ord("a") + 10
    return 16


def _scan_escape(text: str, index: int, quote: str) -> int:
    """Checks the escape whose backslash is just before ``index``; returns the index after it."""
    if index >= len(text):
        raise _StringError("escape sequence not terminated")
    ch = text[index]
    if ch in "abfnrtv\\" or ch == quote:
        return index + 1
    if ch in "01234567":
        digits, base, maximum = 3, 8, 0xFF  # the first digit is ch itself
    elif ch in _NUMERIC_ESCAPES:
        digits, base, maximum = _NUMERIC_ESCAPES[ch]
        index += 1
    else:
        raise _StringError(f"unknown escape sequence {_go_rune_description(ch)}")
    value = 0
    for _ in range(digits):
        if index >= len(text):
            raise _StringError("escape sequence not terminated")
        digit = _digit_value(text[index])
        if digit >= base:
            raise _StringError(f"illegal character {_go_rune_description(text[index])} in escape sequence")
        value = value * base + digit
        index += 1
    if value > maximum or 0xD800 <= value < 0xE000:
        raise _StringError("escape sequence is an invalid Unicode code point")
    return index


def _scan_string(text: str, start: int) -> int:
    """Finds the end of the quoted string opening at ``start`` (``"``, ``'`` or a backquote)."""
    quote = text[start]
    index = start + 1
    if quote == "`":
        end = text.find("`", index)
        if end < 0:
            raise _StringError("unterminated raw string")
        return end + 1
    while True:
        if index >= len(text) or text[index] == "\n":
            raise _StringError("unterminated quoted string")
        ch = text[index]
        if ch == quote:
            return index + 1
        index = _scan_escape(text, index + 1, quote) if ch == "\\" else index + 1


def _unquote(literal: str) -> str:
    """The value of a string literal already checked by :func:`_scan_string`."""
    body = literal[1:-1]
    if literal[0] == "`":
        return body
    out = bytearray()
    index = 0
    while index < len(body):
        ch = body[index]
        if ch != "\\":
            out += ch.encode("utf-8", "surrogateescape")
            index += 1
            continue
        kind = body[index + 1]
        if kind in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[kind])
            index += 2
        elif kind in "01234567":
            out.append(int(body[index + 1 : index + 4], 8))
            index += 4
        elif kind == "x":
            out.append(int(body[index + 2 : index + 4], 16))
            index += 4
        else:
            width = 4 if kind == "u" else 8
            out += chr(int(body[index + 2 : index + 2 + width], 16)).encode()
            index += 2 + width
    # Go strings are bytes; \x and octal escapes may leave bytes that are not UTF-8.
    return out.decode("utf-8", "surrogateescape")


def _is_alpha(ch: str) -> bool:
    return ch == "_" or "a" <= ch <= "z" or "A" <= ch <= "Z"


def _is_alnum(ch: str) -> bool:
    return _is_alpha(ch) or "0" <= ch <= "9"


# --------------------------------------------------------------------------------------------
# Stream labels: Prometheus' ParseMetric (Prometheus 3 grammar) with its error messages.
# --------------------------------------------------------------------------------------------


class LabelParseError(ValueError):
    """A label set Loki cannot parse; the text is Prometheus' ``line:col: parse error: ...``."""


class _Token(NamedTuple):
    kind: str  # "eof", "identifier", "metric identifier", "string", "op", "{", "}", ","
    pos: int
    text: str


def _describe_token(token: _Token) -> str:
    """Prometheus' Item.desc(), which its parse errors quote."""
    if token.kind == "eof":
        return "end of input"
    if token.kind in ("identifier", "metric identifier"):
        return f"{token.kind} {_go_quote(token.text)}"
    if token.kind == "string":
        if _utf8_len(token.text) > 10:
            return f"string {_go_quote(token.text[:10])}..."
        return f"string {_go_quote(token.text)}"
    if token.kind == "op":
        return f"<op:{token.text}>"
    return _go_quote(token.text)


class _MetricLexer:
    """Prometheus' lexer, reduced to what a metric with a label set can contain."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.in_braces = False

    def error(self, pos: int, message: str) -> LabelParseError:
        before = self.text[:pos].encode("utf-8", "surrogateescape")
        line = before.count(b"\n") + 1
        column = len(before) - before.rfind(b"\n")
        return LabelParseError(f"{line}:{column}: parse error: {message}")

    def next(self) -> _Token:
        text = self.text
        while self.pos < len(text) and (text[self.pos] in " \t\n\r" or text[self.pos] == "#"):
            if text[self.pos] == "#":
                newline = text.find("\n", self.pos)
                self.pos = len(text) if newline < 0 else newline
            else:
                self.pos += 1
        start = self.pos
        if start >= len(text):
            if self.in_braces:
                raise self.error(start, "unexpected end of input inside braces")
            return _Token("eof", start, "")
        ch = text[start]
        if ch in "\"'`":
            try:
                self.pos = _scan_string(text, start)
            except _StringError as exc:
                raise self.error(start, str(exc)) from None
            return _Token("string", start, text[start : self.pos])
        if ch == ",":
            self.pos += 1
            return _Token(",", start, ch)
        if self.in_braces:
            return self._inside_braces(start, ch)
        return self._outside_braces(start, ch)

    def _inside_braces(self, start: int, ch: str) -> _Token:
        text = self.text
        if _is_alpha(ch):
            end = start + 1
            while end < len(text) and _is_alnum(text[end]):
                end += 1
            self.pos = end
            return _Token("identifier", start, text[start:end])
        if ch == "=" or ch == "!":
            following = text[start + 1 : start + 2]
            if following == "~" or (ch == "!" and following == "="):
                operator = ch + following
            elif ch == "=":
                operator = "="
            else:
                found = _go_quote_rune(following or "\ufffd")  # Go's %q of the end of input
                raise self.error(start, f"unexpected character after '!' inside braces: {found}")
            self.pos = start + len(operator)
            return _Token("op", start, operator)
        if ch == "{":
            raise self.error(start, "unexpected left brace '{'")
        if ch == "}":
            self.pos += 1
            self.in_braces = False
            return _Token("}", start, ch)
        raise self.error(start, f"unexpected character inside braces: {_go_quote_rune(ch)}")

    def _outside_braces(self, start: int, ch: str) -> _Token:
        text = self.text
        if _is_alpha(ch) or ch == ":":
            end = start + 1
            while end < len(text) and (_is_alnum(text[end]) or text[end] == ":"):
                end += 1
            self.pos = end
            word = text[start:end]
            return _Token("metric identifier" if ":" in word else "identifier", start, word)
        if ch == "{":
            self.pos += 1
            self.in_braces = True
            return _Token("{", start, ch)
        if ch == "}":
            raise self.error(start, "unexpected right brace '}'")
        raise self.error(start, f"unexpected character: {_go_quote_rune(ch)}")


def parse_labels(text: str) -> list[tuple[str, str]]:
    """Parses a label set the way Loki does (Prometheus ``ParseMetric``), sorted by name.

    Duplicate names are kept (Loki rejects them later, per stream); a leading metric name or a
    lone quoted name becomes ``__name__``. Raises :class:`LabelParseError` with Prometheus' text.
    """
    lexer = _MetricLexer(text)

    def unexpected(token: _Token, context: str, expected: str) -> LabelParseError:
        message = f"unexpected {_describe_token(token)}"
        if context:
            message += f" in {context}"
        if expected:
            message += f", expected {expected}"
        return lexer.error(token.pos, message)

    pairs: list[tuple[str, str]] = []
    metric_name = None
    token = lexer.next()
    if token.kind in ("identifier", "metric identifier"):
        metric_name = token.text
        token = lexer.next()
    if token.kind == "{":
        token = lexer.next()
        while token.kind != "}":
            if token.kind not in ("identifier", "string"):
                raise unexpected(token, "label set", 'identifier or "}"')
            name_token = token
            name = token.text if token.kind == "identifier" else _unquote(token.text)
            token = lexer.next()
            if token.kind == "op" and token.text == "=":
                value = lexer.next()
                if value.kind != "string":
                    raise unexpected(value, "label set", "string")
                pairs.append((name, _unquote(value.text)))
                token = lexer.next()
            elif name_token.kind == "string":
                pairs.append(("__name__", name))
            else:
                raise unexpected(token, "label set", '"="')
            if token.kind == ",":
                token = lexer.next()
            elif token.kind != "}":
                raise unexpected(token, "label set", '"," or "}"')
        token = lexer.next()
    if token.kind != "eof":
        raise unexpected(token, "", "")
    if metric_name is not None:
        pairs = [pair for pair in pairs if pair[0] != "__name__"] + [("__name__", metric_name)]
    return sorted(pairs, key=lambda pair: pair[0])


_LEGACY_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def format_labels(pairs: Iterable[tuple[str, str]]) -> str:
    """Prometheus 3 ``Labels.String()``: ``{a="1", "b.c"="2"}`` (names quoted when not legacy)."""
    rendered = (
        f"{name if _LEGACY_LABEL_NAME.match(name) else _go_quote(name)}={_go_quote(value)}" for name, value in pairs
    )
    return "{" + ", ".join(rendered) + "}"


# --------------------------------------------------------------------------------------------
# A LogQL subset: a stream selector and line filters, for dashboard tests.
# --------------------------------------------------------------------------------------------


class LogQLParseError(ValueError):
    """A query outside the supported LogQL subset, or not LogQL at all."""


_EMPTY_COMPATIBLE_SELECTOR = (
    "parse error : queries require at least one regexp or equality matcher that does not have an "
    'empty-compatible value. For instance, app=~".*" does not meet this requirement, but app=~".+" will'
)
_LOGQL_OPERATORS = ("|=", "|~", "!=", "!~", "=~", "=", "|")


class _LabelMatcher(NamedTuple):
    name: str
    operator: str  # =, !=, =~ or !~
    value: str
    pattern: re.Pattern[str] | None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")  # a missing label matches like an empty one
        if self.pattern is None:
            return (actual == self.value) == (self.operator == "=")
        return (self.pattern.fullmatch(actual) is not None) == (self.operator == "=~")

    def selects_something(self) -> bool:
        if self.operator == "=":
            return self.value != ""
        return self.operator == "=~" and self.pattern.fullmatch("") is None  # type: ignore[union-attr]


class _LineFilter(NamedTuple):
    operator: str  # |=, !=, |~ or !~
    value: str
    pattern: re.Pattern[str] | None

    def keeps(self, line: str) -> bool:
        if self.pattern is None:
            return (self.value in line) == (self.operator == "|=")
        return (self.pattern.search(line) is not None) == (self.operator == "|~")


class LogQuery(NamedTuple):
    """A parsed ``{selector} |= "..."`` query."""

    matchers: tuple[_LabelMatcher, ...]
    line_filters: tuple[_LineFilter, ...]

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(matcher.matches(labels) for matcher in self.matchers)

    def keeps(self, line: str) -> bool:
        return all(line_filter.keeps(line) for line_filter in self.line_filters)


def _logql_tokens(query: str) -> Iterator[_Token]:
    index = 0
    while True:
        while index < len(query) and query[index] in " \t\r\n":
            index += 1
        if index >= len(query):
            yield _Token("eof", index, "")
            return
        ch = query[index]
        if ch in "{},":
            yield _Token(ch, index, ch)
            index += 1
        elif _is_alpha(ch):
            end = index + 1
            while end < len(query) and _is_alnum(query[end]):
                end += 1
            yield _Token("identifier", index, query[index:end])
            index = end
        elif ch in '"`':
            try:
                end = _scan_string(query, index)
            except _StringError as exc:
                raise LogQLParseError(f"parse error at line 1, col {index + 1}: {exc}") from None
            yield _Token("string", index, query[index:end])
            index = end
        else:
            operator = next((op for op in _LOGQL_OPERATORS if query.startswith(op, index)), None)
            if operator is None:
                raise LogQLParseError(f"parse error at line 1, col {index + 1}: syntax error: unexpected {ch!r}")
            yield _Token("op", index, operator)
            index += len(operator)


def _compile(pattern: str, anchored: bool) -> re.Pattern[str]:
    try:
        # Prometheus anchors label regexes and lets "." match newlines; line filters search.
        return re.compile(f"(?s:{pattern})" if anchored else pattern)
    except re.error as exc:
        raise LogQLParseError(f"parse error : invalid regex {_go_quote(pattern)}: {exc}") from None


def parse_logql(query: str) -> LogQuery:
    """Parses ``{name="v", name=~"re", ...} |= "text" != "text" |~ "re" !~ "re"``."""
    tokens = _logql_tokens(query)

    def expect(kinds: tuple[str, ...], operators: tuple[str, ...] = ()) -> _Token:
        token = next(tokens)
        if token.kind in kinds or (token.kind == "op" and token.text in operators):
            return token
        found = "end of input" if token.kind == "eof" else token.text
        wanted = ", ".join(kinds + operators)
        if token.kind == "op" and token.text == "|":
            wanted += " (this fake receiver supports line filters only, no parser or format stages)"
        raise LogQLParseError(
            f"parse error at line 1, col {token.pos + 1}: syntax error: unexpected {found}, expecting {wanted}"
        )

    expect(("{",))
    matchers = []
    while True:
        name = expect(("identifier",)).text
        operator = expect((), ("=", "!=", "=~", "!~")).text
        value = _unquote(expect(("string",)).text)
        pattern = _compile(value, anchored=True) if operator in ("=~", "!~") else None
        matchers.append(_LabelMatcher(name, operator, value, pattern))
        if expect((",", "}")).kind == "}":
            break
    line_filters = []
    while (token := expect(("eof",), ("|=", "!=", "|~", "!~"))).kind != "eof":
        value = _unquote(expect(("string",)).text)
        pattern = _compile(value, anchored=False) if token.text in ("|~", "!~") else None
        line_filters.append(_LineFilter(token.text, value, pattern))
    if not any(matcher.selects_something() for matcher in matchers):
        raise LogQLParseError(_EMPTY_COMPATIBLE_SELECTOR)
    return LogQuery(tuple(matchers), tuple(line_filters))


# --------------------------------------------------------------------------------------------
# Configuration, faults and what the receiver reports.
# --------------------------------------------------------------------------------------------

DEFAULT_DISCOVER_SERVICE_NAME = (
    "service", "app", "application", "app_name", "name", "app_kubernetes_io_name", "container",
    "container_name", "k8s_container_name", "component", "workload", "job", "k8s_job_name",
)  # fmt: skip


@dataclass(frozen=True)
class LokiLimits:
    """Loki's limits_config, distributor and ingester settings that shape push answers (v3.7 defaults)."""

    reject_old_samples: bool = True
    reject_old_samples_max_age_s: float = 7 * 24 * 3600
    creation_grace_period_s: float = 10 * 60
    max_line_size_bytes: int = 256 * 1024  # 0 means unlimited
    max_line_size_truncate: bool = False
    max_line_size_truncate_identifier: str = ""
    max_label_names_per_series: int = 15
    max_label_name_length_bytes: int = 1024
    max_label_value_length_bytes: int = 2048
    allow_structured_metadata: bool = True
    max_structured_metadata_size_bytes: int = 64 * 1024
    max_structured_metadata_entries_count: int = 128
    discover_service_name: tuple[str, ...] = DEFAULT_DISCOVER_SERVICE_NAME
    ingestion_rate_bytes_per_s: int = 4 * MIB
    ingestion_burst_size_bytes: int = 6 * MIB
    unordered_writes: bool = True
    max_chunk_age_s: float = 2 * 3600  # the unordered-write window is half of this
    max_returned_errors: int = 10
    max_recv_msg_size_bytes: int = 100 * MIB


class Fault(enum.Enum):
    """What to do to a coming push request instead of (or on top of) answering like Loki."""

    RATE_LIMITED = "rate_limited"  # 429 with Loki's message; nothing is written
    INTERNAL_ERROR = "internal_error"  # 500; nothing is written
    UNAVAILABLE = "unavailable"  # 503; nothing is written
    DROP_CONNECTION = "drop_connection"  # connection closed without an answer; nothing is written
    DROP_AFTER_WRITE = "drop_after_write"  # written, then the connection closed without an answer
    SLOW_RESPONSE = "slow_response"  # written, answered after delay_s


_INTERNAL_ERROR_TEXT = "rpc error: code = Internal desc = injected by the fake receiver"
_UNAVAILABLE_TEXT = "too many unhealthy instances in the ring"


class LogEntry(NamedTuple):
    """An entry Loki stored: its stream's labels (with ``service_name``) and what was pushed."""

    labels: dict[str, str]
    ts_ns: int
    line: str
    structured_metadata: dict[str, str]


class PushReply(NamedTuple):
    """What the receiver answered to one push (body without Go's trailing newline)."""

    status: int
    body: str


@dataclass
class ReceiverStats:
    """Counters over the receiver's life; ``entries_*`` count log entries, the rest push requests."""

    push_requests: int = 0
    responses: Counter[int] = field(default_factory=Counter)  # by status code
    connections_dropped: int = 0
    entries_received: int = 0
    entries_stored: int = 0
    entries_deduplicated: int = 0  # identical to what the stream already holds, dropped silently

    def as_dict(self) -> dict[str, object]:
        counts = {name: value for name, value in vars(self).items() if name != "responses"}
        return counts | {"responses": {str(status): count for status, count in sorted(self.responses.items())}}


# --------------------------------------------------------------------------------------------
# Decoding a push request body.
# --------------------------------------------------------------------------------------------


class _PushError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Entry(NamedTuple):
    ts_ns: int
    line: str
    metadata: tuple[tuple[str, str], ...]  # structured metadata, in the order it was sent


class _Answer(NamedTuple):
    status: int | None  # None: close the connection without answering
    body: str
    delay_s: float  # how long to hold the answer back


class _RequestStream(NamedTuple):
    labels: str
    entries: list[_Entry]


_MIME_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')


def _consume_token(text: str) -> tuple[str, str]:
    end = 0
    while end < len(text) and 0x20 < ord(text[end]) < 0x7F and text[end] not in _MIME_TSPECIALS:
        end += 1
    return text[:end], text[end:]


def _skip_quoted_string(text: str) -> str | None:
    """The text after the quoted string that opens ``text``, or None when it is not closed."""
    index = 1
    while index < len(text):
        if text[index] == '"':
            return text[index + 1 :]
        index += 2 if text[index] == "\\" else 1
    return None


def _consume_media_param(text: str) -> tuple[str, str] | None:
    """One ``; name=value`` parameter: its lower-cased name and the text after it."""
    rest = text.lstrip()
    if not rest.startswith(";"):
        return None
    name, rest = _consume_token(rest[1:].lstrip())
    rest = rest.lstrip()
    if not name or not rest.startswith("="):
        return None
    rest = rest[1:].lstrip()
    if rest.startswith('"'):
        after = _skip_quoted_string(rest)
        return None if after is None else (name.lower(), after)
    value, after = _consume_token(rest)
    return (name.lower(), after) if value else None


def _parse_media_type(value: str) -> str:
    """Go's ``mime.ParseMediaType`` (Loki fails the push on its errors); returns the media type."""
    base = value.split(";", 1)[0]
    media_type = base.strip().lower()
    kind, rest = _consume_token(media_type)
    if not kind:
        raise _PushError(400, "mime: no media type")
    if rest:
        if not rest.startswith("/"):
            raise _PushError(400, "mime: expected slash after first token")
        subtype, rest = _consume_token(rest[1:])
        if not subtype:
            raise _PushError(400, "mime: expected token after slash")
        if rest:
            raise _PushError(400, "mime: unexpected content after media subtype")
    parameters = value[len(base) :]
    seen = set()
    while parameters := parameters.lstrip():
        consumed = _consume_media_param(parameters)
        if consumed is None:
            if parameters.strip() == ";":
                break  # Go ignores one trailing semicolon
            raise _PushError(400, "mime: invalid media parameter")
        name, parameters = consumed
        if name in seen:
            raise _PushError(400, "mime: duplicate parameter name")
        seen.add(name)
    return media_type


def _check_gzip_header(body: bytes) -> None:
    # gzip.NewReader reads the header at once, so Loki reports these before looking at the type.
    if not body:
        raise _PushError(400, "EOF")
    if len(body) < 10:
        raise _PushError(400, "unexpected EOF")
    if body[:3] != b"\x1f\x8b\x08":
        raise _PushError(400, "gzip: invalid header")


def _inflate(body: bytes, wbits: int) -> bytes:
    """Undoes gzip (``wbits=31``) or raw deflate (``wbits=-15``) with Go's error texts."""
    out = []
    data = body
    while data:
        inflater = zlib.decompressobj(wbits)
        try:
            out.append(inflater.decompress(data))
        except zlib.error as exc:
            checksum = "data check" in str(exc) or "length check" in str(exc)
            raise _PushError(400, "gzip: invalid checksum" if checksum else "flate: corrupt input") from None
        if not inflater.eof:
            raise _PushError(400, "unexpected EOF")
        # Go's gzip reader reads concatenated members; raw deflate stops at its final block.
        data = inflater.unused_data if wbits > 0 else b""
        if data:
            _check_gzip_header(data)
    return b"".join(out)


def _snappy_decoded_length(payload: bytes) -> int:
    length = shift = 0
    for index, byte in enumerate(payload[:10]):
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            if length > 0xFFFFFFFF or (index == 9 and byte > 1):
                break
            return length
        shift += 7
    raise _PushError(400, "snappy: corrupt input")


def _too_large(size: int, limit: int) -> _PushError:
    return _PushError(413, f"request body too large: message size too large than max ({size} vs {limit})")


_MIN_TIMESTAMP_SECONDS = -62135596800  # 0001-01-01
_MAX_TIMESTAMP_SECONDS = 253402300800  # 10000-01-01


def _proto_timestamp_ns(seconds: int, nanos: int) -> int:
    described = f"&Timestamp{{Seconds:{seconds},Nanos:{nanos},}}"
    if seconds < _MIN_TIMESTAMP_SECONDS:
        raise _PushError(400, f"timestamp: {described} before 0001-01-01")
    if seconds >= _MAX_TIMESTAMP_SECONDS:
        raise _PushError(400, f"timestamp: {described} after 10000-01-01")
    if not 0 <= nanos < NANOS_PER_SECOND:
        raise _PushError(400, f"timestamp: {described}: nanos not in range [0, 1e9)")
    return seconds * NANOS_PER_SECOND + nanos


def _decode_protobuf(payload: bytes, max_size: int) -> list[_RequestStream]:
    decoded_length = _snappy_decoded_length(payload)
    if decoded_length > max_size:
        raise _too_large(decoded_length, max_size)
    try:
        raw = bytes(cramjam.snappy.decompress_raw(payload))
    except cramjam.DecompressionError:
        raise _PushError(400, "snappy: corrupt input") from None
    request = loki_push_pb2.PushRequest()
    try:
        request.ParseFromString(raw)
    except DecodeError:
        # Python's decoder does not say what broke; a cut body is what Loki most often sees.
        raise _PushError(400, "unexpected EOF") from None
    return [
        _RequestStream(
            stream.labels,
            [
                _Entry(
                    _proto_timestamp_ns(entry.timestamp.seconds, entry.timestamp.nanos),
                    entry.line,
                    tuple((pair.name, pair.value) for pair in entry.structuredMetadata),
                )
                for entry in stream.entries
            ],
        )
        for stream in request.streams
    ]


class _JsonNumber(str):
    """A JSON number kept as its source text: Loki reads a non-string label value as raw JSON."""


def _reject_json_constant(name: str) -> None:
    raise ValueError(f"invalid JSON value {name}")


_JSON_STREAMS = "loghttp.PushRequest.Streams: []loghttp.LogProtoStream: "
_JSON_DECODER = _JSON_STREAMS + "unmarshalerDecoder: "
_JSON_NOT_STRING = _JSON_DECODER + "Value is string, but can't find closing '\"' symbol"
_JSON_NOT_OBJECT = _JSON_DECODER + "Value looks like object, but can't find closing '}' symbol"
_JSON_NOT_ARRAY = _JSON_DECODER + "Unknown value type"
_JSON_NOT_INTEGER = _JSON_DECODER + "Value looks like Number/Boolean/None, but can't find its end: ',' or '}' symbol"
_JSON_OVERFLOW = _JSON_DECODER + "Value is number, but overflowed while parsing"
_INT64 = re.compile(r"-?[0-9]+\Z")


def _is_json_string(value: object) -> bool:
    return type(value) is str  # _JsonNumber is a str subclass, and not a JSON string


def _json_text(value: object) -> str:
    """The JSON text of a decoded value (without the source's whitespace)."""
    if isinstance(value, _JsonNumber):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(_json_text(item) for item in value) + "]"
    if isinstance(value, dict):
        members = (f"{json.dumps(key, ensure_ascii=False)}:{_json_text(item)}" for key, item in value.items())
        return "{" + ",".join(members) + "}"
    return {True: "true", False: "false", None: "null"}[value]  # type: ignore[index]


def _json_labels(value: object) -> str:
    """loghttp.LabelSet.String(): keys sorted and written unquoted, values Go-quoted."""
    if not isinstance(value, dict):
        raise _PushError(400, _JSON_NOT_OBJECT)
    pairs = sorted((key, item if _is_json_string(item) else _json_text(item)) for key, item in value.items())
    return "{" + ", ".join(f"{key}={_go_quote(item)}" for key, item in pairs) + "}"


def _json_entry(value: object) -> _Entry:
    if not isinstance(value, list):
        raise _PushError(400, _JSON_NOT_ARRAY)
    ts_ns, line, metadata = 0, "", ()
    if len(value) > 0:  # further elements than the third are ignored, as in Loki
        if not _is_json_string(value[0]):
            raise _PushError(400, _JSON_NOT_STRING)
        if not _INT64.match(value[0]):
            raise _PushError(400, _JSON_NOT_INTEGER)
        ts_ns = int(value[0])
        if not -(1 << 63) <= ts_ns < 1 << 63:
            raise _PushError(400, _JSON_OVERFLOW)
    if len(value) > 1:
        if not _is_json_string(value[1]):
            raise _PushError(400, _JSON_NOT_STRING)
        line = value[1]
    if len(value) > 2:
        if not isinstance(value[2], dict):
            raise _PushError(400, _JSON_NOT_OBJECT)
        if not all(_is_json_string(item) for item in value[2].values()):
            raise _PushError(400, _JSON_NOT_STRING)
        metadata = tuple(value[2].items())
    return _Entry(ts_ns, line, metadata)


def _json_stream(value: object) -> _RequestStream:
    if not isinstance(value, dict):
        raise _PushError(400, _JSON_NOT_OBJECT)
    labels = _json_labels(value["stream"]) if "stream" in value else ""
    values = value.get("values")
    if values is None:
        return _RequestStream(labels, [])
    if not isinstance(values, list):
        raise _PushError(400, _JSON_NOT_ARRAY)
    return _RequestStream(labels, [_json_entry(item) for item in values if item is not None])


def _decode_json(payload: bytes) -> list[_RequestStream]:
    if not payload.strip():
        raise _PushError(400, "EOF")
    try:
        document = json.loads(
            payload, parse_int=_JsonNumber, parse_float=_JsonNumber, parse_constant=_reject_json_constant
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise _PushError(400, f"loghttp.PushRequest.ReadObject: {exc}") from None
    if document is None:
        return []
    if not isinstance(document, dict):
        found = _json_text(document)[:1]
        raise _PushError(400, f"loghttp.PushRequest.readObjectStart: expect {{ or n, but found {found}")
    streams = document.get("streams")
    if streams is None:
        return []
    if not isinstance(streams, list):
        raise _PushError(400, _JSON_STREAMS + "decode slice: expect [ or n, but found " + _json_text(streams)[:1])
    return [_json_stream(item) for item in streams]


# --------------------------------------------------------------------------------------------
# The receiver: distributor validation, ingester streams, storage, HTTP.
# --------------------------------------------------------------------------------------------

_TENANT_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!-_.*'()")
_TENANT_ID_MAX_LENGTH = 150


class _TokenBucket:
    """Go's rate.Limiter as Loki's ingestion limiter uses it (AllowN, no waiting)."""

    def __init__(self, rate_per_s: float, burst: int, now_ns: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.updated_ns = now_ns

    def allow(self, amount: int, now_ns: int) -> bool:
        elapsed_s = max(0, now_ns - self.updated_ns) / NANOS_PER_SECOND
        self.tokens = min(float(self.burst), self.tokens + elapsed_s * self.rate_per_s)
        self.updated_ns = max(self.updated_ns, now_ns)
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


class _Stream:
    """One ingester stream: what it stored and the state its ordering and dedup rules read."""

    def __init__(self, labels: tuple[tuple[str, str], ...], labels_text: str, keep_entries: bool) -> None:
        self.labels = dict(labels)
        self.labels_text = labels_text
        self.entries: list[_Entry] | None = [] if keep_entries else None
        self.stored: set[_Entry] = set()
        self.last: _Entry | None = None
        self.highest_ts_ns: int | None = None


def _group_errors(messages: list[str]) -> str:
    """util.GroupedErrors: every message gets ``N errors like: `` unless there is a single one."""
    counts = Counter(messages)  # first-seen order; Loki's order is Go's map order (random)
    if len(counts) == 1 and len(messages) == 1:
        return messages[0]
    return "; ".join(f"{count} errors like: {message}" for message, count in counts.items())


def _metadata_size(metadata: tuple[tuple[str, str], ...]) -> int:
    return sum(_utf8_len(name) + _utf8_len(value) for name, value in metadata)


def _normalize_metadata_name(name: str) -> str:
    """otlptranslator NormalizeLabel, which Loki 3.x applies to structured metadata names."""
    if not name:
        return name
    name = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    if name[0].isdigit():
        return "key_" + name
    if name.startswith("_") and not name.startswith("__"):
        return "key" + name
    return name


class LokiReceiver:
    """A Loki push endpoint on 127.0.0.1, in a background thread.

    Use as a context manager (or ``start()``/``stop()``); ``url`` is the base URL, ``push_url``
    the push endpoint. ``limits`` may be replaced between pushes. ``clock_ns`` is the receiver's
    notion of now (validation windows and the rate limiter). With ``count_only`` the receiver
    keeps counters and per-stream ordering state but no entries, for long benchmark runs; it then
    deduplicates against each stream's last entry only.
    """

    def __init__(
        self,
        *,
        limits: LokiLimits = LokiLimits(),
        auth_enabled: bool = False,
        count_only: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.limits = limits
        self.auth_enabled = auth_enabled
        self.count_only = count_only
        self._address = (host, port)
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._streams: dict[str, dict[str, _Stream]] = {}
        self._buckets: dict[str, tuple[tuple[int, int], _TokenBucket]] = {}
        self._faults: deque[tuple[Fault, float]] = deque()
        self._stats = ReceiverStats()
        self._replies: list[PushReply] = []
        self._server: _ReceiverHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> LokiReceiver:
        self._server = _ReceiverHTTPServer(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="loki-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening and closes open connections, as a Loki that went away would."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        assert self._thread is not None
        self._thread.join()
        self._server = None

    def __enter__(self) -> LokiReceiver:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "the receiver is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def push_url(self) -> str:
        return self.url + PUSH_PATH

    # -- scripting and reading back ------------------------------------------------------------

    def inject_fault(self, fault: Fault, count: int = 1, delay_s: float = 0.0) -> None:
        """Applies ``fault`` to each of the next ``count`` push requests (queued after earlier ones).

        ``delay_s`` is how long a ``SLOW_RESPONSE`` holds its answer back.
        """
        with self._lock:
            self._faults.extend([(fault, delay_s)] * count)

    @property
    def stats(self) -> ReceiverStats:
        with self._lock:
            return replace(self._stats, responses=Counter(self._stats.responses))

    @property
    def replies(self) -> list[PushReply]:
        """Every answer sent so far, in order (kept unless ``count_only``)."""
        with self._lock:
            return list(self._replies)

    def streams(self, tenant: str = FAKE_TENANT) -> list[dict[str, str]]:
        """Label sets of the tenant's streams (including ``service_name``), in creation order."""
        with self._lock:
            return [dict(stream.labels) for stream in self._streams.get(tenant, {}).values()]

    def entries(self, tenant: str = FAKE_TENANT, selector: Mapping[str, str] | None = None) -> list[LogEntry]:
        """Stored entries of every stream whose labels include ``selector``, oldest first."""
        wanted = dict(selector or {})
        return self._collect(tenant, lambda labels: wanted.items() <= labels.items(), lambda _line: True)

    def query(self, tenant: str, logql: str) -> list[tuple[dict[str, str], int, str]]:
        """Evaluates a stream selector with line filters: ``(labels, ts_ns, line)``, oldest first."""
        parsed = parse_logql(logql)
        return [
            (entry.labels, entry.ts_ns, entry.line) for entry in self._collect(tenant, parsed.selects, parsed.keeps)
        ]

    def _collect(
        self, tenant: str, selects: Callable[[Mapping[str, str]], bool], keeps: Callable[[str], bool]
    ) -> list[LogEntry]:
        if self.count_only:
            raise RuntimeError("a count-only receiver keeps no entries")
        with self._lock:
            found = [
                LogEntry(dict(stream.labels), entry.ts_ns, entry.line, dict(entry.metadata))
                for stream in self._streams.get(tenant, {}).values()
                if selects(stream.labels)
                for entry in stream.entries or ()
                if keeps(entry.line)
            ]
        return sorted(found, key=lambda entry: entry.ts_ns)

    # -- one push request ----------------------------------------------------------------------

    def _answer_push(self, headers: Mapping[str, str], body: bytes) -> _Answer:
        """Answers one push request (the HTTP handler calls this with the raw headers and body)."""
        with self._lock:
            fault, delay_s = self._faults.popleft() if self._faults else (None, 0.0)
            self._stats.push_requests += 1
            if fault is Fault.DROP_CONNECTION:
                self._stats.connections_dropped += 1
                return _Answer(None, "", 0.0)
            if fault is Fault.INTERNAL_ERROR:
                reply = PushReply(500, _INTERNAL_ERROR_TEXT)
            elif fault is Fault.UNAVAILABLE:
                reply = PushReply(503, _UNAVAILABLE_TEXT)
            else:
                try:
                    reply = self._push(headers, body, rate_limited=fault is Fault.RATE_LIMITED)
                except _PushError as rejection:
                    reply = PushReply(rejection.status, rejection.message)
            if fault is Fault.DROP_AFTER_WRITE:
                self._stats.connections_dropped += 1
                return _Answer(None, "", 0.0)
            self._stats.responses[reply.status] += 1
            if not self.count_only:
                self._replies.append(reply)
        return _Answer(reply.status, reply.body, delay_s if fault is Fault.SLOW_RESPONSE else 0.0)

    def _tenant(self, headers: Mapping[str, str]) -> str:
        if not self.auth_enabled:
            return FAKE_TENANT
        org_id = headers.get("X-Scope-OrgID") or ""
        if not org_id:
            raise _PushError(401, "no org id")
        tenants = org_id.split("|")
        for tenant in tenants:
            invalid = next((ch for ch in tenant if ch not in _TENANT_ID_CHARACTERS), None)
            if invalid is not None:
                raise _PushError(400, f"tenant ID '{tenant}' contains unsupported character '{invalid}'")
            if len(tenant) > _TENANT_ID_MAX_LENGTH:
                raise _PushError(400, f"tenant ID is too long: max {_TENANT_ID_MAX_LENGTH} characters")
            if tenant in (".", ".."):
                raise _PushError(400, "tenant ID is '.' or '..'")
        if len(set(tenants)) > 1:
            raise _PushError(400, "multiple org IDs present")
        return tenants[0]

    def _decode(self, headers: Mapping[str, str], body: bytes, limits: LokiLimits) -> list[_RequestStream]:
        encoding = headers.get("Content-Encoding") or ""
        if encoding not in ("", "snappy", "gzip", "deflate"):
            raise _PushError(400, f"Content-Encoding {_go_quote(encoding)} not supported")
        if encoding == "gzip":
            _check_gzip_header(body)
        media_type = _parse_media_type(headers.get("Content-Type") or "")
        if len(body) > limits.max_recv_msg_size_bytes:
            raise _too_large(len(body), limits.max_recv_msg_size_bytes)
        if encoding == "gzip":
            body = _inflate(body, wbits=31)
        elif encoding == "deflate":
            body = _inflate(body, wbits=-15)  # Go's flate is raw DEFLATE: a zlib wrapper fails
        if media_type == "application/json":
            return _decode_json(body)  # a snappy Content-Encoding is not undone for JSON
        return _decode_protobuf(body, limits.max_recv_msg_size_bytes)

    def _stream_labels(self, text: str, limits: LokiLimits) -> tuple[tuple[str, str], ...]:
        try:
            pairs = [pair for pair in parse_labels(text) if pair[1] != ""]
        except LabelParseError as exc:
            raise _PushError(400, f"couldn't parse labels: {exc}") from None
        if limits.discover_service_name and all(name != SERVICE_NAME for name, _ in pairs):
            found = (value for wanted in limits.discover_service_name for name, value in pairs if name == wanted)
            pairs.append((SERVICE_NAME, next(found, UNKNOWN_SERVICE)))
        return tuple(sorted(pairs, key=lambda pair: pair[0]))

    def _push(self, headers: Mapping[str, str], body: bytes, rate_limited: bool) -> PushReply:
        limits = self.limits
        tenant = self._tenant(headers)
        request = self._decode(headers, body, limits)
        self._stats.entries_received += sum(len(stream.entries) for stream in request)
        # The push handler parses every stream's labels first: one bad set fails the request.
        streams = [(self._stream_labels(stream.labels, limits), stream.entries) for stream in request]
        if not streams:
            return PushReply(422, "error at least one valid stream is required for ingestion")

        now_ns = self._clock_ns()
        errors: list[str] = []
        valid: list[tuple[tuple[tuple[str, str], ...], str, list[_Entry]]] = []
        for labels, entries in streams:
            if not entries:
                continue
            labels_text = format_labels(labels)
            label_error = self._label_error(labels, labels_text, limits)
            if label_error:
                errors.append(label_error)
                continue
            kept = []
            for entry in self._truncated(entries, limits):
                entry_error = self._entry_error(entry, labels_text, now_ns, limits)
                if entry_error:
                    errors.append(entry_error)
                    continue
                names = tuple((_normalize_metadata_name(name), value) for name, value in entry.metadata)
                kept.append(entry._replace(metadata=names))
            if kept:
                valid.append((labels, labels_text, kept))

        validation_error = _group_errors(errors) if errors else None
        if not valid:
            return PushReply(400, validation_error) if validation_error else PushReply(204, "")

        lines = sum(len(entries) for _, _, entries in valid)
        size = sum(_utf8_len(e.line) + _metadata_size(e.metadata) for _, _, entries in valid for e in entries)
        if rate_limited or not self._bucket(tenant, limits, now_ns).allow(size, now_ns):
            return PushReply(
                429,
                f"ingestion rate limit exceeded for user {tenant} (limit: {limits.ingestion_rate_bytes_per_s} "
                f"bytes/sec) while attempting to ingest '{lines}' lines totaling '{size}' bytes, reduce log "
                "volume or contact your Loki administrator to see if the limit can be increased",
            )

        # A single ingester gets all streams in one request and answers with the error of the last
        # stream only (ingester instance.Push): errors of earlier streams never reach the client.
        ingester_error = None
        for labels, labels_text, entries in valid:
            ingester_error = self._ingest(tenant, labels, labels_text, entries, limits)
        if ingester_error:
            return PushReply(400, ingester_error)
        if validation_error:
            return PushReply(400, validation_error)
        return PushReply(204, "")

    @staticmethod
    def _label_error(labels: tuple[tuple[str, str], ...], labels_text: str, limits: LokiLimits) -> str | None:
        if not labels:
            return "error at least one label pair is required per stream"
        # service_name is added by Loki itself, so it does not count against the limit.
        count = len(labels) - (1 if any(name == SERVICE_NAME for name, _ in labels) else 0)
        if count > limits.max_label_names_per_series:
            return (
                f"entry for stream '{labels_text}' has {count} label names; limit {limits.max_label_names_per_series}"
            )
        previous = ""
        for name, value in labels:
            if _utf8_len(name) > limits.max_label_name_length_bytes:
                return f"stream '{labels_text}' has label name too long: '{name}'"
            if _utf8_len(value) > limits.max_label_value_length_bytes:
                return f"stream '{labels_text}' has label value too long: '{value}'"
            if name == previous:
                return f"stream '{labels_text}' has duplicate label name: '{name}'"
            previous = name
        return None

    @staticmethod
    def _truncated(entries: list[_Entry], limits: LokiLimits) -> list[_Entry]:
        limit = limits.max_line_size_bytes
        if not limits.max_line_size_truncate or not limit:
            return entries
        identifier = limits.max_line_size_truncate_identifier
        keep = limit - _utf8_len(identifier)
        # Loki cuts bytes, maybe inside a character; surrogate escapes keep such partial bytes.
        return [
            entry._replace(
                line=entry.line.encode("utf-8", "surrogateescape")[:keep].decode("utf-8", "surrogateescape")
                + identifier
            )
            if _utf8_len(entry.line) > limit
            else entry
            for entry in entries
        ]

    @staticmethod
    def _entry_error(entry: _Entry, labels_text: str, now_ns: int, limits: LokiLimits) -> str | None:
        oldest_ns = now_ns - int(limits.reject_old_samples_max_age_s * NANOS_PER_SECOND)
        if limits.reject_old_samples and entry.ts_ns < oldest_ns:
            return (
                f"entry for stream '{labels_text}' has timestamp too old: {_go_rfc3339(entry.ts_ns)}, "
                f"oldest acceptable timestamp is: {_go_rfc3339(oldest_ns)}"
            )
        if entry.ts_ns > now_ns + int(limits.creation_grace_period_s * NANOS_PER_SECOND):
            return f"entry for stream '{labels_text}' has timestamp too new: {_go_rfc3339(entry.ts_ns)}"
        line_size = _utf8_len(entry.line)
        if limits.max_line_size_bytes and line_size > limits.max_line_size_bytes:
            return (
                f"max entry size '{limits.max_line_size_bytes}' bytes exceeded for stream '{labels_text}' "
                f"while adding an entry with length '{line_size}' bytes"
            )
        if entry.metadata:
            if not limits.allow_structured_metadata:
                return (
                    f"stream '{labels_text}' includes structured metadata, but this feature is disallowed. Please "
                    "see `limits_config.allow_structured_metadata` or contact your Loki administrator to enable it."
                )
            size = _metadata_size(entry.metadata)
            if limits.max_structured_metadata_size_bytes and size > limits.max_structured_metadata_size_bytes:
                return (
                    f"stream '{labels_text}' has structured metadata too large: '{size}' bytes, limit: "
                    f"'{limits.max_structured_metadata_size_bytes}' bytes. Please see "
                    "`limits_config.max_structured_metadata_size` or contact your Loki administrator to increase it."
                )
            count = len(entry.metadata)
            if limits.max_structured_metadata_entries_count and count > limits.max_structured_metadata_entries_count:
                return (
                    f"stream '{labels_text}' has too many structured metadata labels: '{count}', limit: "
                    f"'{limits.max_structured_metadata_entries_count}'. Please see "
                    "`limits_config.max_structured_metadata_entries_count` or contact your Loki administrator to "
                    "increase it."
                )
        return None

    def _bucket(self, tenant: str, limits: LokiLimits, now_ns: int) -> _TokenBucket:
        setting = (limits.ingestion_rate_bytes_per_s, limits.ingestion_burst_size_bytes)
        current = self._buckets.get(tenant)
        if current is None or current[0] != setting:
            current = (setting, _TokenBucket(setting[0], setting[1], now_ns))
            self._buckets[tenant] = current
        return current[1]

    def _ingest(
        self,
        tenant: str,
        labels: tuple[tuple[str, str], ...],
        labels_text: str,
        entries: list[_Entry],
        limits: LokiLimits,
    ) -> str | None:
        """The ingester's stream push: dedup, ordering window, storage; returns its error text."""
        stream = self._streams.setdefault(tenant, {}).get(labels_text)
        if stream is None:
            stream = _Stream(labels, labels_text, keep_entries=not self.count_only)
            self._streams[tenant][labels_text] = stream
        window_ns = int(limits.max_chunk_age_s * NANOS_PER_SECOND) // 2
        failures: list[tuple[_Entry, str]] = []
        accepted: list[_Entry] = []
        last, highest = stream.last, stream.highest_ts_ns
        for entry in entries:
            if entry == last:  # the same timestamp, line and metadata as the stream's last entry
                self._stats.entries_deduplicated += 1
                continue
            if limits.unordered_writes and highest is not None and highest - window_ns > entry.ts_ns:
                failures.append(
                    (
                        entry,
                        f"entry too far behind, entry timestamp is: {_go_rfc3339(entry.ts_ns)}, "
                        f"oldest acceptable timestamp is: {_go_rfc3339(highest - window_ns)}",
                    )
                )
                continue
            last, highest = entry, entry.ts_ns if highest is None else max(highest, entry.ts_ns)
            accepted.append(entry)
        for entry in accepted:
            if not limits.unordered_writes and stream.highest_ts_ns is not None and entry.ts_ns < stream.highest_ts_ns:
                failures.append((entry, "entry out of order"))
                continue
            # The head block ignores an entry it already holds (same timestamp and content);
            # here the whole stream counts as head block, so a replay never shows twice.
            if self.count_only or entry not in stream.stored:
                if stream.entries is not None:
                    stream.entries.append(entry)
                    stream.stored.add(entry)
                self._stats.entries_stored += 1
            else:
                self._stats.entries_deduplicated += 1
            stream.last = entry
            stream.highest_ts_ns = (
                entry.ts_ns if stream.highest_ts_ns is None else max(stream.highest_ts_ns, entry.ts_ns)
            )
        if not failures:
            return None
        shown = failures[: limits.max_returned_errors] if limits.max_returned_errors > 0 else failures
        reported = "".join(
            f"entry with timestamp {_go_time_string(entry.ts_ns)} ignored, reason: '{reason}',\n"
            for entry, reason in shown
        )
        return (
            f"{reported}user '{tenant}', total ignored: {len(failures)} out of {len(entries)} for stream: {labels_text}"
        )


class _ReceiverHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a slow answer being held back must not delay stop()

    def __init__(self, address: tuple[str, int], receiver: LokiReceiver) -> None:
        self.receiver = receiver
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _PushRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (socket.getfqdn), which costs every test
        # tens of milliseconds; the name is only used in CGI variables.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # the client may have closed it already
                connection.shutdown(socket.SHUT_RDWR)


class _PushRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Loki; a dropped connection is then visible
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would hold the body back 40 ms
    server: _ReceiverHTTPServer

    def do_POST(self) -> None:
        body = self._read_body()
        if urlsplit(self.path).path != PUSH_PATH:
            self._answer(404, "404 page not found")
            return
        status, text, delay_s = self.server.receiver._answer_push(self.headers, body)
        if status is None:
            self.close_connection = True
            return
        if delay_s:
            time.sleep(delay_s)
        self._answer(status, text)

    def _other_method(self) -> None:
        self._read_body()
        if urlsplit(self.path).path == PUSH_PATH:
            self._answer(405, None)
        else:
            self._answer(404, "404 page not found")

    do_GET = do_PUT = do_DELETE = do_PATCH = _other_method

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, text: str | None) -> None:
        """Go's http.Error for errors (text/plain, message and newline); 204 and 405 have no body."""
        try:
            self.send_response(status)
            if text is None or status == 204:
                if status != 204:
                    self.send_header("Content-Length", "0")
                self.end_headers()
                return
            payload = (text + "\n").encode("utf-8", "surrogateescape")
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting

    def log_message(self, format: str, *args: object) -> None:  # `format`: the base class's parameter name
        pass  # tests read replies and stats, not an access log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.receivers.loki", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3100, help="0 picks a free port")
    parser.add_argument("--auth-enabled", action="store_true", help="require X-Scope-OrgID (else tenant 'fake')")
    parser.add_argument("--count-only", action="store_true", help="keep counters only, no entries")
    options = parser.parse_args(argv)
    receiver = LokiReceiver(
        auth_enabled=options.auth_enabled, count_only=options.count_only, host=options.host, port=options.port
    )
    stopping = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stopping.set())
    with receiver:
        print(f"listening on {receiver.url}", flush=True)
        stopping.wait()
    print(json.dumps(receiver.stats.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
