"""A strict fake Elasticsearch 8.x/9.x node for the `_bulk`, `_count` and `_search` APIs.

Test equipment for the Elasticsearch sink (PROTOCOLS.md §1). The official `elasticsearch` Python
client works against it unchanged, and it refuses what a real node refuses, with the same status
and error body:

- `GET /` and `HEAD /` with a real-looking info body; `X-elastic-product: Elasticsearch` on every
  response except 401 and 403, so the client's product check behaves as against a real node.
- Media types and REST API compatibility (`compatible-with=N`) checked as RestRequest does:
  406 with a string error for a missing or unknown Content-Type, 400
  `media_type_header_exception` for a version the emulated major cannot serve (so the 9.x
  client fails against the 8.x emulation, as it does against a real 8.x node).
- `_bulk` bodies parsed line by line as BulkRequestParser does, including its 8.x leniencies and
  its 9.x strictness, the required trailing newline, gzip bodies and `http.max_content_length`.
- Per-item results as the shard produces them: generated ids, versions, sequence numbers,
  `create` conflicts (409), index-name validation, JSON and duplicate-key errors and a small
  dynamic mapping (long, float, boolean, text, date, object) whose type conflicts fail the
  way DocumentParser fails them.
- `index.mapping.total_fields.limit` (`total_fields_limit`, default 1000): a document whose new
  fields would exceed it fails alone, as DocumentParser fails it, and adds nothing.
- `_count` and `_search` (GET or POST, on `/`, an index, a comma list or a wildcard pattern) with
  match_all, term, match and bool (must/filter/must_not/should), size, from and track_total_hits;
  404 index_not_found_exception for a missing concrete index, 400 parsing_exception for an unknown
  query. Writes are visible at once (as with refresh=true) and scores are not BM25; see the
  section's comment for the rest of what is simplified.
- `filter_path`, basic/API-key/bearer authentication, and scripted faults (whole-request 429/
  500/503, dropped connections, slow answers, per-item 429/503 and flood-stage blocks), queued
  per endpoint: `inject(RejectRequest(503), on="_search")`; `clear_faults()` drops what is still
  queued, so a long fault storm can end on cue.
- HTTPS (`tls=True`) with a throwaway CA (`ca_file`), optionally requiring a client certificate
  from the same CA (`require_client_cert=True`; `client_cert_file`, `client_key_file`). Failed
  handshakes cost only their connection.

Use from tests::

    with ElasticsearchReceiver(version="9.1.0") as es:
        Elasticsearch(es.url).bulk(operations=[{"create": {"_index": "logs", "_id": "1"}}, {"m": 1}])
        es.inject(FailItems({0: ItemFault.REJECTED}), RejectRequest(429))
        assert es.documents("logs") == [{"m": 1}]

Run as a counting `_bulk` sink for benchmarks (prints counts as JSON on SIGINT/SIGTERM)::

    python -m tests.receivers.elasticsearch --port 9200 [--version 8.19.0] [--count-only]

In count-only mode `_count` counts (match_all only, as no sources are kept) and `_search` answers
400 illegal_argument_exception saying why.

Where the real node's behaviour was not verified, the code says so in a comment.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import dataclasses
import enum
import functools
import gzip
import http.server
import json
import math
import re
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from tests.receivers._tls import TLSFiles, cut

DEFAULT_MAX_CONTENT_LENGTH = 100 * 1024 * 1024  # http.max_content_length default (100mb)
_PRODUCT_HEADER = ("X-elastic-product", "Elasticsearch")
_MAX_ID_BYTES = 512
_MAX_INDEX_NAME_BYTES = 255
# Per-request coordinating limit shown in indexing-pressure rejections: 10% of a 1 GiB heap.
_INDEXING_PRESSURE_LIMIT_BYTES = 107_374_182
# One primary and one (unassigned) replica per index, as on a single-node cluster.
_SHARDS = {"total": 2, "successful": 1, "failed": 0}
_NOOP_SHARDS = {"total": 0, "successful": 0, "failed": 0}

# What `GET /` reports per emulated major, from real 8.19 and 9.1 nodes.
_BUILDS = {
    8: {
        "build_hash": "8dd9d6b9b3b1f3ec0d8e2e9c1a1f2c6f3b9b4d1e",
        "build_date": "2025-07-24T14:59:55.109185427Z",
        "lucene_version": "9.12.2",
        "minimum_wire_compatibility_version": "7.17.0",
        "minimum_index_compatibility_version": "7.0.0",
    },
    9: {
        "build_hash": "cc4ff9e8c6d5e27c7a9c5c1b0d0aa2b7e2f5f8c4",
        "build_date": "2025-07-24T15:05:16.281738549Z",
        "lucene_version": "10.2.2",
        "minimum_wire_compatibility_version": "8.19.0",
        "minimum_index_compatibility_version": "8.0.0",
    },
}

# Query parameters RestBulkAction consumes, plus the ones every REST handler accepts; any other
# makes the request fail with "contains unrecognized parameter".
_BULK_PARAMETERS = frozenset(
    {
        "filter_path",
        "pretty",
        "human",
        "error_trace",
        "format",
        "refresh",
        "pipeline",
        "routing",
        "timeout",
        "wait_for_active_shards",
        "require_alias",
        "require_data_stream",
        "list_executed_pipelines",
        "include_source_on_error",
        "_source",
        "_source_includes",
        "_source_excludes",
    }
)
_SUPPORTED_ACTIONS = ("create", "delete", "index", "update")
_VERSION_TYPES = frozenset({"internal", "external", "external_gt", "external_gte"})
# Strings.INVALID_FILENAME_CHARS as printed since elastic/elasticsearch#130027: sorted, quoted.
_INVALID_INDEX_CHARS = sorted('\\/*?"<>| ,')
_INVALID_INDEX_CHARS_TEXT = "[" + ",".join(f"'{c}'" for c in _INVALID_INDEX_CHARS) + "]"
_INVALID_INDEX_CHAR = re.compile("[" + re.escape("".join(_INVALID_INDEX_CHARS)) + "]")
_WWW_AUTHENTICATE = ('Basic realm="security", charset="UTF-8"', 'Bearer realm="security"', "ApiKey")


# Faults and credentials --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RejectRequest:
    """Answer a whole `_bulk` request with an error instead of processing it.

    Without `error_type`/`reason`, the body is what a real node sends for that status:
    429 es_rejected_execution_exception (indexing pressure), 503 cluster_block_exception
    (state not recovered) and, for anything else, a generic `exception`.
    """

    status: int = 429
    error_type: str | None = None
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class DropConnection:
    """Close the connection without an answer after the request body was read.

    With `after_processing`, the items are applied first: the client cannot tell whether its
    documents were stored, which is the case `create` with an `_id` exists for.
    """

    after_processing: bool = False


@dataclasses.dataclass(frozen=True)
class Delay:
    """Wait this long before processing and answering (a slow or overloaded node)."""

    seconds: float


class ItemFault(enum.Enum):
    """Per-item failures a shard reports inside an HTTP 200 `_bulk` response."""

    REJECTED = "es_rejected_execution_exception"  # 429: write queue or indexing pressure
    UNAVAILABLE = "unavailable_shards_exception"  # 503: primary not active
    BLOCKED = "cluster_block_exception"  # 429: flood-stage disk watermark
    FORBIDDEN = "security_exception"  # 403: the user's role may not write to this index


@dataclasses.dataclass(frozen=True)
class FailItems:
    """Fail items of one `_bulk` request; the other items are processed normally.

    `faults` maps 0-based item positions to a fault; `every` fails all items.
    """

    faults: Mapping[int, ItemFault] = dataclasses.field(default_factory=dict)
    every: ItemFault | None = None

    def fault_at(self, position: int) -> ItemFault | None:
        return self.every or self.faults.get(position)


Fault = RejectRequest | DropConnection | Delay | FailItems
_ENDPOINTS = ("_bulk", "_count", "_search")


@dataclasses.dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str

    def authorization(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclasses.dataclass(frozen=True)
class ApiKeyAuth:
    """Sent as `Authorization: ApiKey base64(id:api_key)`, as the official clients do."""

    id: str
    api_key: str

    def authorization(self) -> str:
        return "ApiKey " + base64.b64encode(f"{self.id}:{self.api_key}".encode()).decode()


@dataclasses.dataclass(frozen=True)
class BearerAuth:
    token: str

    def authorization(self) -> str:
        return f"Bearer {self.token}"


Credential = BasicAuth | ApiKeyAuth | BearerAuth


# Records -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BulkExchange:
    """One `_bulk` request as the receiver saw it.

    `status` is None when the connection was dropped. `item_statuses` holds the per-item
    statuses of a 200 answer (empty in count-only mode, to keep memory flat).
    """

    status: int | None
    item_statuses: tuple[int, ...]
    fault: Fault | None
    body_bytes: int
    content_encoding: str | None


@dataclasses.dataclass(frozen=True)
class ReceiverStats:
    connections: int  # TCP connections accepted (keep-alive reuses one)
    requests: int  # HTTP requests read, whatever the outcome
    bulk_requests: int
    bulk_items: int  # items in 200 `_bulk` answers
    item_failures: int  # of those, items with an error
    documents: int  # documents stored now, all indices


# JSON tokens, the way Jackson reads them -----------------------------------------------------
#
# Elasticsearch parses JSON with Jackson, token by token, so which error a malformed line gets
# depends on how far the parser read before it stopped. The tokenizer below is lazy for the same
# reason, and raises Jackson's messages at the position Jackson would. ES enables comments and
# strict duplicate-key detection on its JSON factory (JsonXContentImpl).

START_OBJECT = "START_OBJECT"
END_OBJECT = "END_OBJECT"
START_ARRAY = "START_ARRAY"
END_ARRAY = "END_ARRAY"
FIELD_NAME = "FIELD_NAME"
VALUE_STRING = "VALUE_STRING"
VALUE_NUMBER = "VALUE_NUMBER"
VALUE_BOOLEAN = "VALUE_BOOLEAN"
VALUE_NULL = "VALUE_NULL"
_SCALARS = frozenset({VALUE_STRING, VALUE_NUMBER, VALUE_BOOLEAN})

_BLANK = re.compile(r"[ \t\r\n]*")
_PLAIN_STRING = re.compile(r'[^"\\\x00-\x1f\udc80-\udcff]*')  # \udc80.. marks undecodable bytes
_WORD = re.compile(r"[\w$]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DIGITS = re.compile(r"[0-9]*")
_VALID_VALUES = "(JSON String, Number, Array, Object or token 'null', 'true' or 'false')"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


@dataclasses.dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    value: object
    start: int  # character index of the token's first character


class JsonSyntaxError(Exception):
    """Jackson's JsonParseException: `message` includes the `at [Source: ...]` suffix."""

    def __init__(self, message: str, column: int, *, end_of_input: bool) -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.end_of_input = end_of_input


def _byte_column(text: str, index: int) -> int:
    """Jackson's 1-based column: it parses bytes, so it counts UTF-8 bytes."""
    return len(text[:index].encode("utf-8", "surrogateescape")) + 1


def _jackson_location(text: str, index: int) -> str:
    # Jackson 2.17 with source inclusion, as ES parses (includes at most 500 bytes of the input).
    # The exact column Jackson reports for each kind of error was not verified.
    raw = text.encode("utf-8", "surrogateescape")
    shown = raw[:500].decode("utf-8", "replace")
    truncated = f"[truncated {len(raw) - 500} bytes]" if len(raw) > 500 else ""
    return f'[Source: (byte[])"{shown}"{truncated}; line: 1, column: {_byte_column(text, index)}]'


def _syntax_error(text: str, core: str, index: int, *, end_of_input: bool = False) -> JsonSyntaxError:
    message = f"{core}\n at {_jackson_location(text, index)}"
    return JsonSyntaxError(message, _byte_column(text, index), end_of_input=end_of_input)


def _char_description(char: str) -> str:
    code = ord(char)
    if code < 32 or 0x7F <= code <= 0x9F:
        return f"(CTRL-CHAR, code {code})"
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
        return f"(code {code - 0xDC00})"
    if code > 255:
        return f"'{char}' (code {code} / 0x{code:x})"
    return f"'{char}' (code {code})"


def _unexpected(text: str, index: int, expectation: str) -> JsonSyntaxError:
    if index >= len(text):
        return _syntax_error(text, f"Unexpected end-of-input: {expectation}", index, end_of_input=True)
    return _syntax_error(text, f"Unexpected character ({_char_description(text[index])}): {expectation}", index)


def _skip_blank(text: str, index: int) -> int:
    while True:
        index = _BLANK.match(text, index).end()
        if not text.startswith("/", index):
            return index
        if text.startswith("/*", index):
            end = text.find("*/", index + 2)
            if end < 0:
                raise _syntax_error(text, "Unexpected end-of-input in a comment", len(text), end_of_input=True)
            index = end + 2
        elif text.startswith("//", index):
            end = text.find("\n", index + 2)
            index = len(text) if end < 0 else end + 1
        else:
            raise _unexpected(text, index + 1, "was expecting either '*' or '/' for a comment")


def _scan_string(text: str, index: int) -> tuple[str, int]:
    """Read the string whose opening quote is at `index`; return it and the index after it."""
    position = index + 1
    pieces: list[str] = []
    while True:
        end = _PLAIN_STRING.match(text, position).end()
        pieces.append(text[position:end])
        if end >= len(text):
            raise _syntax_error(
                text,
                "Unexpected end-of-input: was expecting closing quote for a string value",
                end,
                end_of_input=True,
            )
        char = text[end]
        if char == '"':
            value = "".join(pieces)
            if _SURROGATE.search(value):  # escaped UTF-16 pairs make one character, as in Java
                value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
            return value, end + 1
        if char == "\\":
            escape = text[end + 1 : end + 2]
            if escape in _ESCAPES:
                pieces.append(_ESCAPES[escape])
                position = end + 2
            elif escape == "u":
                digits = text[end + 2 : end + 6]
                for offset, digit in enumerate(digits.ljust(4, "\0")):
                    if digit not in "0123456789abcdefABCDEF":
                        raise _unexpected(text, end + 2 + offset, "expected a hex-digit for character escape sequence")
                pieces.append(chr(int(digits, 16)))
                position = end + 6
            elif not escape:
                raise _syntax_error(
                    text, "Unexpected end-of-input in character escape sequence", end + 1, end_of_input=True
                )
            else:
                raise _syntax_error(text, f"Unrecognized character escape {_char_description(escape)}", end + 1)
        elif char < " ":
            raise _syntax_error(
                text,
                f"Illegal unquoted character ({_char_description(char)}): has to be escaped using "
                "backslash to be included in string value",
                end,
            )
        else:
            raise _syntax_error(text, f"Invalid UTF-8 start byte 0x{ord(char) - 0xDC00:x}", end)


def _scan_number(text: str, index: int) -> tuple[int | float, int]:
    position = index + 1 if text[index] == "-" else index
    if not "0" <= text[position : position + 1] <= "9":
        if text.startswith("Infinity", position):
            raise _non_standard(text, "-Infinity", index)
        raise _numeric_unexpected(text, position, "expected digit (0-9) to follow minus sign, for valid numeric value")
    integer_end = _DIGITS.match(text, position).end()
    if text[position] == "0" and integer_end > position + 1:
        raise _syntax_error(text, "Invalid numeric value: Leading zeroes not allowed", position)
    end = integer_end
    is_float = False
    if text.startswith(".", end):
        fraction_end = _DIGITS.match(text, end + 1).end()
        if fraction_end == end + 1:
            raise _numeric_unexpected(text, fraction_end, "Decimal point not followed by a digit")
        end, is_float = fraction_end, True
    if text[end : end + 1] in ("e", "E"):
        exponent_start = end + 2 if text[end + 1 : end + 2] in ("+", "-") else end + 1
        exponent_end = _DIGITS.match(text, exponent_start).end()
        if exponent_end == exponent_start:
            raise _numeric_unexpected(text, exponent_end, "Exponent indicator not followed by a digit")
        end, is_float = exponent_end, True
    literal = text[index:end]
    return (float(literal) if is_float else int(literal)), end


def _numeric_unexpected(text: str, index: int, expectation: str) -> JsonSyntaxError:
    if index >= len(text):
        return _syntax_error(text, f"Unexpected end-of-input in numeric value: {expectation}", index, end_of_input=True)
    description = _char_description(text[index])
    return _syntax_error(text, f"Unexpected character ({description}) in numeric value: {expectation}", index)


def _non_standard(text: str, token: str, index: int) -> JsonSyntaxError:
    return _syntax_error(
        text, f"Non-standard token '{token}': enable `JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS` to allow", index
    )


def _scan_word(text: str, index: int) -> tuple[object, int]:
    """A bare word in value position: a literal, or Jackson's "Unrecognized token"."""
    end = _WORD.match(text, index).end()
    word = text[index:end]
    if word in ("true", "false"):
        return word == "true", end
    if word == "null":
        return None, end
    if word in ("NaN", "Infinity"):
        raise _non_standard(text, word, index)
    raise _syntax_error(text, f"Unrecognized token '{word}': was expecting {_VALID_VALUES}", index)


_EXPECT_VALUE, _EXPECT_VALUE_OR_END, _EXPECT_NAME, _EXPECT_NAME_OR_END, _EXPECT_COMMA_OR_END = range(5)


def json_tokens(text: str) -> Iterator[_Token]:
    """Yield Jackson's tokens for `text` lazily; raise JsonSyntaxError where Jackson would.

    Like Jackson it accepts several root values in a row, so a caller decides what trailing
    data means (ES answers that differently for action lines and for documents).
    """
    length = len(text)
    scopes: list[tuple[bool, int, set[str]]] = []  # (is_object, start index, names seen)
    state = _EXPECT_VALUE
    index = 0
    while True:
        index = _skip_blank(text, index)
        if index >= length:
            if scopes:
                is_object, start, _ = scopes[-1]
                kind = "Object" if is_object else "Array"
                raise _syntax_error(
                    text,
                    f"Unexpected end-of-input: expected close marker for {kind} "
                    f"(start marker at {_jackson_location(text, start)})",
                    index,
                    end_of_input=True,
                )
            return
        char = text[index]
        if char < " ":
            raise _syntax_error(
                text,
                f"Illegal character ({_char_description(char)}): only regular white space "
                "(\\r, \\n, \\t) is allowed between tokens",
                index,
            )
        if state in (_EXPECT_COMMA_OR_END, _EXPECT_NAME_OR_END, _EXPECT_VALUE_OR_END) and char in "}]":
            is_object, start, _ = scopes.pop()
            expected = "}" if is_object else "]"
            if char != expected:
                kind = "Object" if is_object else "Array"
                raise _syntax_error(
                    text,
                    f"Unexpected close marker '{char}': expected '{expected}' "
                    f"(for {kind} starting at {_jackson_location(text, start)})",
                    index,
                )
            yield _Token(END_OBJECT if is_object else END_ARRAY, None, index)
            index += 1
            state = _EXPECT_COMMA_OR_END if scopes else _EXPECT_VALUE
            continue
        if state == _EXPECT_COMMA_OR_END:
            if char != ",":
                kind = "Object" if scopes[-1][0] else "Array"
                raise _unexpected(text, index, f"was expecting comma to separate {kind} entries")
            index += 1
            state = _EXPECT_NAME if scopes[-1][0] else _EXPECT_VALUE
            continue
        if state in (_EXPECT_NAME, _EXPECT_NAME_OR_END):
            if char != '"':
                raise _unexpected(text, index, "was expecting double-quote to start field name")
            name, after = _scan_string(text, index)
            names = scopes[-1][2]
            if name in names:
                raise _syntax_error(text, f"Duplicate field '{name}'", after)
            names.add(name)
            yield _Token(FIELD_NAME, name, index)
            index = _skip_blank(text, after)
            if text[index : index + 1] != ":":
                raise _unexpected(text, index, "was expecting a colon to separate field name and value")
            index += 1
            state = _EXPECT_VALUE
            continue
        # A value: at the root, after a colon, or in an array.
        if char == "{":
            scopes.append((True, index, set()))
            yield _Token(START_OBJECT, None, index)
            index += 1
            state = _EXPECT_NAME_OR_END
            continue
        if char == "[":
            scopes.append((False, index, set()))
            yield _Token(START_ARRAY, None, index)
            index += 1
            state = _EXPECT_VALUE_OR_END
            continue
        if char == '"':
            value, end = _scan_string(text, index)
            token = _Token(VALUE_STRING, value, index)
        elif char == "-" or "0" <= char <= "9":
            value, end = _scan_number(text, index)
            token = _Token(VALUE_NUMBER, value, index)
        elif char.isalpha() or char in "_$":
            value, end = _scan_word(text, index)
            token = _Token(VALUE_NULL if value is None else VALUE_BOOLEAN, value, index)
        else:
            raise _unexpected(text, index, f"expected a valid value {_VALID_VALUES}")
        yield token
        index = end
        state = _EXPECT_COMMA_OR_END if scopes else _EXPECT_VALUE


# Error bodies --------------------------------------------------------------------------------


def _exception(error_type: str, reason: str | None, *, caused_by: dict | None = None, **metadata: object) -> dict:
    """ElasticsearchException.toXContent: type, reason, metadata, then the cause."""
    error: dict = {"type": error_type, "reason": reason, **metadata}
    if caused_by is not None:
        error["caused_by"] = caused_by
    return error


def _error_body(status: int, error: dict) -> dict:
    """RestResponse for an exception; the root cause is the exception itself for every error here."""
    root_cause = {key: value for key, value in error.items() if key != "caused_by"}
    return {"error": {"root_cause": [root_cause], **error}, "status": status}


def _xcontent_exception(error: JsonSyntaxError) -> dict:
    """JsonXContentParser's wrapping of a Jackson error (XContentEOFException at end of input)."""
    if error.end_of_input:
        outer, inner = "x_content_e_o_f_exception", "json_e_o_f_exception"
    else:
        outer, inner = "x_content_parse_exception", "json_parse_exception"
    return _exception(outer, f"[1:{error.column}] {error.message}", caused_by=_exception(inner, error.message))


class RequestRejected(Exception):
    """A whole-request error: the HTTP status and the JSON body to answer with."""

    def __init__(self, status: int, body: dict) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def _bad_request(error: dict) -> RequestRejected:
    return RequestRejected(400, _error_body(400, error))


def _illegal_argument(reason: str) -> RequestRejected:
    return _bad_request(_exception("illegal_argument_exception", reason))


class _ItemError(Exception):
    """A per-item failure inside a 200 `_bulk` answer."""

    def __init__(self, status: int, error: dict) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


# `_bulk` request body, as BulkRequestParser reads it -------------------------------------------


@dataclasses.dataclass(frozen=True)
class _UpdateSpec:
    doc: dict | None
    upsert: dict | None
    doc_as_upsert: bool
    detect_noop: bool
    scripted: bool


@dataclasses.dataclass(frozen=True)
class _BulkItem:
    action: str  # create, delete, index or update, as written on the action line
    answer_key: str  # `index` with op_type create answers as `create`
    index: str | None
    doc_id: str | None
    source: bytes | None  # the document line of index/create, `\r` trimmed
    update: _UpdateSpec | None


# The action-line fast path takes only string-valued metadata among these keys.
_FAST_METADATA_KEYS = frozenset({"_index", "_id", "routing", "pipeline", "op_type"})


def _fast_action_line(raw: bytes) -> tuple[str, dict[str, str]] | None:
    """Parse the common `{"create":{"_index":"x","_id":"y"}}` shape with orjson.

    Returns None for anything else, which then goes through the exact token-level path. A
    duplicated key would be merged silently by orjson; it shows up as extra quotes, because
    every string in the accepted shape accounts for exactly two.
    """
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(parsed) is not dict or len(parsed) != 1:
        return None
    ((action, metadata),) = parsed.items()
    if action not in _SUPPORTED_ACTIONS or type(metadata) is not dict:
        return None
    for key, value in metadata.items():
        if key not in _FAST_METADATA_KEYS or type(value) is not str:
            return None
    if raw.count(b'"') != 2 + 4 * len(metadata):
        return None
    return action, metadata


@dataclasses.dataclass
class _ActionLine:
    action: str
    index: str | None
    doc_id: str | None = None
    op_type: str | None = None
    versioned: bool = False  # version or version_type given (update refuses both)
    require_data_stream: bool = False
    dynamic_templates: bool = False


class _ActionLineParser:
    """BulkRequestParser's reading of one action/metadata line, token by token."""

    def __init__(self, text: str, line: int, major: int, rest_major: int, default_index: str | None) -> None:
        self._text = text
        self._line = line
        self._major = major
        self._rest_major = rest_major
        self._default_index = default_index
        self._tokens = json_tokens(text)

    def parse(self) -> _ActionLine | None:
        try:
            return self._parse()
        except JsonSyntaxError as error:
            raise _bad_request(_xcontent_exception(error)) from None

    def _next(self) -> _Token | None:
        return next(self._tokens, None)

    def _malformed(self, detail: str) -> RequestRejected:
        return _illegal_argument(f"Malformed action/metadata line [{self._line}], {detail}")

    def _parse(self) -> _ActionLine | None:
        token = self._next()
        if token is None:
            return None  # a blank line
        if token.kind != START_OBJECT:
            raise self._malformed(f"expected START_OBJECT but found [{token.kind}]")
        token = self._next()
        if token.kind != FIELD_NAME:
            raise self._malformed(f"expected FIELD_NAME but found [{token.kind}]")
        action = token.value
        if action not in _SUPPORTED_ACTIONS and self._major >= 9:
            raise self._malformed(f"expected field [create], [delete], [index] or [update] but found [{action}]")
        # 8.x only logs a deprecation warning for an unknown action and skips it later.
        parsed = _ActionLine(action, self._default_index)
        token = self._next()
        if token.kind == START_OBJECT:
            self._read_metadata(parsed)
        elif token.kind != END_OBJECT:
            raise self._malformed(f"expected START_OBJECT or END_OBJECT but found [{token.kind}]")
        self._check_closed()
        if action == "delete" and parsed.dynamic_templates:
            raise _illegal_argument(f"Delete request in line [{self._line}] does not accept dynamic_templates")
        if action == "update":
            if parsed.versioned:
                raise _illegal_argument(
                    "Update requests do not support versioning. Please use `if_seq_no` and `if_primary_term` instead"
                )
            if parsed.require_data_stream:
                raise _illegal_argument(
                    "Update requests do not support the `require_data_stream` flag, as data streams do not "
                    "support update operations"
                )
            if parsed.dynamic_templates:
                raise _illegal_argument(f"Update request in line [{self._line}] does not accept dynamic_templates")
        return parsed

    def _read_metadata(self, parsed: _ActionLine) -> None:
        field = None
        while (token := self._next()).kind != END_OBJECT:
            if token.kind == FIELD_NAME:
                field = token.value
            elif token.kind in _SCALARS:
                self._read_parameter(parsed, field, token)
            elif token.kind == START_ARRAY:
                raise self._malformed(f"expected a simple value for field [{field}] but found [{token.kind}]")
            elif token.kind == START_OBJECT and field == "dynamic_templates":
                parsed.dynamic_templates = self._skip_object()
            elif token.kind == START_OBJECT and field == "_source":
                self._skip_object()
            elif token.kind != VALUE_NULL:  # a null value is ignored, whatever the key
                raise self._malformed(f"expected a simple value for field [{field}] but found [{token.kind}]")

    def _skip_object(self) -> bool:
        """Skip the rest of an object whose START_OBJECT was just read; True if it had fields."""
        depth, fields = 1, False
        while depth:
            token = self._next()
            fields |= depth == 1 and token.kind == FIELD_NAME
            depth += token.kind in (START_OBJECT, START_ARRAY)
            depth -= token.kind in (END_OBJECT, END_ARRAY)
        return fields

    def _read_parameter(self, parsed: _ActionLine, field: str | None, token: _Token) -> None:
        text = self._token_text(token)
        if field == "_index":
            parsed.index = text
        elif field == "_type" and self._rest_major >= 8:
            raise _illegal_argument(f"Action/metadata line [{self._line}] contains an unknown parameter [_type]")
        elif field == "_id":
            parsed.doc_id = text
        elif field == "op_type":
            parsed.op_type = text
        elif field in ("version", "if_seq_no", "if_primary_term", "retry_on_conflict"):
            self._require_number(token, text)
            parsed.versioned |= field == "version"
        elif field == "version_type":
            if text not in _VERSION_TYPES:
                raise _illegal_argument(f"No version type match [{text}]")
            parsed.versioned |= text != "internal"
        elif field in ("require_alias", "require_data_stream", "list_executed_pipelines"):
            flag = self._require_boolean(token, text)
            if field == "require_data_stream":
                parsed.require_data_stream = flag
        elif field not in ("_type", "routing", "pipeline", "_source"):
            raise _illegal_argument(f"Action/metadata line [{self._line}] contains an unknown parameter [{field}]")

    def _token_text(self, token: _Token) -> str:
        """XContentParser.text(): numbers and booleans as they were written."""
        if token.kind == VALUE_STRING:
            return token.value
        return (
            "true" if token.value is True else "false" if token.value is False else _number_literal(self._text, token)
        )

    def _require_number(self, token: _Token, text: str) -> None:
        if token.kind == VALUE_BOOLEAN:
            raise _bad_request(_accessor_error(self._text, token, "not numeric, can not use numeric value accessors"))
        if token.kind == VALUE_STRING and not _JAVA_DECIMAL.fullmatch(text):
            raise _illegal_argument(f'For input string: "{text}"')

    def _require_boolean(self, token: _Token, text: str) -> bool:
        if token.kind == VALUE_NUMBER:
            raise _bad_request(_accessor_error(self._text, token, "not of boolean type"))
        if text not in ("true", "false"):
            raise _illegal_argument(f"Failed to parse value [{text}] as only [true] or [false] are allowed.")
        return text == "true"

    def _check_closed(self) -> None:
        """After the metadata, REST API v8 (an 8.x node, or a 9.x node asked for compatible-with=8)
        tolerates extra keys, a missing brace and trailing data with a deprecation warning; v9 does not."""
        lenient = self._rest_major < 9
        try:
            token = self._next()
        except JsonSyntaxError as error:
            if error.end_of_input and lenient:
                return
            raise
        if token.kind != END_OBJECT:
            if lenient:
                return
            raise self._malformed(f"expected END_OBJECT but found [{token.kind}]")
        if self._next() is not None and not lenient:
            raise self._malformed("unexpected data after the closing brace")


def _number_literal(text: str, token: _Token) -> str:
    end = _scan_number(text, token.start)[1]
    return text[token.start : end]


def _accessor_error(text: str, token: _Token, problem: str) -> dict:
    """Jackson's complaint when a typed accessor meets the wrong token, wrapped by ES."""
    if token.kind == VALUE_BOOLEAN:
        jackson_token = "VALUE_TRUE" if token.value else "VALUE_FALSE"
    elif token.kind == VALUE_NUMBER:
        jackson_token = "VALUE_NUMBER_FLOAT" if isinstance(token.value, float) else "VALUE_NUMBER_INT"
    else:
        jackson_token = token.kind
    message = f"Current token ({jackson_token}) {problem}\n at {_jackson_location(text, token.start)}"
    return _exception(
        "x_content_parse_exception",
        f"[1:{_byte_column(text, token.start)}] {message}",
        caused_by=_exception("json_parse_exception", message),
    )


# Java's Long/BigDecimal string forms, which numeric coercion accepts.
_JAVA_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_UPDATE_FIELDS = frozenset({"doc", "upsert", "doc_as_upsert", "detect_noop", "script", "scripted_upsert", "_source"})


def _parse_update_body(raw: bytes) -> _UpdateSpec:
    """UpdateRequest.fromXContent, which runs while the bulk body is parsed."""
    text = raw.decode("utf-8", "surrogateescape")
    tokens = json_tokens(text)
    try:
        first = next(tokens, None)
        if first is None or first.kind != START_OBJECT:
            # ObjectParser's refusal; where Jackson places an empty line was not verified.
            kind, column = ("null", 1) if first is None else (first.kind, _byte_column(text, first.start))
            raise _bad_request(
                _exception(
                    "x_content_parse_exception", f"[1:{column}] [UpdateRequest] Expected START_OBJECT but was: {kind}"
                )
            )
        fields: dict[str, object] = {}
        while (token := next(tokens)).kind != END_OBJECT:
            name = token.value
            if name not in _UPDATE_FIELDS:
                raise _bad_request(
                    _exception(
                        "x_content_parse_exception",
                        f"[1:{_byte_column(text, token.start)}] [UpdateRequest] unknown field [{name}]",
                    )
                )
            value_token = next(tokens)
            value = _read_token_value(value_token, tokens)
            if name in ("doc", "upsert") and value_token.kind != START_OBJECT:
                raise _bad_request(
                    _exception(
                        "x_content_parse_exception",
                        f"[1:{_byte_column(text, value_token.start)}] [UpdateRequest] {name} doesn't support "
                        f"values of type: {value_token.kind}",
                    )
                )
            fields[name] = value
    except JsonSyntaxError as error:
        raise _bad_request(_xcontent_exception(error)) from None
    return _UpdateSpec(
        doc=fields.get("doc"),
        upsert=fields.get("upsert"),
        doc_as_upsert=fields.get("doc_as_upsert") is True,
        detect_noop=fields.get("detect_noop", True) is not False,
        scripted="script" in fields,
    )


def _read_token_value(token: _Token, tokens: Iterator[_Token]) -> object:
    """AbstractXContentParser.readValue: the whole value starting at `token`, as Python data."""
    if token.kind == START_OBJECT:
        value: dict = {}
        while (name := next(tokens)).kind != END_OBJECT:
            value[name.value] = _read_token_value(next(tokens), tokens)
        return value
    if token.kind == START_ARRAY:
        items = []
        while (element := next(tokens)).kind != END_ARRAY:
            items.append(_read_token_value(element, tokens))
        return items
    return token.value


def parse_bulk_body(body: bytes, *, default_index: str | None, major: int, rest_major: int) -> list[_BulkItem]:
    """Split a `_bulk` body into items, or raise RequestRejected as the node would.

    ES reads line by line and stops at the first problem, so an early bad line wins over a
    missing final newline, and a last action without its document line is dropped silently.
    """
    lines = body.split(b"\n")
    unterminated_tail = lines.pop()  # bytes after the last newline
    items: list[_BulkItem] = []
    position = 0
    line_number = 0

    def next_line() -> bytes | None:
        nonlocal position, line_number
        if position == len(lines):
            if unterminated_tail:
                raise _illegal_argument("The bulk request must be terminated by a newline [\\n]")
            return None
        position += 1
        line_number += 1
        return lines[position - 1]

    while (raw := next_line()) is not None:
        fast = _fast_action_line(raw)
        if fast is not None:
            action, metadata = fast
            parsed = _ActionLine(
                action, metadata.get("_index", default_index), metadata.get("_id"), metadata.get("op_type")
            )
        else:
            parser = _ActionLineParser(
                raw.decode("utf-8", "surrogateescape"), line_number, major, rest_major, default_index
            )
            parsed = parser.parse()
            if parsed is None:
                continue
        if parsed.action == "delete":
            items.append(_BulkItem("delete", "delete", parsed.index, parsed.doc_id, None, None))
            continue
        document = next_line()
        if document is None:
            break
        if document.endswith(b"\r"):
            document = document[:-1]
        if parsed.action == "update":
            items.append(_BulkItem("update", "update", parsed.index, parsed.doc_id, None, _parse_update_body(document)))
        elif parsed.action in ("index", "create"):
            answer_key = "create" if parsed.action == "create" or parsed.op_type == "create" else "index"
            items.append(_BulkItem(parsed.action, answer_key, parsed.index, parsed.doc_id, document, None))
    return items


def _validation_failures(items: list[_BulkItem]) -> list[str]:
    """BulkRequest.validate: every item's ActionRequestValidationException, numbered together."""
    failures = [] if items else ["no requests added"]
    for item in items:
        if not item.index:
            failures.append("index is missing")
        if item.action in ("delete", "update") and not item.doc_id:
            failures.append("id is missing")
        elif item.doc_id and (size := len(item.doc_id.encode("utf-8", "surrogateescape"))) > _MAX_ID_BYTES:
            failures.append(
                f"id [{item.doc_id}] is too long, must be no longer than {_MAX_ID_BYTES} bytes but was: {size}"
            )
        if item.update is not None and item.update.doc is None and not item.update.scripted:
            failures.append("script or doc is missing")
    return failures


@functools.lru_cache(maxsize=4096)  # a bulk body names few indices, many times over
def _index_name_problem(name: str) -> str | None:
    """MetadataCreateIndexService's checks, in its order, for an index auto-created by `_bulk`."""
    if _INVALID_INDEX_CHAR.search(name):
        return f"must not contain the following characters {_INVALID_INDEX_CHARS_TEXT}"
    if "#" in name:
        return "must not contain '#'"
    if ":" in name:
        return "must not contain ':'"
    if name[0] in "_-+":
        return "must not start with '_', '-', or '+'"
    if (size := len(name.encode("utf-8", "surrogateescape"))) > _MAX_INDEX_NAME_BYTES:
        return f"index name is too long, ({size} > {_MAX_INDEX_NAME_BYTES})"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if name.lower() != name:
        return "must be lowercase"
    return None


# Documents and dynamic mapping, as DocumentParser handles them ---------------------------------

_OBJECT = "object"
_DATE_FORMAT = "strict_date_optional_time||epoch_millis"
# Dynamic date detection, simplified: ISO dates with an optional time and zone
# (strict_date_optional_time) and the yyyy/MM/dd forms of the second default dynamic format.
# A bare year, which strict_date_optional_time would also accept, stays text here.
_DETECTED_DATE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:[.,]\d{1,9})?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"
    r"|(\d{4})/(\d{2})/(\d{2})(?: (\d{2}):(\d{2}):(\d{2}))?"
)
_EPOCH_MILLIS = re.compile(r"-?\d+(?:\.\d+)?")
# Float.parseFloat's accepted forms (it trims the string first).
_JAVA_FLOAT = re.compile(r"[+-]?(?:NaN|Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fFdD]?)")


def _is_date(text: str) -> bool:
    match = _DETECTED_DATE.fullmatch(text)
    if match is None:
        return False
    numbers = [int(group) if group else 0 for group in match.groups()]
    year, month, day = numbers[0:3] if match.group(1) else numbers[6:9]
    hour, minute, second = numbers[3:6] if match.group(1) else numbers[9:12]
    try:
        time.strptime(f"{year:04d}-{month:02d}-{day:02d}", "%Y-%m-%d")
    except ValueError:
        return False
    return hour < 24 and minute < 60 and second < 60


def _java_string(value: object) -> str:
    """String.valueOf of what readValue returns: HashMap, ArrayList, Integer, Double, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _java_double(value)
    if isinstance(value, dict):
        # HashMap order is hash order; insertion order is the same for one key, close enough otherwise.
        return "{" + ", ".join(f"{key}={_java_string(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_java_string(item) for item in value) + "]"
    return str(value)


def _java_double(value: float) -> str:
    """Double.toString: the shortest digits (as repr), laid out Java's way."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if 1e-3 <= abs(value) < 1e7 or value == 0:
        return repr(value)
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    significant = "".join(map(str, digits)).rstrip("0") or "0"
    decimal_exponent = exponent + len(digits) - 1
    return f"{'-' if sign else ''}{significant[0]}.{significant[1:] or '0'}E{decimal_exponent}"


def _split_field_name(name: str) -> list[str]:
    """DotExpandingXContentParser: `a.b` is the field `b` inside the object `a`.

    Java's String.split drops trailing empty parts. The messages for names made of dots or with
    empty parts were not verified.
    """
    if "." not in name:
        return [name]
    parts = name.split(".")
    while parts and not parts[-1]:
        parts.pop()
    if not parts:
        raise _FieldNameError("field name cannot contain only dots")
    if any(not part.strip() for part in parts):
        raise _FieldNameError(f"field name cannot contain only whitespace: ['{name}']")
    return parts


class _FieldNameError(Exception):
    """An IllegalArgumentException about a field name, which DocumentParser wraps."""


class _DocumentParser:
    """Parse one document against an index mapping, adding dynamic mappings as ES does.

    Mappings a document adds count for the rest of that same document; ES collects them and may
    instead fail the merge ("mapper [x] cannot be changed from type [long] to [text]"), which is
    not emulated. Failures raise _ItemError with ES's reason, location and cause.

    `index.mapping.total_fields.limit` is checked as DocumentParserContext.addDynamicMapper does,
    eagerly at each new field: the mapped fields plus this document's new ones (a dynamic string
    is two, text and its `.keyword` multi-field) may not exceed `fields_limit`.
    """

    def __init__(
        self,
        text: str,
        mapping: Mapping[tuple[str, ...], str],
        doc_id: str,
        *,
        fields_limit: int | None = None,
        mapped_fields: int = 0,
    ) -> None:
        self._text = text
        self._mapping = mapping
        self._doc_id = doc_id
        self._fields_limit = fields_limit
        self._mapped_fields = mapped_fields
        self._new_fields = 0
        self._tokens = json_tokens(text)
        self._current: _Token | None = None
        self.new_mappings: dict[tuple[str, ...], str] = {}

    def parse(self) -> dict:
        if not self._text:
            raise _ItemError(400, _exception("document_parsing_exception", "[0:0] failed to parse, document is empty"))
        try:
            first = self._advance()
        except JsonSyntaxError as error:
            raise self._parse_failure(error) from None
        if first is None or first.kind != START_OBJECT:
            raise _ItemError(
                400, _exception("document_parsing_exception", "Malformed content, must start with an object")
            )
        try:
            document = self._members(())
        except JsonSyntaxError as error:
            raise self._wrapped(f"[1:{error.column}] {error.message}", _xcontent_exception(error)) from None
        except _FieldNameError as error:
            raise self._wrapped(str(error), _exception("illegal_argument_exception", str(error))) from None
        try:
            extra = self._advance()
        except JsonSyntaxError as error:
            raise self._parse_failure(error) from None
        if extra is not None:
            raise _ItemError(
                400,
                _exception(
                    "illegal_argument_exception", f"Malformed content, found extra data after parsing: {extra.kind}"
                ),
            )
        return document

    def _advance(self) -> _Token | None:
        self._current = next(self._tokens, None)
        return self._current

    def _location(self, index: int) -> str:
        return f"1:{_byte_column(self._text, index)}"

    def _failure(self, index: int, message: str, cause: dict | None = None) -> _ItemError:
        reason = f"[{self._location(index)}] {message}"
        return _ItemError(400, _exception("document_parsing_exception", reason, caused_by=cause))

    def _parse_failure(self, error: JsonSyntaxError) -> _ItemError:
        """A Jackson error outside the field walk: ES prefixes the location once more."""
        reason = f"[1:{error.column}] [1:{error.column}] {error.message}"
        return _ItemError(400, _exception("document_parsing_exception", reason, caused_by=_xcontent_exception(error)))

    def _wrapped(self, message: str, cause: dict) -> _ItemError:
        """wrapInDocumentParsingException: located at the last token read."""
        return self._failure(self._current.start, f"failed to parse: {message}", cause)

    def _type_of(self, path: tuple[str, ...]) -> str | None:
        return self.new_mappings.get(path) or self._mapping.get(path)

    def _members(self, path: tuple[str, ...]) -> dict:
        members: dict = {}
        while (token := self._advance()).kind != END_OBJECT:
            name = token.value
            if name == "":
                raise _FieldNameError("Field name cannot be an empty string")
            if not name.strip():
                dotted = ".".join((*path, name))
                raise self._failure(token.start, f"Field name cannot contain only whitespace: [{dotted}]")
            members[name] = self._field(path, _split_field_name(name), self._advance())
        return members

    def _field(self, parent: tuple[str, ...], parts: list[str], token: _Token) -> object:
        for depth, part in enumerate(parts[:-1]):
            parent = (*parent, part)
            mapped = self._type_of(parent)
            if mapped is None:
                self._add_mapping(parent, _OBJECT)
            elif mapped != _OBJECT:
                # The dotted name stands for an object, which a leaf field cannot take.
                raise self._field_failure(parent, mapped, token, self._object_cause(mapped, token), parts[depth + 1 :])
        return self._value(parent, parts[-1], token)

    def _value(self, parent: tuple[str, ...], leaf: str, token: _Token) -> object:
        path = (*parent, leaf)
        if token.kind == START_OBJECT:
            mapped = self._type_of(path)
            if mapped is None:
                self._add_mapping(path, _OBJECT)
            elif mapped != _OBJECT:
                raise self._field_failure(path, mapped, token, self._object_cause(mapped, token))
            return self._members(path)
        if token.kind == START_ARRAY:
            # Every element of an array, nested or not, is a value of the same field.
            values = []
            while (element := self._advance()).kind != END_ARRAY:
                values.append(self._value(parent, leaf, element))
            return values
        if token.kind == VALUE_NULL:
            return None
        mapped = self._type_of(path)
        if mapped == _OBJECT:
            raise self._failure(
                token.start,
                f"object mapping for [{'.'.join(path)}] tried to parse field [{leaf}] as object, "
                "but found a concrete value",
            )
        if mapped is None:
            self._add_mapping(path, _dynamic_type(token))
        elif (cause := self._value_cause(mapped, token)) is not None:
            raise self._field_failure(path, mapped, token, cause)
        return token.value

    def _add_mapping(self, path: tuple[str, ...], kind: str) -> None:
        added = self._new_fields + _field_count(kind)
        if self._fields_limit is not None and self._mapped_fields + added > self._fields_limit:
            # MappingLookup.checkFieldLimit; DocumentParser wraps it at the value being parsed.
            limit = self._fields_limit
            message = f"Limit of total fields [{limit}] has been exceeded while adding new fields [{added}]"
            raise self._wrapped(message, _exception("illegal_argument_exception", message))
        self._new_fields = added
        self.new_mappings[path] = kind

    def _field_failure(
        self, path: tuple[str, ...], mapped: str, token: _Token, cause: dict, inner_path: list[str] = ()
    ) -> _ItemError:
        """FieldMapper.rethrowAsDocumentParsingException: reads the whole value for the preview."""
        head = f"failed to parse field [{'.'.join(path)}] of type [{mapped}] in document with id '{self._doc_id}'."
        try:
            value = _read_token_value(token, self._current_tokens())
        except JsonSyntaxError:
            return self._failure(self._current.start, f"{head} Could not parse field value preview,", cause)
        for name in reversed(inner_path):
            value = {name: value}
        return self._failure(self._current.start, f"{head} Preview of field's value: '{_java_string(value)}'", cause)

    def _current_tokens(self) -> Iterator[_Token]:
        """The remaining tokens, keeping `_current` up to date as they are read."""
        while (token := self._advance()) is not None:
            yield token

    def _object_cause(self, mapped: str, token: _Token) -> dict:
        """What a leaf field mapper throws when handed an object."""
        if mapped in ("long", "float"):
            return _exception("illegal_argument_exception", "Cannot parse object as number")
        if mapped == "boolean":
            return _accessor_error(self._text, _Token(START_OBJECT, None, token.start), "not of boolean type")
        return _exception(
            "illegal_state_exception", f"Can't get text on a START_OBJECT at {self._location(token.start)}"
        )

    def _value_cause(self, mapped: str, token: _Token) -> dict | None:
        """What the field mapper throws for a scalar it cannot take, or None if it takes it."""
        value = token.value
        if mapped == "text" or (token.kind == VALUE_STRING and value == "" and mapped != "date"):
            return None  # anything goes into text; numbers and booleans coerce "" to null
        if mapped in ("long", "float"):
            if token.kind == VALUE_NUMBER:
                return None
            if token.kind == VALUE_BOOLEAN:
                return _accessor_error(self._text, token, "not numeric, can not use numeric value accessors")
            if mapped == "long":
                return (
                    None
                    if _JAVA_DECIMAL.fullmatch(value)
                    else _exception("illegal_argument_exception", f'For input string: "{value}"')
                )
            return (
                None
                if _JAVA_FLOAT.fullmatch(value.strip())
                else _exception("number_format_exception", f'For input string: "{value}"')
            )
        if mapped == "boolean":
            if token.kind == VALUE_NUMBER:
                return _accessor_error(self._text, token, "not of boolean type")
            if token.kind == VALUE_BOOLEAN or value in ("true", "false"):
                return None
            return _exception(
                "illegal_argument_exception", f"Failed to parse value [{value}] as only [true] or [false] are allowed."
            )
        # date
        if token.kind == VALUE_NUMBER or (
            token.kind == VALUE_STRING and (_is_date(value) or _EPOCH_MILLIS.fullmatch(value))
        ):
            return None
        text = value if token.kind == VALUE_STRING else _java_string(value)
        return _exception(
            "illegal_argument_exception",
            f"failed to parse date field [{text}] with format [{_DATE_FORMAT}]",
            caused_by=_exception("date_time_parse_exception", "Failed to parse with all enclosed parsers"),
        )


def _field_count(kind: str) -> int:
    """Mapper.getTotalFieldsCount of a dynamic mapper: a string becomes text with a `keyword`
    multi-field (kept implicit in the mapping here), which counts as a second field."""
    return 2 if kind == "text" else 1


def _dynamic_type(token: _Token) -> str:
    """DynamicFieldsBuilder's defaults: no numeric detection, date detection on."""
    if token.kind == VALUE_BOOLEAN:
        return "boolean"
    if token.kind == VALUE_NUMBER:
        return "float" if isinstance(token.value, float) else "long"
    return "date" if _is_date(token.value) else "text"


# Indices and item execution ------------------------------------------------------------------


def _random_id(byte_count: int) -> str:
    """URL-safe base64 without padding: 15 bytes make ES's 20-character generated ids."""
    return base64.urlsafe_b64encode(secrets.token_bytes(byte_count)).rstrip(b"=").decode()


@dataclasses.dataclass(slots=True)
class _StoredDocument:
    version: int
    seq_no: int
    source: dict | None  # None in count-only mode


class _Index:
    """One index with one primary shard: documents in first-write order, delete tombstones, mapping."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.uuid = _random_id(16)
        self.mapping: dict[tuple[str, ...], str] = {}
        self.mapped_fields = 0  # what index.mapping.total_fields.limit counts
        self.documents: dict[str, _StoredDocument] = {}
        self.tombstones: dict[str, int] = {}  # versions of deleted documents (index.gc_deletes)
        self._next_seq_no = 0

    def take_seq_no(self) -> int:
        self._next_seq_no += 1
        return self._next_seq_no - 1


def _succeeded(
    key: str, index: str, doc_id: str, version: int, result: str, seq_no: int, status: int, forced_refresh: bool
) -> dict:
    """DocWriteResponse.toXContent, fields in its order."""
    answer: dict = {"_index": index, "_id": doc_id, "_version": version, "result": result}
    if forced_refresh:
        answer["forced_refresh"] = True
    answer["_shards"] = _NOOP_SHARDS if result == "noop" else _SHARDS
    answer["_seq_no"] = seq_no
    answer["_primary_term"] = 1
    answer["status"] = status
    return {key: answer}


def _failed(key: str, index: str | None, doc_id: str | None, status: int, error: dict) -> dict:
    """BulkItemResponse.Failure.toXContent."""
    return {key: {"_index": index, "_id": doc_id, "status": status, "error": error}}


def _item_fault_error(fault: ItemFault, index: str, shard_items: int, source_bytes: int) -> tuple[int, dict]:
    if fault is ItemFault.REJECTED:
        reason = (
            "rejected execution of primary operation [coordinating_and_primary_bytes=0, replica_bytes=0, "
            f"all_bytes=0, primary_operation_bytes={source_bytes}, "
            f"max_coordinating_and_primary_bytes={_INDEXING_PRESSURE_LIMIT_BYTES}]"
        )
        return 429, _exception(fault.value, reason)
    if fault is ItemFault.UNAVAILABLE:
        reason = (
            f"[{index}][0] primary shard is not active Timeout: [1m], request: "
            f"[BulkShardRequest [[{index}][0]] containing [{shard_items}] requests]"
        )
        return 503, _exception(fault.value, reason)
    if fault is ItemFault.FORBIDDEN:
        # The user is not known here: ES names the authenticated user and its roles.
        reason = (
            f"action [indices:data/write/bulk[s]] is unauthorized for user [shipper] with effective roles "
            f"[logs_writer] on indices [{index}], this action is granted by the index privileges "
            "[create_doc,create,index,write,all]"
        )
        return 403, _exception(fault.value, reason)
    reason = (
        f"index [{index}] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, "
        "index has read-only-allow-delete block];"
    )
    return 429, _exception(fault.value, reason)


def _request_fault_body(fault: RejectRequest, body_bytes: int, endpoint: str = "_bulk") -> dict:
    if fault.error_type is not None:
        return _error_body(fault.status, _exception(fault.error_type, fault.reason))
    if fault.status == 429 and endpoint != "_bulk":
        # A full search queue; the real reason names the executor and its queue (not verified).
        error = _exception(
            "es_rejected_execution_exception", "rejected execution of search on a full [search] thread pool queue"
        )
    elif fault.status == 429:
        error = _exception(
            "es_rejected_execution_exception",
            "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, "
            f"all_bytes=0, coordinating_operation_bytes={body_bytes}, "
            f"max_coordinating_and_primary_bytes={_INDEXING_PRESSURE_LIMIT_BYTES}]",
        )
    elif fault.status == 503:
        error = _exception(
            "cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];"
        )
    else:
        error = _exception("exception", fault.reason or "fault injected by the fake Elasticsearch")
    return _error_body(fault.status, error)


def _merged(current: dict, changes: dict) -> dict:
    """XContentHelper.update: objects merge recursively, anything else is replaced."""
    merged = dict(current)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


class _Cluster:
    """All indices; the receiver serializes access (items of one shard run in order in ES too)."""

    def __init__(self, count_only: bool, total_fields_limit: int = 1000) -> None:
        self.count_only = count_only
        self.total_fields_limit = total_fields_limit
        self.indices: dict[str, _Index] = {}

    def execute(self, items: list[_BulkItem], item_faults: FailItems | None, forced_refresh: bool) -> list[dict]:
        items_per_index: dict[str | None, int] = {}
        for item in items:
            items_per_index[item.index] = items_per_index.get(item.index, 0) + 1
        answers = []
        for position, item in enumerate(items):
            fault = item_faults.fault_at(position) if item_faults else None
            answers.append(self._execute(item, fault, items_per_index[item.index], forced_refresh))
        return answers

    def _execute(self, item: _BulkItem, fault: ItemFault | None, shard_items: int, forced_refresh: bool) -> dict:
        key = item.answer_key
        problem = _index_name_problem(item.index)
        if problem is not None:
            # Index auto-creation fails before an id is generated, hence a null `_id`.
            error = _exception(
                "invalid_index_name_exception",
                f"Invalid index name [{item.index}], {problem}",
                index_uuid="_na_",
                index=item.index,
            )
            return _failed(key, item.index, item.doc_id, 400, error)
        index = self.indices.get(item.index)
        if index is None:
            index = self.indices[item.index] = _Index(item.index)
        doc_id = item.doc_id
        if item.action in ("index", "create"):
            if doc_id == "":
                error = _exception("illegal_argument_exception", "if _id is specified it must not be empty")
                return _failed(key, index.name, doc_id, 400, error)
            doc_id = doc_id if doc_id is not None else _random_id(15)
        if fault is not None:
            status, error = _item_fault_error(fault, index.name, shard_items, len(item.source or b""))
            return _failed(key, index.name, doc_id, status, error)
        try:
            if item.action == "delete":
                return self._delete(index, doc_id, forced_refresh)
            if item.action == "update":
                return self._update(index, doc_id, item.update, forced_refresh)
            return self._write(index, key, doc_id, item.source, forced_refresh)
        except _ItemError as failure:
            return _failed(key, index.name, doc_id, failure.status, failure.error)

    def _parsed_source(self, index: _Index, raw: bytes, doc_id: str) -> dict | None:
        if self.count_only:
            # Only what orjson cannot read goes through the exact parser: for ES's error, or to
            # accept what Jackson accepts and orjson does not (comments).
            try:
                if type(orjson.loads(raw)) is dict:
                    return None
            except orjson.JSONDecodeError:
                pass
            _DocumentParser(raw.decode("utf-8", "surrogateescape"), {}, doc_id).parse()
            return None
        parser = _DocumentParser(
            raw.decode("utf-8", "surrogateescape"),
            index.mapping,
            doc_id,
            fields_limit=self.total_fields_limit,
            mapped_fields=index.mapped_fields,
        )
        source = parser.parse()
        # The mapping update lands before the write itself, so it stays even if the write conflicts.
        index.mapping.update(parser.new_mappings)
        index.mapped_fields += sum(map(_field_count, parser.new_mappings.values()))
        return source

    def _write(self, index: _Index, key: str, doc_id: str, raw: bytes, forced_refresh: bool) -> dict:
        source = self._parsed_source(index, raw, doc_id)
        existing = index.documents.get(doc_id)
        if existing is not None and key == "create":
            raise _ItemError(
                409,
                _exception(
                    "version_conflict_engine_exception",
                    f"[{doc_id}]: version conflict, document already exists (current version [{existing.version}])",
                    index_uuid=index.uuid,
                    shard="0",
                    index=index.name,
                ),
            )
        return self._store(index, key, doc_id, source, existing, forced_refresh)

    def _store(
        self,
        index: _Index,
        key: str,
        doc_id: str,
        source: dict | None,
        existing: _StoredDocument | None,
        forced_refresh: bool,
    ) -> dict:
        version = existing.version + 1 if existing else index.tombstones.pop(doc_id, 0) + 1
        seq_no = index.take_seq_no()
        index.documents[doc_id] = _StoredDocument(version, seq_no, source)
        if existing is None:
            return _succeeded(key, index.name, doc_id, version, "created", seq_no, 201, forced_refresh)
        return _succeeded(key, index.name, doc_id, version, "updated", seq_no, 200, forced_refresh)

    def _delete(self, index: _Index, doc_id: str, forced_refresh: bool) -> dict:
        existing = index.documents.pop(doc_id, None)
        version = (existing.version if existing else index.tombstones.get(doc_id, 0)) + 1
        index.tombstones[doc_id] = version
        seq_no = index.take_seq_no()
        if existing is None:
            return _succeeded("delete", index.name, doc_id, version, "not_found", seq_no, 404, forced_refresh)
        return _succeeded("delete", index.name, doc_id, version, "deleted", seq_no, 200, forced_refresh)

    def _update(self, index: _Index, doc_id: str, spec: _UpdateSpec, forced_refresh: bool) -> dict:
        if spec.scripted:
            # Painless is out of reach; refuse loudly rather than pretend.
            raise _ItemError(
                400, _exception("illegal_argument_exception", "scripted updates are not emulated by this fake")
            )
        existing = index.documents.get(doc_id)
        if existing is None:
            new = spec.doc if spec.doc_as_upsert else spec.upsert
            if new is None:
                raise _ItemError(
                    404,
                    _exception(
                        "document_missing_exception",
                        f"[{doc_id}]: document missing",
                        index_uuid=index.uuid,
                        shard="0",
                        index=index.name,
                    ),
                )
            source = self._parsed_source(index, orjson.dumps(new), doc_id)
            return self._store(index, "update", doc_id, source, None, forced_refresh)
        if self.count_only:
            return self._store(index, "update", doc_id, None, existing, forced_refresh)
        merged = _merged(existing.source, spec.doc)
        if spec.detect_noop and merged == existing.source:
            return _succeeded("update", index.name, doc_id, existing.version, "noop", existing.seq_no, 200, False)
        source = self._parsed_source(index, orjson.dumps(merged), doc_id)
        return self._store(index, "update", doc_id, source, existing, forced_refresh)


# `_count` and `_search` ------------------------------------------------------------------------
#
# A small, exact subset of the query DSL, evaluated over the stored sources. Every write is
# visible at once, as if each `_bulk` had refresh=true (a real node shows documents after its
# next refresh, 1s by default). Scores are not BM25: a matching scoring clause scores 1.0, a bool
# query sums its must and should clauses and filter clauses score 0.0, so only "scored or not"
# and the hit order of equal scores (index order, then write order) are like a real node.

_TRACK_TOTAL_HITS_DEFAULT = 10_000
_EMULATED_QUERIES = ("bool", "match", "match_all", "term")
# Other query names a real node registers (SearchModule), used for "did you mean" suggestions and
# to tell a real but unemulated query from an unknown one. Plugins register more; not exhaustive.
_OTHER_QUERIES = (
    "boosting", "combined_fields", "constant_score", "dis_max", "distance_feature", "exists", "function_score",
    "fuzzy", "geo_bounding_box", "geo_distance", "geo_shape", "has_child", "has_parent", "ids", "intervals",
    "knn", "match_bool_prefix", "match_none", "match_phrase", "match_phrase_prefix", "more_like_this",
    "multi_match", "nested", "parent_id", "percolate", "pinned", "prefix", "query_string", "range",
    "rank_feature", "regexp", "script", "script_score", "simple_query_string", "span_containing",
    "span_first", "span_multi", "span_near", "span_not", "span_or", "span_term", "span_within", "terms",
    "terms_set", "wildcard", "wrapper",
)  # fmt: skip
# SearchSourceBuilder keys a real node takes that this fake does not emulate.
_UNEMULATED_SEARCH_KEYS = frozenset(
    {
        "_source", "aggregations", "aggs", "collapse", "docvalue_fields", "explain", "fields", "highlight",
        "indices_boost", "knn", "min_score", "pit", "post_filter", "profile", "rank", "rescore", "retriever",
        "runtime_mappings", "script_fields", "search_after", "seq_no_primary_term", "slice", "sort", "stats",
        "stored_fields", "suggest", "terminate_after", "timeout", "track_scores", "version",
    }
)  # fmt: skip
_COMMON_PARAMETERS = frozenset({"filter_path", "pretty", "human", "error_trace", "format"})
_COUNT_PARAMETERS = _COMMON_PARAMETERS
_SEARCH_PARAMETERS = _COMMON_PARAMETERS | {"size", "from", "track_total_hits", "rest_total_hits_as_int"}
# Parameters RestCountAction / RestSearchAction take that this fake does not emulate.
_UNEMULATED_PARAMETERS = frozenset(
    {
        "q", "df", "analyzer", "default_operator", "lenient", "analyze_wildcard", "min_score",
        "terminate_after", "routing", "preference", "ignore_unavailable", "allow_no_indices",
        "expand_wildcards", "ignore_throttled", "sort", "_source", "_source_includes", "_source_excludes",
        "scroll", "search_type", "stored_fields", "docvalue_fields", "timeout", "request_cache",
        "allow_partial_search_results", "batched_reduce_size", "typed_keys", "version", "explain",
    }
)  # fmt: skip


def _check_parameters(query: Mapping[str, list[str]], allowed: frozenset[str], path: str) -> None:
    """BaseRestHandler: parameters the handler did not consume fail the request."""
    unemulated = [name for name in query if name in _UNEMULATED_PARAMETERS and name not in allowed]
    if unemulated:
        raise _illegal_argument(f"parameter [{unemulated[0]}] is not emulated by this fake Elasticsearch")
    unknown = [name for name in query if name not in allowed]
    if unknown:
        names = ", ".join(f"[{name}]" for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise _illegal_argument(f"request [{path}] contains unrecognized parameter{plural}: {names}")


def _index_not_found(name: str) -> RequestRejected:
    error = _exception(
        "index_not_found_exception",
        f"no such index [{name}]",
        **{"resource.type": "index_or_alias", "resource.id": name, "index_uuid": "_na_", "index": name},
    )
    return RequestRejected(404, _error_body(404, error))


def _levenshtein_similarity(a: str, b: str) -> float:
    """Lucene's LevenshteinDistance.getDistance: 1 - edits / longer length."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b), 1)


def _suggestion(name: str, candidates: tuple[str, ...]) -> str:
    """SuggestingErrorOnUnknown.suggest: close names, best first, then by name."""
    scored = sorted(
        (-similarity, candidate)
        for candidate in candidates
        if (similarity := _levenshtein_similarity(name, candidate)) > 0.5
    )
    if not scored:
        return ""
    names = [candidate for _, candidate in scored]
    return f" did you mean [{names[0]}]?" if len(names) == 1 else f" did you mean any of [{', '.join(names)}]?"


def _tokens_of(text: str) -> list[str]:
    """An approximation of the standard analyzer: lower-cased runs of letters and digits.

    The real one follows Unicode word-break rules (UAX #29), which differ on apostrophes,
    periods between letters and some scripts."""
    return re.findall(r"\w+", text.lower())


def _flat_values(source: object, prefix: str, into: dict[str, list]) -> dict[str, list]:
    """Every leaf value by its dotted field path; arrays are several values of one field."""
    if isinstance(source, dict):
        for key, value in source.items():
            _flat_values(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}", into)
    elif isinstance(source, list):
        for value in source:
            _flat_values(value, prefix, into)
    elif source is not None:
        into.setdefault(prefix, []).append(source)
    return into


@dataclasses.dataclass(frozen=True)
class _Doc:
    """What a query sees of a document: its values by field, and the index mapping."""

    values: dict[str, list]
    mapping: Mapping[tuple[str, ...], str]

    def field(self, name: str) -> tuple[str | None, list]:
        """(mapped type, values); `x.keyword` is the keyword multi-field of a dynamic text `x`."""
        path = tuple(name.split("."))
        kind = self.mapping.get(path)
        if kind is None and len(path) > 1 and path[-1] == "keyword" and self.mapping.get(path[:-1]) == "text":
            # ignore_above 256 in the dynamic template: longer strings are not indexed.
            strings = map(_java_string, self.values.get(name[:-8], []))
            return "keyword", [value for value in strings if len(value) <= 256]
        values = self.values.get(name, [])
        # A text field indexes what it was given as a string (numbers and booleans coerce).
        return kind, list(map(_java_string, values)) if kind == "text" else values


def _same_value(kind: str | None, stored: object, wanted: object) -> bool:
    """Whether an indexed value equals a query value once the field type has parsed both."""
    if kind in ("long", "float", "date") and not isinstance(wanted, bool):
        try:
            return Decimal(str(stored)) == Decimal(str(wanted))  # dates: equal epoch millis or text only
        except ArithmeticError:
            return str(stored) == str(wanted)
    if kind == "boolean":
        return _java_string(stored) == _java_string(wanted)
    return isinstance(stored, str) and stored == _java_string(wanted)


class _Query:
    """A parsed query: `score` is None when the document does not match."""

    match_all = False

    def score(self, doc: _Doc) -> float | None:
        raise NotImplementedError


class _MatchAll(_Query):
    match_all = True

    def score(self, doc: _Doc) -> float | None:
        return 1.0


@dataclasses.dataclass
class _Term(_Query):
    field: str
    value: object

    def score(self, doc: _Doc) -> float | None:
        kind, values = doc.field(self.field)
        if kind == "text":  # a term query is not analysed: it must equal one indexed token
            found = any(_java_string(self.value) in _tokens_of(value) for value in values)
        else:
            found = any(_same_value(kind, value, self.value) for value in values)
        return 1.0 if found else None


@dataclasses.dataclass
class _Match(_Query):
    field: str
    text: object
    operator: str  # "or" or "and"

    def score(self, doc: _Doc) -> float | None:
        kind, values = doc.field(self.field)
        if kind != "text":  # keyword, numeric, boolean and date fields match the whole value
            return 1.0 if any(_same_value(kind, value, self.text) for value in values) else None
        wanted = _tokens_of(_java_string(self.text))
        indexed = {token for value in values for token in _tokens_of(value)}
        found = all if self.operator == "and" else any
        return 1.0 if wanted and found(token in indexed for token in wanted) else None


@dataclasses.dataclass
class _Bool(_Query):
    must: list[_Query]
    filter: list[_Query]
    must_not: list[_Query]
    should: list[_Query]

    def score(self, doc: _Doc) -> float | None:
        total = 0.0
        for clause in self.must:
            if (score := clause.score(doc)) is None:
                return None
            total += score
        if any(clause.score(doc) is None for clause in self.filter):
            return None
        if any(clause.score(doc) is not None for clause in self.must_not):
            return None
        should = [score for clause in self.should if (score := clause.score(doc)) is not None]
        # minimum_should_match defaults to 1 when there is no must or filter clause, else 0.
        if self.should and not self.must and not self.filter and not should:
            return None
        return total + sum(should)


class _QueryParser:
    """The body of `_search` (SearchSourceBuilder) or `_count` (RestActions.getQueryContent),
    and the queries in it (AbstractQueryBuilder.parseInnerQueryBuilder), token by token."""

    def __init__(self, body: bytes) -> None:
        self._text = body.decode("utf-8", "surrogateescape")
        self._tokens = json_tokens(self._text)
        self._current: _Token | None = None

    def _next(self) -> _Token | None:
        self._current = next(self._tokens, None)
        return self._current

    def _parsing_error(self, token: _Token | None, reason: str, cause: dict | None = None) -> RequestRejected:
        """ParsingException, located at the token (line and Jackson's column)."""
        line, column = self._line_column(len(self._text) if token is None else token.start)
        return _bad_request(_exception("parsing_exception", reason, caused_by=cause, line=line, col=column))

    def _line_column(self, index: int) -> tuple[int, int]:
        line_start = self._text.rfind("\n", 0, index) + 1
        return self._text.count("\n", 0, index) + 1, _byte_column(self._text[line_start:], index - line_start)

    def parse(self, *, search: bool) -> dict:
        """{"query": _Query, and for a search "size", "from", "track_total_hits"}."""
        try:
            return self._parse(search=search)
        except RequestRejected as rejection:
            error = rejection.body["error"]
            if search or error["type"] == "parsing_exception":
                raise
            # RestActions.getQueryContent: any other failure becomes "Failed to parse", located
            # where the parser stopped, with the original as its cause.
            cause = {key: value for key, value in error.items() if key != "root_cause"}
            raise self._parsing_error(self._current, "Failed to parse", cause) from None

    def _parse(self, *, search: bool) -> dict:
        parsed: dict = {"query": _MatchAll()}
        try:
            first = self._next()
            if first is None:
                return parsed
            if first.kind != START_OBJECT:
                raise self._parsing_error(first, "Expected [START_OBJECT] but found [" + first.kind + "]")  # unverified
            while (token := self._next()).kind != END_OBJECT:
                name = token.value
                value = self._next()
                if name == "query" and value.kind == START_OBJECT:
                    parsed["query"] = self._inner_query()
                elif not search:
                    raise self._parsing_error(token, f"request does not support [{name}]")
                elif name in ("size", "from", "track_total_hits") and value.kind in _SCALARS:
                    parsed[name] = value.value
                elif name in _UNEMULATED_SEARCH_KEYS:
                    raise _illegal_argument(f"[{name}] is not emulated by this fake Elasticsearch")
                else:
                    raise self._parsing_error(value, f"Unknown key for a {value.kind} in [{name}].")
            if self._next() is not None:
                raise self._parsing_error(self._current, "Unexpected data after the request body")  # unverified
        except JsonSyntaxError as error:
            self._current = None  # Jackson stopped at the error; the location is approximate
            raise _bad_request(_xcontent_exception(error)) from None
        return parsed

    def _inner_query(self) -> _Query:
        """Called at the START_OBJECT of a query; returns after its END_OBJECT."""
        token = self._next()
        if token.kind == END_OBJECT:  # located at the closing brace
            raise _illegal_argument(f"query malformed, empty clause found at [{self._location(token)}]")
        name = token.value
        body = self._next()
        if body.kind != START_OBJECT:
            raise self._parsing_error(body, f"[{name}] query malformed, no start_object after query name")
        if name == "bool":
            query = self._bool()
        elif name in _EMULATED_QUERIES:
            query = self._leaf(name, _read_token_value(body, self._tokens_tracked()))
        elif name in _OTHER_QUERIES:
            raise _illegal_argument(f"query [{name}] is not emulated by this fake Elasticsearch")
        else:
            suggestion = _suggestion(name, _EMULATED_QUERIES + _OTHER_QUERIES)
            error = self._parsing_error(body, f"unknown query [{name}]{suggestion}")
            line, column = self._line_column(body.start)
            cause = _exception("named_object_not_found_exception", f"[{line}:{column}] unknown field [{name}]")
            error.body["error"]["caused_by"] = cause
            raise error
        after = self._next()
        if after.kind != END_OBJECT:
            reason = f"[{name}] malformed query, expected [END_OBJECT] but found [{after.kind}]"
            raise self._parsing_error(after, reason)
        return query

    def _location(self, token: _Token) -> str:
        return "{}:{}".format(*self._line_column(token.start))

    def _tokens_tracked(self) -> Iterator[_Token]:
        while (token := self._next()) is not None:
            yield token

    def _leaf(self, name: str, body: dict) -> _Query:
        if name == "match_all":
            return _MatchAll()
        if len(body) > 1:
            first, second = list(body)[:2]
            raise self._parsing_error(
                self._current, f"[{name}] query doesn't support multiple fields, found [{first}] and [{second}]"
            )
        if not body:
            # The wording for a term or match query without a field was not verified.
            raise self._parsing_error(self._current, f"[{name}] query malformed, no field")
        ((field, value),) = body.items()
        if name == "term":
            value = value.get("value") if isinstance(value, dict) else value
            return _Term(field, value)
        if isinstance(value, dict):
            return _Match(field, value.get("query"), str(value.get("operator", "or")).lower())
        return _Match(field, value, "or")

    def _bool(self) -> _Query:
        clauses: dict[str, list[_Query]] = {"must": [], "filter": [], "must_not": [], "should": []}
        while (token := self._next()).kind != END_OBJECT:
            name = token.value
            value = self._next()
            if name in clauses and value.kind in (START_OBJECT, START_ARRAY):
                try:
                    clauses[name].extend(self._clauses(value))
                except RequestRejected as rejection:
                    # BoolQueryBuilder parses with an ObjectParser, which wraps what its field
                    # parsers throw, located at the field's value (the location was not verified).
                    cause = {key: item for key, item in rejection.body["error"].items() if key != "root_cause"}
                    reason = f"[{self._location(value)}] [bool] failed to parse field [{name}]"
                    raise _bad_request(_exception("x_content_parse_exception", reason, caused_by=cause)) from None
            elif name in ("boost", "_name", "minimum_should_match", "adjust_pure_negative") and value.kind in _SCALARS:
                if name == "minimum_should_match":
                    raise _illegal_argument("[minimum_should_match] is not emulated by this fake Elasticsearch")
            else:
                raise self._parsing_error(token, f"[bool] query does not support [{name}]")
        return _Bool(**clauses)

    def _clauses(self, value: _Token) -> Iterator[_Query]:
        if value.kind == START_OBJECT:
            yield self._inner_query()
            return
        while (element := self._next()).kind != END_ARRAY:
            if element.kind != START_OBJECT:
                raise self._parsing_error(element, "[bool] query malformed, expected an object")  # unverified
            yield self._inner_query()


def _resolve_indices(indices: Mapping[str, _Index], expression: str | None) -> list[_Index]:
    """IndexNameExpressionResolver with the default options: a missing concrete name fails with
    404, a wildcard may match nothing. Exclusions (`-name`), date math and aliases are not emulated."""
    if expression is None or expression in ("", "_all", "*"):
        return list(indices.values())
    chosen: dict[str, _Index] = {}
    for name in expression.split(","):
        if "*" in name:
            chosen.update((found, index) for found, index in indices.items() if _name_matches(name, found))
        elif name in indices:
            chosen[name] = indices[name]
        else:
            raise _index_not_found(name)
    return list(chosen.values())


def _search_shards(searched: int) -> dict:
    return {"total": searched, "successful": searched, "skipped": 0, "failed": 0}


def _non_negative(name: str, value: object) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _illegal_argument(f"[{name}] must be a number, found [{value}]") from None  # unverified wording
    if number < 0 and name == "from":
        raise _illegal_argument(f"[from] parameter cannot be negative but was [{number}]")
    if number < 0:
        raise _illegal_argument(f"[{name}] parameter cannot be negative, found [{number}]")
    return number


def _total_hits(track: object, matched: int, as_int: bool) -> object:
    """track_total_hits: true counts all, false none, N (default 10000) counts up to N."""
    if track in (True, "true"):
        threshold = None
    elif track in (False, "false"):
        return None
    else:
        threshold = _TRACK_TOTAL_HITS_DEFAULT if track is None else _non_negative("track_total_hits", track)
    if as_int:
        return matched
    if threshold is not None and matched > threshold:
        return {"value": threshold, "relation": "gte"}
    return {"value": matched, "relation": "eq"}


# filter_path ---------------------------------------------------------------------------------

_DROPPED = object()


def _filter_response(response: dict, filter_path: str) -> dict:
    """ES response filtering: `*` within a name, `**` across levels, `-` excludes, and objects
    or arrays left empty disappear (so `items.*.error` drops successful items entirely)."""
    includes, excludes = [], []
    for expression in filter_path.split(","):
        expression = expression.strip()
        if expression.startswith("-"):
            excludes.append(expression[1:].split("."))
        elif expression:
            includes.append(expression.split("."))
    if includes:
        filtered = _include(response, includes)
        response = {} if filtered is _DROPPED else filtered
    if excludes:
        response = _exclude(response, excludes)
    return response


def _name_matches(pattern: str, name: str) -> bool:
    if "*" not in pattern:
        return pattern == name
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), name) is not None


def _step(paths: list[list[str]], name: str) -> tuple[bool, list[list[str]]]:
    """Match a field name against path expressions: (fully matched, what remains below it)."""
    whole, below = False, []
    for path in paths:
        head, rest = path[0], path[1:]
        if head == "**":
            if not rest:
                whole = True
                continue
            below.append(path)  # `**` also spans this level
            matched, deeper = _step([rest], name)
            whole |= matched
            below.extend(deeper)
        elif _name_matches(head, name):
            if rest:
                below.append(rest)
            else:
                whole = True
    return whole, below


def _include(node: object, paths: list[list[str]]) -> object:
    if isinstance(node, dict):
        kept = {}
        for name, value in node.items():
            whole, below = _step(paths, name)
            if whole:
                kept[name] = value
            elif below and (filtered := _include(value, below)) is not _DROPPED:
                kept[name] = filtered
        return kept or _DROPPED
    if isinstance(node, list):
        kept_items = [filtered for item in node if (filtered := _include(item, paths)) is not _DROPPED]
        return kept_items or _DROPPED
    return _DROPPED


def _exclude(node: object, paths: list[list[str]]) -> object:
    if isinstance(node, dict):
        kept = {}
        for name, value in node.items():
            whole, below = _step(paths, name)
            if not whole:
                kept[name] = _exclude(value, below) if below else value
        return kept
    if isinstance(node, list):
        return [_exclude(item, paths) for item in node]
    return node


# HTTP ----------------------------------------------------------------------------------------

# Content types RestController lets through to the JSON handlers (XContentType.JSON and VND_JSON
# with their ndjson forms). Smile, CBOR and YAML bodies are refused here, though ES takes them.
_JSON_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/*",
        "application/vnd.elasticsearch+json",
        "application/vnd.elasticsearch+x-ndjson",
    }
)


def _media_type_parameters(header: str) -> tuple[str, dict[str, str]]:
    """ParsedMediaType: the lower-cased type/subtype and parameters of the first media range."""
    first = header.split(",")[0]
    media_type, *parameters = first.split(";")
    parsed = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        parsed[name.strip().lower()] = value.strip().lower()
    return media_type.strip().lower(), parsed


def _media_type_text(header: str | None) -> str:
    """ParsedMediaType.toString, as RestCompatibleVersionHelper quotes it."""
    if header is None:
        return "null"
    media_type, parameters = _media_type_parameters(header)
    return media_type + "".join(f"; {name}={value}" for name, value in parameters.items())


def _compatible_with(header: str | None) -> int | None:
    if header is None:
        return None
    version = _media_type_parameters(header)[1].get("compatible-with")
    return int(version) if version is not None and version.isdigit() else None


def _content_type_supported(header: str) -> bool:
    media_type, parameters = _media_type_parameters(header)
    if media_type not in _JSON_MEDIA_TYPES:
        return False
    # Any charset is let through here; ES's exact charset rule was not verified.
    return all(name in ("charset", "compatible-with") for name in parameters)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], receiver: ElasticsearchReceiver, context: ssl.SSLContext | None = None
    ) -> None:
        self.receiver = receiver
        self._context = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, object]:
        connection, address = super().get_request()
        if self._context is None:
            return connection, address
        # The handshake happens on the first read, in the request's thread, not in the accept loop,
        # so a client that fails it costs only its own connection.
        return self._context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: socket.socket, client_address: object) -> None:
        # Failed TLS handshakes (ssl.SSLError) and clients hanging up are OSErrors: a real node
        # logs them at debug level and carries on.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def process_request(self, request: socket.socket, client_address: object) -> None:
        with self._connections_lock:
            self._connections.add(request)
        self.receiver._note_connection()
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Unblock handler threads waiting on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            cut(connection)  # already closed by the client is fine


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as ES and its clients use
    server: _Server

    def setup(self) -> None:
        super().setup()
        # http.tcp.no_delay defaults to true; without it headers and body sent apart stall on
        # Nagle's algorithm against the client's delayed ACK (40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: benchmarks read the program's stdout."""

    def handle_expect_100(self) -> bool:
        # Netty's aggregator refuses an announced oversized body with 417 instead of 100 Continue.
        if self._announced_length() > self.server.receiver.max_content_length:
            self._reply(417, b"", product=False, close=True)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _announced_length(self) -> int:
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return 0

    def _serve(self) -> None:
        receiver = self.server.receiver
        receiver._note_request()
        target = urlsplit(self.path)
        # Security authenticates on the headers, before the body is read (ES 8.10+ HTTP validation).
        failure = receiver._authentication_failure(self.headers.get("Authorization"), self.path)
        if failure is not None:
            self._discard_body()
            header = {"WWW-Authenticate": list(_WWW_AUTHENTICATE)}
            body = _error_body(401, _exception("security_exception", failure, header=header))
            self._reply(401, body, product=False, headers=[("WWW-Authenticate", value) for value in _WWW_AUTHENTICATE])
            return
        body = self._read_body()
        if body is None:
            return
        rest_major = self._rest_api_major(has_content=bool(body))
        if rest_major is None:
            return
        query = parse_qs(target.query, keep_blank_values=True)
        if target.path == "/":
            if self._allowed(("GET", "HEAD")) and self._content_type_accepted(body):
                self._reply(200, b"" if self.command == "HEAD" else receiver._info())
            return
        segments = target.path.strip("/").split("/")  # routed before the index name is decoded
        endpoint = segments[-1]
        if endpoint in _ENDPOINTS and len(segments) <= 2:
            methods = ("POST", "PUT") if endpoint == "_bulk" else ("GET", "POST")
            if self._allowed(methods) and self._content_type_accepted(body):
                index = unquote(segments[0]) if len(segments) == 2 else None
                if endpoint == "_bulk":
                    execute = functools.partial(receiver._bulk, body, index, query, rest_major)
                elif endpoint == "_count":
                    execute = lambda _: receiver._count_api(index, query, body)  # noqa: E731
                else:
                    execute = lambda _: receiver._search_api(index, query, body)  # noqa: E731
                self._serve_api(endpoint, body, query, execute)
            return
        self._string_error(400, f"no handler found for uri [{self.path}] and method [{self.command}]")

    def _allowed(self, methods: tuple[str, ...]) -> bool:
        if self.command in methods:
            return True
        allowed = ", ".join(methods)
        self._string_error(
            405,
            f"Incorrect HTTP method for uri [{self.path}] and method [{self.command}], allowed: [{allowed}]",
            headers=[("Allow", ",".join(methods))],
        )
        return False

    def _content_type_accepted(self, body: bytes) -> bool:
        """RestController: a request with content needs a content type the handler can read."""
        values = self.headers.get_all("Content-Type")
        if not body or (values and len(values) == 1 and _content_type_supported(values[0])):
            return True
        if values is None:
            self._string_error(406, "Content-Type header is missing")
        else:
            self._string_error(406, f"Content-Type header [{','.join(values)}] is not supported")
        return False

    def _rest_api_major(self, *, has_content: bool) -> int | None:
        """RestCompatibleVersionHelper: the REST API version asked for, or None once refused."""
        major = self.server.receiver.major
        accept, content_type = self.headers.get("Accept"), self.headers.get("Content-Type")
        accept_asked = _compatible_with(accept)
        content_asked = _compatible_with(content_type) if has_content else None
        accept_version = major if accept_asked is None else accept_asked
        content_version = major if content_asked is None else content_asked
        problem = None
        if not major - 1 <= accept_version <= major:
            problem = (
                f"Accept version must be either version {major} or {major - 1}, but found {accept_version}. "
                f"Accept={_media_type_text(accept)}"
            )
        elif has_content and not major - 1 <= content_version <= major:
            problem = (
                f"Content-Type version must be either version {major} or {major - 1}, but found "
                f"{content_version}. Content-Type={_media_type_text(content_type)}"
            )
        elif has_content and content_version != accept_version:
            problem = (
                "A compatible version is required on both Content-Type and Accept headers if either one has "
                "requested a compatible version and the compatible versions must match. "
                f"Accept={_media_type_text(accept)}, Content-Type={_media_type_text(content_type)}"
            )
        elif has_content and (accept_asked is None) != (content_asked is None):
            problem = (
                "A compatible version is required on both Content-Type and Accept headers if either one has "
                f"requested a compatible version. Accept={_media_type_text(accept)}, "
                f"Content-Type={_media_type_text(content_type)}"
            )
        if problem is None:
            return min(accept_version, content_version)
        error = _exception(
            "media_type_header_exception",
            "Invalid media-type value on headers [Accept, Content-Type]",
            caused_by=_exception("status_exception", problem),
        )
        self._reply(400, _error_body(400, error))
        return None

    def _read_raw_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailer fields
            return b"".join(chunks)
        return self.rfile.read(self._announced_length())

    def _discard_body(self) -> None:
        remaining = self._announced_length()
        while remaining > 0 and (chunk := self.rfile.read(min(remaining, 1 << 20))):
            remaining -= len(chunk)

    def _read_body(self) -> bytes | None:
        """The decompressed body, or None after answering 413 (or 400 for a broken encoding)."""
        limit = self.server.receiver.max_content_length
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "identity" and self._announced_length() > limit:
            # Read the body anyway (ES resets instead) so that the client reliably sees the 413.
            self._discard_body()
            self._too_large()
            return None
        raw = self._read_raw_body()
        if encoding == "identity":
            body = raw
        elif encoding in ("gzip", "x-gzip", "deflate"):
            # http.max_content_length applies to the decompressed content.
            decompressor = zlib.decompressobj(47 if encoding == "deflate" else 31)
            try:
                body = decompressor.decompress(raw, limit + 1)
                if len(body) <= limit and not decompressor.eof:
                    raise zlib.error("incomplete or truncated stream")
            except zlib.error as error:
                # Netty's DecompressionException; the body ES answers with was not verified.
                self._reply(
                    400, _error_body(400, _exception("illegal_argument_exception", f"invalid {encoding} body: {error}"))
                )
                return None
        else:
            self._string_error(400, f"unsupported Content-Encoding [{encoding}]")  # unverified wording
            return None
        if len(body) > limit:
            self._too_large()
            return None
        return body

    def _too_large(self) -> None:
        """Netty answers before ES sees the request: no product header, empty body, connection closed."""
        self._reply(413, b"", product=False, close=True)

    def _serve_api(
        self,
        endpoint: str,
        body: bytes,
        query: dict[str, list[str]],
        execute: Callable[[FailItems | None], dict],
    ) -> None:
        """Faults, the handler, filter_path: the same for `_bulk`, `_count` and `_search`.

        Only `_bulk` requests are recorded as exchanges and counted in `stats`."""
        receiver = self.server.receiver
        fault = receiver._take_fault(endpoint)
        encoding = self.headers.get("Content-Encoding")

        def record(status: int | None, statuses: tuple[int, ...] = ()) -> None:
            if endpoint == "_bulk":
                receiver._record(BulkExchange(status, statuses, fault, len(body), encoding))

        if isinstance(fault, Delay):
            receiver._pause(fault.seconds)
        if isinstance(fault, RejectRequest):
            record(fault.status)
            self._reply(fault.status, _request_fault_body(fault, len(body), endpoint))
            return
        if isinstance(fault, DropConnection) and not fault.after_processing:
            record(None)
            self.close_connection = True
            return
        try:
            response = execute(fault if isinstance(fault, FailItems) else None)
        except RequestRejected as rejection:
            record(rejection.status)
            self._reply(rejection.status, rejection.body)
            return
        statuses = (
            tuple(next(iter(item.values()))["status"] for item in response["items"])
            if endpoint == "_bulk" and not receiver.count_only
            else ()
        )
        if isinstance(fault, DropConnection):
            record(None, statuses)
            self.close_connection = True
            return
        record(200, statuses)
        filter_path = query.get("filter_path")
        self._reply(200, _filter_response(response, ",".join(filter_path)) if filter_path else response)

    def _string_error(self, status: int, message: str, *, headers: list[tuple[str, str]] = ()) -> None:
        """RestResponse.createSimpleErrorResponse: the error is a plain string."""
        self._reply(status, {"error": message, "status": status}, headers=headers)

    def _reply(
        self,
        status: int,
        payload: dict | bytes,
        *,
        product: bool = True,
        close: bool = False,
        headers: list[tuple[str, str]] = (),
    ) -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        major = self.server.receiver.major
        compatible = _compatible_with(self.headers.get("Accept"))
        if compatible is not None and major - 1 <= compatible <= major:
            content_type = f"application/vnd.elasticsearch+json;compatible-with={compatible}"
        else:
            content_type = "application/json"
        compress = bool(body) and "gzip" in (self.headers.get("Accept-Encoding") or "")
        if compress:
            body = gzip.compress(body, compresslevel=1)
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        if product:
            self.send_header(*_PRODUCT_HEADER)
        if body or self.command == "HEAD":
            self.send_header("content-type", content_type)
        if compress:
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        if close:
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# The receiver --------------------------------------------------------------------------------


class ElasticsearchReceiver:
    """A strict fake Elasticsearch node on 127.0.0.1; see the module docstring.

    Faults queued with `inject` are consumed one per request to their endpoint, in order. Stored
    documents are read back with `documents`/`ids`/`count`; `exchanges` and `stats` describe the
    `_bulk` traffic.
    """

    def __init__(
        self,
        *,
        version: str = "9.1.0",
        host: str = "127.0.0.1",
        port: int = 0,
        auth: Credential | None = None,
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        count_only: bool = False,
        total_fields_limit: int = 1000,
        tls: bool = False,
        require_client_cert: bool = False,
    ) -> None:
        """`count_only` keeps ids and counts but no sources and no mapping, for benchmarks.

        `total_fields_limit` is every index's `index.mapping.total_fields.limit` (not applied in
        count-only mode, which keeps no mapping).

        `tls` serves HTTPS with a certificate from a throwaway CA (`ca_file`); with
        `require_client_cert` (which implies `tls`) the handshake also requires a client
        certificate from that CA, as `xpack.security.http.ssl.client_authentication: required`
        does (`client_cert_file`, `client_key_file`). The PEM files live until `stop()`.
        """
        self.version = version
        self.major = int(version.split(".")[0])
        if self.major not in _BUILDS:
            raise ValueError(f"only Elasticsearch 8.x and 9.x are emulated, not {version}")
        self.auth = auth
        self.max_content_length = max_content_length
        self.count_only = count_only
        self.tls = tls or require_client_cert
        self.require_client_cert = require_client_cert
        self._tls_files: TLSFiles | None = None
        self.cluster_uuid = _random_id(16)
        self._address = (host, port)
        self._lock = threading.Lock()
        self._cluster = _Cluster(count_only, total_fields_limit)
        self._faults: dict[str, list[Fault]] = {endpoint: [] for endpoint in _ENDPOINTS}
        self._exchanges: list[BulkExchange] = []
        self._counters = {"connections": 0, "requests": 0, "bulk_requests": 0, "bulk_items": 0, "item_failures": 0}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle

    def __enter__(self) -> ElasticsearchReceiver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._stopping.clear()
        context = None
        if self.tls:
            self._tls_files = TLSFiles("fake-elasticsearch-", client_cert=self.require_client_cert)
            context = self._tls_files.server_context(require_client_cert=self.require_client_cert)
        try:
            self._server = _Server(self._address, self, context)
        except BaseException:
            self._drop_tls_files()
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() waits for the accept loop
            name="fake-elasticsearch",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # ends injected delays
        self._server.shutdown()
        self._server.cut_connections()
        self._server.server_close()
        self._thread.join()
        self._server = None
        self._drop_tls_files()

    def _drop_tls_files(self) -> None:
        if self._tls_files is not None:
            self._tls_files.cleanup()
            self._tls_files = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def _tls_path(self, name: str) -> str:
        path = getattr(self._tls_files, name, None) if self._tls_files is not None else None
        if path is None:
            wanted = "require_client_cert=True" if name.startswith("client") else "tls=True"
            raise RuntimeError(f"{name} exists only on a started receiver with {wanted}")
        return str(path)

    @property
    def ca_file(self) -> str:
        """PEM file of the CA that issued the node's certificate (and the client's)."""
        return self._tls_path("ca_file")

    @property
    def client_cert_file(self) -> str:
        return self._tls_path("client_cert_file")

    @property
    def client_key_file(self) -> str:
        return self._tls_path("client_key_file")

    # Faults

    def inject(self, *faults: Fault, on: str = "_bulk") -> None:
        """Queue faults; each applies to one of the next requests to `on` (`_bulk`, `_count` or
        `_search`), in order. FailItems only makes sense for `_bulk`."""
        if on not in _ENDPOINTS:
            raise ValueError(f"faults apply to {', '.join(_ENDPOINTS)}, not {on}")
        if on != "_bulk" and any(isinstance(fault, FailItems) for fault in faults):
            raise ValueError("FailItems applies to the items of a _bulk request only")
        with self._lock:
            self._faults[on].extend(faults)

    def clear_faults(self, on: str | None = None) -> list[Fault]:
        """Drop the faults not yet consumed, for `on` (`_bulk`, `_count` or `_search`) or, with
        None, for every endpoint; returns what was dropped. Queue a long run of faults, then clear
        them to have the node recover: `inject(*[RejectRequest(429)] * 10_000)` ... `clear_faults()`.
        """
        if on is not None and on not in _ENDPOINTS:
            raise ValueError(f"faults apply to {', '.join(_ENDPOINTS)}, not {on}")
        with self._lock:
            dropped: list[Fault] = []
            for endpoint in _ENDPOINTS if on is None else (on,):
                dropped.extend(self._faults[endpoint])
                self._faults[endpoint].clear()
            return dropped

    @property
    def pending_faults(self) -> list[Fault]:
        """Faults not yet consumed, all endpoints."""
        with self._lock:
            return [fault for queue in self._faults.values() for fault in queue]

    # What was received

    def indices(self) -> list[str]:
        with self._lock:
            return list(self._cluster.indices)

    def documents(self, index: str) -> list[dict]:
        """Sources currently stored in `index`, in the order they were first written."""
        if self.count_only:
            raise RuntimeError("a count-only receiver keeps no documents; use ids() or count()")
        with self._lock:
            stored = self._cluster.indices.get(index)
            return [] if stored is None else [copy.deepcopy(document.source) for document in stored.documents.values()]

    def ids(self, index: str) -> list[str]:
        with self._lock:
            stored = self._cluster.indices.get(index)
            return [] if stored is None else list(stored.documents)

    def count(self, index: str | None = None) -> int:
        with self._lock:
            if index is not None:
                stored = self._cluster.indices.get(index)
                return 0 if stored is None else len(stored.documents)
            return sum(len(stored.documents) for stored in self._cluster.indices.values())

    def mapping(self, index: str) -> dict[str, str]:
        """The dynamic mapping built so far, as {"dotted.path": type}."""
        with self._lock:
            stored = self._cluster.indices.get(index)
            return {} if stored is None else {".".join(path): kind for path, kind in stored.mapping.items()}

    @property
    def exchanges(self) -> list[BulkExchange]:
        with self._lock:
            return list(self._exchanges)

    @property
    def stats(self) -> ReceiverStats:
        with self._lock:
            documents = sum(len(stored.documents) for stored in self._cluster.indices.values())
            return ReceiverStats(**self._counters, documents=documents)

    def summary(self) -> dict:
        """What the program prints on exit."""
        stats = self.stats
        with self._lock:
            per_index = {name: len(stored.documents) for name, stored in self._cluster.indices.items()}
        return {
            "version": self.version,
            "requests": stats.requests,
            "bulk_requests": stats.bulk_requests,
            "bulk_items": stats.bulk_items,
            "item_failures": stats.item_failures,
            "documents": stats.documents,
            "indices": per_index,
        }

    # Used by the request handler

    def _note_connection(self) -> None:
        with self._lock:
            self._counters["connections"] += 1

    def _note_request(self) -> None:
        with self._lock:
            self._counters["requests"] += 1

    def _take_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            queue = self._faults[endpoint]
            return queue.pop(0) if queue else None

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _record(self, exchange: BulkExchange) -> None:
        with self._lock:
            self._counters["bulk_requests"] += 1
            if not self.count_only:
                self._exchanges.append(exchange)

    def _authentication_failure(self, header: str | None, uri: str) -> str | None:
        """None when the request may proceed; else the security_exception reason."""
        if self.auth is None:
            return None
        scheme, _, credentials = (header or "").strip().partition(" ")
        expected_scheme, _, expected_credentials = self.auth.authorization().partition(" ")
        if scheme.lower() == expected_scheme.lower() and credentials.strip() == expected_credentials:
            return None
        if scheme.lower() == "basic":
            try:
                username = base64.b64decode(credentials, validate=True).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                return f"missing authentication credentials for REST request [{uri}]"
            return f"unable to authenticate user [{username}] for REST request [{uri}]"
        if scheme.lower() in ("apikey", "bearer"):
            # The wording for a wrong API key or token (and its extra fields) was not verified.
            return (
                "unable to authenticate with provided credentials and anonymous access is not allowed for this request"
            )
        return f"missing authentication credentials for REST request [{uri}]"

    def _info(self) -> dict:
        return {
            "name": "es-node-0",
            "cluster_name": "docker-cluster",
            "cluster_uuid": self.cluster_uuid,
            "version": {
                "number": self.version,
                "build_flavor": "default",
                "build_type": "docker",
                "build_hash": _BUILDS[self.major]["build_hash"],
                "build_date": _BUILDS[self.major]["build_date"],
                "build_snapshot": False,
                "lucene_version": _BUILDS[self.major]["lucene_version"],
                "minimum_wire_compatibility_version": _BUILDS[self.major]["minimum_wire_compatibility_version"],
                "minimum_index_compatibility_version": _BUILDS[self.major]["minimum_index_compatibility_version"],
            },
            "tagline": "You Know, for Search",
        }

    def _bulk(
        self,
        body: bytes,
        index: str | None,
        query: dict[str, list[str]],
        rest_major: int,
        item_faults: FailItems | None,
    ) -> dict:
        """RestBulkAction then TransportBulkAction: the 200 answer, or RequestRejected."""
        started = time.monotonic()
        if not body:
            raise _bad_request(_exception("parse_exception", "request body is required"))
        items = parse_bulk_body(body, default_index=index, major=self.major, rest_major=rest_major)
        # Parameters are checked once the handler has read the body (BaseRestHandler).
        _check_parameters(query, _BULK_PARAMETERS, "/_bulk" if index is None else f"/{index}/_bulk")
        refresh = query.get("refresh", ["false"])[-1]
        if refresh not in ("", "true", "false", "wait_for"):
            raise _illegal_argument(f"Unknown value for refresh: [{refresh}].")
        failures = _validation_failures(items)
        if failures:
            numbered = "".join(f"{number}: {failure};" for number, failure in enumerate(failures, 1))
            raise _bad_request(_exception("action_request_validation_exception", f"Validation Failed: {numbered}"))
        with self._lock:
            answers = self._cluster.execute(items, item_faults, forced_refresh=refresh in ("", "true"))
            failed = sum("error" in next(iter(answer.values())) for answer in answers)
            self._counters["bulk_items"] += len(answers)
            self._counters["item_failures"] += failed
        return {"errors": failed > 0, "took": int((time.monotonic() - started) * 1000), "items": answers}

    def _count_api(self, index: str | None, query: dict[str, list[str]], body: bytes) -> dict:
        """RestCountAction, then a count over the resolved indices."""
        parsed = _QueryParser(body).parse(search=False)
        _check_parameters(query, _COUNT_PARAMETERS, "/_count" if index is None else f"/{index}/_count")
        matcher = parsed["query"]
        with self._lock:
            targets = _resolve_indices(self._cluster.indices, index)
            if matcher.match_all:
                count = sum(len(target.documents) for target in targets)
            elif self.count_only:
                raise _illegal_argument("a count-only receiver keeps no sources: only match_all can be counted")
            else:
                count = sum(1 for _ in self._matches(targets, matcher))
        return {"count": count, "_shards": _search_shards(len(targets))}

    def _search_api(self, index: str | None, query: dict[str, list[str]], body: bytes) -> dict:
        """RestSearchAction, then one query phase and fetch phase over the resolved indices."""
        started = time.monotonic()
        if self.count_only:
            raise _illegal_argument("a count-only receiver keeps no sources and cannot answer _search; use _count")
        parsed = _QueryParser(body).parse(search=True)
        _check_parameters(query, _SEARCH_PARAMETERS, "/_search" if index is None else f"/{index}/_search")
        # URL parameters override the body, as in RestSearchAction.parseSearchRequest.
        size = _non_negative("size", query.get("size", [parsed.get("size", 10)])[-1])
        start = _non_negative("from", query.get("from", [parsed.get("from", 0)])[-1])
        as_int = query.get("rest_total_hits_as_int", ["false"])[-1] in ("", "true")
        track = query.get("track_total_hits", [parsed.get("track_total_hits")])[-1]
        with self._lock:
            targets = _resolve_indices(self._cluster.indices, index)
            matches = sorted(self._matches(targets, parsed["query"]), key=lambda match: -match[0])  # stable
            hits = [
                {"_index": name, "_id": doc_id, "_score": score, "_source": copy.deepcopy(source)}
                for score, name, doc_id, source in matches[start : start + size]
            ]
        found: dict = {}
        total = _total_hits(True if as_int else track, len(matches), as_int)
        if total is not None:
            found["total"] = total
        found["max_score"] = matches[0][0] if matches and size else None
        found["hits"] = hits
        took = int((time.monotonic() - started) * 1000)
        return {"took": took, "timed_out": False, "_shards": _search_shards(len(targets)), "hits": found}

    @staticmethod
    def _matches(targets: list[_Index], matcher: _Query) -> Iterator[tuple[float, str, str, dict]]:
        """(score, index, id, source) of the matching documents, in index then write order."""
        for target in targets:
            for doc_id, stored in target.documents.items():
                score = matcher.score(_Doc(_flat_values(stored.source, "", {}), target.mapping))
                if score is not None:
                    yield score, target.name, doc_id, stored.source


# The program ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.receivers.elasticsearch",
        description="A strict fake Elasticsearch node; prints counts as JSON when stopped (SIGINT/SIGTERM).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200, help="0 picks a free port")
    parser.add_argument("--version", default="9.1.0", help="the version to emulate, 8.x or 9.x (default 9.1.0)")
    parser.add_argument("--count-only", action="store_true", help="count documents without keeping them")
    parser.add_argument("--max-content-length", type=int, default=DEFAULT_MAX_CONTENT_LENGTH, help="bytes")
    options = parser.parse_args(argv)
    receiver = ElasticsearchReceiver(
        version=options.version,
        host=options.host,
        port=options.port,
        max_content_length=options.max_content_length,
        count_only=options.count_only,
    )
    stopped = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stopped.set())
    receiver.start()
    mode = ", count-only" if options.count_only else ""
    print(f"listening on {receiver.url} (Elasticsearch {options.version}{mode})", flush=True)
    while not stopped.wait(0.5):
        pass
    receiver.stop()
    print(json.dumps(receiver.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
