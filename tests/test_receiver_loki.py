"""The fake Loki answers raw HTTP pushes the way Loki v3.7 does (PROTOCOLS.md section 2).

Bodies are built here by hand, protobuf with the generated module and raw block snappy, JSON as
text, and every expectation is Loki's literal answer, so a drift in the receiver fails a test.
"""

import gzip
import hashlib
import json
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import cramjam
import httpx
import pytest

from tests.receivers import loki_push_pb2
from tests.receivers.loki import (
    Fault,
    LabelParseError,
    LogEntry,
    LogQLParseError,
    LokiLimits,
    LokiReceiver,
    PushReply,
    format_labels,
    parse_labels,
)

NOW_NS = 1_750_000_000 * 10**9  # 2025-06-15T15:06:40Z, the receiver's clock in these tests
SECOND = 10**9
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
API = '{app="api", service_name="api"}'  # how Loki writes the labels of app=api in its messages


def proto_body(*streams) -> bytes:
    """A snappy (block format) PushRequest; streams are ``(labels, [(ts_ns, line[, metadata]), ...])``."""
    request = loki_push_pb2.PushRequest()
    for labels, entries in streams:
        stream = request.streams.add(labels=labels)
        for ts_ns, line, *metadata in entries:
            entry = stream.entries.add(line=line)
            entry.timestamp.seconds, entry.timestamp.nanos = divmod(ts_ns, SECOND)
            for name, value in (metadata[0] if metadata else {}).items():
                entry.structuredMetadata.add(name=name, value=value)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def json_body(*streams) -> bytes:
    """A JSON push; streams are ``(label_dict, [(ts_ns, line[, metadata]), ...])``."""
    return json.dumps(
        {
            "streams": [
                {"stream": labels, "values": [[str(ts_ns), line, *metadata] for ts_ns, line, *metadata in entries]}
                for labels, entries in streams
            ]
        }
    ).encode()


@pytest.fixture
def loki():
    with LokiReceiver(clock_ns=lambda: NOW_NS) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def client():
    # One client for the module: building one loads the CA bundle, which costs ~30 ms.
    with httpx.Client(timeout=5) as http:
        yield http


def push(client, receiver, body, headers=PROTOBUF) -> httpx.Response:
    return client.post(receiver.push_url, content=body, headers=headers)


def assert_accepted(response: httpx.Response) -> None:
    assert (response.status_code, response.content) == (204, b"")


def assert_rejected(response: httpx.Response, status: int, message: str) -> None:
    """Go's http.Error: text/plain, the message and a newline."""
    assert (response.status_code, response.text) == (status, message + "\n")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def lines(receiver, tenant="fake", **selector) -> list[str]:
    return [entry.line for entry in receiver.entries(tenant, selector)]


# -- transport ---------------------------------------------------------------------------------


def test_protobuf_push_is_stored_per_stream_with_service_name(loki, client):
    body = proto_body(
        ('{namespace="kube-system", container="etcd"}', [(NOW_NS - SECOND, "a", {"pod": "etcd-0"}), (NOW_NS, "b")]),
    )
    assert_accepted(push(client, loki, body))
    labels = {"container": "etcd", "namespace": "kube-system", "service_name": "etcd"}
    assert loki.streams() == [labels]
    assert loki.entries("fake", {"container": "etcd"}) == [
        LogEntry(labels, NOW_NS - SECOND, "a", {"pod": "etcd-0"}),
        LogEntry(labels, NOW_NS, "b", {}),
    ]
    assert loki.replies == [PushReply(204, "")]


def test_json_push_with_a_charset_parameter_keeps_structured_metadata(loki, client):
    body = json_body(({"app": "api"}, [(NOW_NS, "hello", {"trace_id": "abc"})]))
    assert_accepted(push(client, loki, body, {"Content-Type": "application/json; charset=utf-8"}))
    assert loki.entries() == [LogEntry({"app": "api", "service_name": "api"}, NOW_NS, "hello", {"trace_id": "abc"})]


def test_a_chunked_body_is_read(loki, client):
    body = proto_body(('{app="api"}', [(NOW_NS, "streamed")]))
    assert_accepted(client.post(loki.push_url, content=iter([body[:5], body[5:]]), headers=PROTOBUF))
    assert lines(loki) == ["streamed"]


@pytest.mark.parametrize(
    ("content_type", "body_kind", "status", "message"),
    [
        (None, "json", 400, "mime: no media type"),
        ("application/x-protobuf", "json", 400, "snappy: corrupt input"),
        ("text/plain", "protobuf", 204, ""),  # any type but JSON means snappy protobuf
        ("application/json; charsetutf-8", "json", 400, "mime: invalid media parameter"),
        ("application/x-protobuf", "framed snappy", 400, "snappy: corrupt input"),
    ],
)
def test_the_content_type_picks_the_decoder(loki, client, content_type, body_kind, status, message):
    request = loki_push_pb2.PushRequest()
    request.streams.add(labels='{app="api"}').entries.add(line="x").timestamp.seconds = NOW_NS // SECOND
    body = {
        "json": json_body(({"app": "api"}, [(NOW_NS, "x")])),
        "protobuf": bytes(cramjam.snappy.compress_raw(request.SerializeToString())),
        "framed snappy": bytes(cramjam.snappy.compress(request.SerializeToString())),
    }[body_kind]
    response = push(client, loki, body, {"Content-Type": content_type} if content_type else {})
    if status == 204:
        assert_accepted(response)
        assert lines(loki) == ["x"]
    else:
        assert_rejected(response, status, message)
        assert loki.entries() == []


def test_content_encodings(loki, client):
    proto = proto_body(('{app="api"}', [(NOW_NS, "proto")]))
    document = json_body(({"app": "api"}, [(NOW_NS + 1, "json")]))
    raw_deflate = zlib.compressobj(wbits=-15)
    deflated = raw_deflate.compress(document) + raw_deflate.flush()

    assert_accepted(push(client, loki, gzip.compress(proto), PROTOBUF | {"Content-Encoding": "gzip"}))
    assert_accepted(push(client, loki, proto, PROTOBUF | {"Content-Encoding": "snappy"}))  # no-op: proto is snappy
    assert_accepted(push(client, loki, gzip.compress(document), JSON | {"Content-Encoding": "gzip"}))
    assert_accepted(push(client, loki, deflated, JSON | {"Content-Encoding": "deflate"}))

    zlib_wrapped = push(client, loki, zlib.compress(document), JSON | {"Content-Encoding": "deflate"})
    assert zlib_wrapped.status_code == 400 and zlib_wrapped.text.startswith("flate: ")  # Go's deflate is raw
    assert_rejected(push(client, loki, b"not gzip", JSON | {"Content-Encoding": "gzip"}), 400, "unexpected EOF")
    assert_rejected(push(client, loki, b"x" * 20, JSON | {"Content-Encoding": "gzip"}), 400, "gzip: invalid header")
    snappy_json = push(
        client, loki, bytes(cramjam.snappy.compress_raw(document)), JSON | {"Content-Encoding": "snappy"}
    )
    assert snappy_json.status_code == 400  # snappy is only undone for protobuf
    assert_rejected(
        push(client, loki, document, JSON | {"Content-Encoding": "br"}), 400, 'Content-Encoding "br" not supported'
    )
    assert lines(loki) == ["proto", "json"]  # each body was pushed twice, deduplicated
    assert loki.stats.entries_deduplicated == 2


def test_unknown_paths_and_methods(loki, client):
    assert_rejected(client.post(loki.url + "/api/v1/push", content=b""), 404, "404 page not found")
    assert client.get(loki.push_url).status_code == 405


# -- tenants -----------------------------------------------------------------------------------


def test_without_auth_every_push_belongs_to_the_fake_tenant(loki, client):
    assert_accepted(
        push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "x")])), PROTOBUF | {"X-Scope-OrgID": "team-a"})
    )
    assert lines(loki, "fake") == ["x"]
    assert lines(loki, "team-a") == []


def test_with_auth_the_tenant_comes_from_x_scope_orgid(client):
    body = proto_body(('{app="api"}', [(NOW_NS, "x")]))
    with LokiReceiver(auth_enabled=True, clock_ns=lambda: NOW_NS) as loki:
        assert_rejected(push(client, loki, body), 401, "no org id")
        assert_rejected(push(client, loki, body, PROTOBUF | {"X-Scope-OrgID": "a|b"}), 400, "multiple org IDs present")
        assert_rejected(
            push(client, loki, body, PROTOBUF | {"X-Scope-OrgID": "team/a"}),
            400,
            "tenant ID 'team/a' contains unsupported character '/'",
        )
        assert_accepted(push(client, loki, body, PROTOBUF | {"X-Scope-OrgID": "team-a"}))
        assert lines(loki, "team-a") == ["x"]
        assert lines(loki, "fake") == []


# -- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"app.kubernetes.io/name": "web"}, "1:5: parse error: unexpected character inside braces: '.'"),
        ({"foo-bar": "x"}, "1:5: parse error: unexpected character inside braces: '-'"),
        ({"k8s/app": "x"}, "1:5: parse error: unexpected character inside braces: '/'"),
        ({"1app": "x"}, "1:2: parse error: unexpected character inside braces: '1'"),
        ('{app="x}', "1:6: parse error: unterminated quoted string"),
        ("{app=x}", '1:6: parse error: unexpected identifier "x" in label set, expected string'),
        ('{app="x" pod="y"}', '1:10: parse error: unexpected identifier "pod" in label set, expected "," or "}"'),
        ('{app="\\q"}', "1:6: parse error: unknown escape sequence U+0071 'q'"),
    ],
)
def test_one_unparseable_label_set_fails_the_whole_request(loki, client, labels, message):
    entries = [(NOW_NS, "lost")]
    if isinstance(labels, dict):  # JSON keys are written unquoted into the label string
        body, headers = json_body(({"app": "ok"}, entries), (labels, entries)), JSON
    else:
        body, headers = proto_body(('{app="ok"}', entries), (labels, entries)), PROTOBUF
    assert_rejected(push(client, loki, body, headers), 400, "couldn't parse labels: " + message)
    assert loki.entries() == []


def test_empty_label_values_are_dropped_and_quoted_names_accepted(loki, client):
    body = proto_body(
        ('{b="x", a="", c="y"}', [(NOW_NS, "one")]), ('{"app.kubernetes.io/name"="web"}', [(NOW_NS, "two")])
    )
    assert_accepted(push(client, loki, body))
    assert loki.streams() == [
        {"b": "x", "c": "y", "service_name": "unknown_service"},
        {"app.kubernetes.io/name": "web", "service_name": "unknown_service"},
    ]


@pytest.mark.parametrize(
    ("labels", "service_name"),
    [
        ({"service": "s", "app": "a", "container": "c"}, "s"),
        ({"app": "a", "container": "c", "job": "ns/j"}, "a"),
        ({"container": "c", "job": "ns/j"}, "c"),
        ({"job": "ns/j"}, "ns/j"),
        ({"pod": "p"}, "unknown_service"),
        ({"service_name": "mine", "app": "a"}, "mine"),
    ],
)
def test_service_name_is_discovered_like_loki(loki, client, labels, service_name):
    assert_accepted(push(client, loki, json_body((labels, [(NOW_NS, "x")])), JSON))
    assert loki.streams() == [labels | {"service_name": service_name}]


def test_label_limits_reject_streams_but_keep_valid_ones(loki, client):
    fifteen = ", ".join(f'l{i:02d}="v"' for i in range(15))
    sixteen = ", ".join(f'l{i:02d}="v"' for i in range(16))
    long_name, long_value = "n" * 1025, "v" * 2049
    body = proto_body(
        ('{app="ok"}', [(NOW_NS, "kept")]),
        ("{" + fifteen + "}", [(NOW_NS, "fifteen names plus service_name")]),
        ('{app="a", app="b"}', [(NOW_NS, "duplicate")]),
        ("{" + sixteen + "}", [(NOW_NS, "sixteen")]),
        ("{" + long_name + '="v"}', [(NOW_NS, "long name")]),
        ('{app="' + long_value + '"}', [(NOW_NS, "long value")]),
    )
    expected = [
        """stream '{app="a", app="b", service_name="a"}' has duplicate label name: 'app'""",
        "entry for stream '{" + sixteen + ', service_name="unknown_service"}\' has 16 label names; limit 15',
        "stream '{"
        + long_name
        + '="v", service_name="unknown_service"}\' has label name too long: \''
        + long_name
        + "'",
        "stream '{app=\""
        + long_value
        + '", service_name="'
        + long_value
        + "\"}' has label value too long: '"
        + long_value
        + "'",
    ]
    assert_rejected(push(client, loki, body), 400, "; ".join("1 errors like: " + message for message in expected))
    assert lines(loki) == ["kept", "fifteen names plus service_name"]


# -- entries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [[NOW_NS, "ts as a number"], [str(NOW_NS), 42], ["yesterday", "x"], [str(NOW_NS), "x", {"n": 1}], "not an array"],
)
def test_json_timestamps_lines_and_metadata_must_be_strings(loki, client, value):
    body = json.dumps({"streams": [{"stream": {"app": "api"}, "values": [[str(NOW_NS), "ok"], value]}]}).encode()
    response = push(client, loki, body, JSON)
    assert response.status_code == 400
    assert response.text.startswith("loghttp.PushRequest.Streams: []loghttp.LogProtoStream: ")
    assert loki.entries() == []


def test_timestamps_outside_the_acceptance_window(loki, client):
    body = proto_body(
        ('{app="api"}', [(NOW_NS - 8 * 86400 * SECOND, "too old"), (NOW_NS - 6 * 86400 * SECOND, "kept")]),
        ('{app="api"}', [(NOW_NS + 11 * 60 * SECOND, "too new"), (NOW_NS + 9 * 60 * SECOND, "kept too")]),
    )
    too_old = (
        f"entry for stream '{API}' has timestamp too old: 2025-06-07T15:06:40Z, "
        "oldest acceptable timestamp is: 2025-06-08T15:06:40Z"
    )
    too_new = f"entry for stream '{API}' has timestamp too new: 2025-06-15T15:17:40Z"
    assert_rejected(push(client, loki, body), 400, f"1 errors like: {too_old}; 1 errors like: {too_new}")
    assert lines(loki) == ["kept", "kept too"]


def test_a_repeated_message_is_counted(loki, client):
    old = NOW_NS - 8 * 86400 * SECOND
    body = proto_body(('{app="api"}', [(old, "a"), (old, "b"), (NOW_NS, "kept")]))
    response = push(client, loki, body)
    assert response.text.startswith(f"2 errors like: entry for stream '{API}' has timestamp too old: ")
    assert response.text.count("errors like") == 1
    assert lines(loki) == ["kept"]


def test_a_single_error_has_no_count_prefix(loki, client):
    body = proto_body(('{app="api"}', [(NOW_NS + 3600 * SECOND, "too new")]))
    assert_rejected(
        push(client, loki, body), 400, f"entry for stream '{API}' has timestamp too new: 2025-06-15T16:06:40Z"
    )


def test_line_size_limit(loki, client):
    limit = 256 * 1024
    body = proto_body(('{app="api"}', [(NOW_NS, "x" * limit), (NOW_NS + 1, "y" * (limit + 1))]))
    assert_rejected(
        push(client, loki, body),
        400,
        f"max entry size '{limit}' bytes exceeded for stream '{API}' "
        f"while adding an entry with length '{limit + 1}' bytes",
    )
    assert lines(loki) == ["x" * limit]


def test_line_size_truncation_keeps_the_limit_with_the_identifier(loki, client):
    loki.limits = replace(
        loki.limits, max_line_size_bytes=10, max_line_size_truncate=True, max_line_size_truncate_identifier="..."
    )
    assert_accepted(
        push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "0123456789ABCDEF"), (NOW_NS + 1, "short")])))
    )
    assert lines(loki) == ["0123456...", "short"]


def test_structured_metadata_limits_and_name_normalisation(loki, client):
    too_many = {f"k{i}": "v" for i in range(129)}
    too_large = {"big": "x" * (64 * 1024)}
    body = proto_body(
        (
            '{app="api"}',
            [(NOW_NS, "many", too_many), (NOW_NS + 1, "large", too_large), (NOW_NS + 2, "ok", {"trace.id": "t"})],
        )
    )
    expected = [
        f"stream '{API}' has too many structured metadata labels: '129', limit: '128'. Please see "
        "`limits_config.max_structured_metadata_entries_count` or contact your Loki administrator to increase it.",
        f"stream '{API}' has structured metadata too large: '65539' bytes, limit: '65536' bytes. Please see "
        "`limits_config.max_structured_metadata_size` or contact your Loki administrator to increase it.",
    ]
    assert_rejected(push(client, loki, body), 400, "; ".join("1 errors like: " + message for message in expected))
    assert [(entry.line, entry.structured_metadata) for entry in loki.entries()] == [("ok", {"trace_id": "t"})]


def test_protobuf_timestamp_out_of_range(loki, client):
    request = loki_push_pb2.PushRequest()
    entry = request.streams.add(labels='{app="api"}').entries.add(line="x")
    entry.timestamp.seconds, entry.timestamp.nanos = NOW_NS // SECOND, SECOND
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    assert_rejected(
        push(client, loki, body),
        400,
        "timestamp: &Timestamp{Seconds:1750000000,Nanos:1000000000,}: nanos not in range [0, 1e9)",
    )


def test_no_streams_is_422_and_empty_streams_are_skipped(loki, client):
    no_stream = "error at least one valid stream is required for ingestion"
    assert_rejected(push(client, loki, b'{"streams":[]}', JSON), 422, no_stream)
    assert_rejected(push(client, loki, b"{}", JSON), 422, no_stream)
    assert_rejected(push(client, loki, proto_body(), PROTOBUF), 422, no_stream)
    # Label limits are not even looked at when a stream has no entries.
    assert_accepted(push(client, loki, b'{"streams":[{"stream":{"app":"api"},"values":[]}]}', JSON))
    assert_accepted(
        push(client, loki, proto_body(("{" + ", ".join(f'l{i}="v"' for i in range(20)) + "}", [])), PROTOBUF)
    )
    assert loki.entries() == [] and loki.streams() == []


# -- ingester ----------------------------------------------------------------------------------


def test_an_entry_identical_to_the_last_one_is_dropped_silently(loki, client):
    assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "a"), (NOW_NS + 1, "b", {"k": "v"})]))))
    assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS + 1, "b", {"k": "v"})]))))
    assert lines(loki) == ["a", "b"]
    assert loki.stats.entries_deduplicated == 1
    # Same timestamp but another line or other metadata is another entry.
    assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS + 1, "c"), (NOW_NS + 1, "c", {"k": "w"})]))))
    assert lines(loki) == ["a", "b", "c", "c"]


def test_a_replayed_batch_is_not_stored_twice(loki, client):
    batch = proto_body(('{app="api"}', [(NOW_NS + i, f"line {i}") for i in range(5)]))
    assert_accepted(push(client, loki, batch))
    assert_accepted(push(client, loki, batch))
    assert lines(loki) == [f"line {i}" for i in range(5)]
    assert (loki.stats.entries_stored, loki.stats.entries_deduplicated) == (5, 5)


def test_an_entry_older_than_the_stream_window_is_too_far_behind(loki, client):
    assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "newest")]))))
    body = proto_body(('{app="api"}', [(NOW_NS - 7200 * SECOND, "too far"), (NOW_NS - 1800 * SECOND, "in window")]))
    assert_rejected(
        push(client, loki, body),
        400,
        "entry with timestamp 2025-06-15 13:06:40 +0000 UTC ignored, reason: 'entry too far behind, entry timestamp "
        "is: 2025-06-15T13:06:40Z, oldest acceptable timestamp is: 2025-06-15T14:06:40Z',\n"
        f"user 'fake', total ignored: 1 out of 2 for stream: {API}",
    )
    assert lines(loki) == ["in window", "newest"]


def test_the_ingester_reports_ten_rejected_entries_at_most(loki, client):
    assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "newest")]))))
    old = [(NOW_NS - 7200 * SECOND + i * SECOND // 2, f"old {i}") for i in range(12)]
    response = push(client, loki, proto_body(('{app="api"}', old)))
    assert response.status_code == 400
    assert response.text.count("ignored, reason: 'entry too far behind") == 10
    assert "entry with timestamp 2025-06-15 13:06:40.5 +0000 UTC ignored" in response.text
    assert response.text.endswith(f"user 'fake', total ignored: 12 out of 12 for stream: {API}\n")


def test_only_the_last_streams_ingester_error_reaches_the_client(loki, client):
    assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "newest")]))))
    body = proto_body(('{app="api"}', [(NOW_NS - 7200 * SECOND, "dropped unseen")]), ('{app="web"}', [(NOW_NS, "web")]))
    assert_accepted(push(client, loki, body))
    assert lines(loki) == ["newest", "web"]


def test_ordered_writes_reject_entries_out_of_order(client):
    with LokiReceiver(limits=LokiLimits(unordered_writes=False), clock_ns=lambda: NOW_NS) as loki:
        assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "newest")]))))
        assert_rejected(
            push(client, loki, proto_body(('{app="api"}', [(NOW_NS - SECOND, "older")]))),
            400,
            "entry with timestamp 2025-06-15 15:06:39 +0000 UTC ignored, reason: 'entry out of order',\n"
            f"user 'fake', total ignored: 1 out of 1 for stream: {API}",
        )
        assert lines(loki) == ["newest"]


def test_count_only_keeps_counters_and_deduplicates_the_last_entry_only(client):
    with LokiReceiver(count_only=True, clock_ns=lambda: NOW_NS) as loki:
        assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "a"), (NOW_NS + 1, "b")]))))
        assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS + 1, "b")]))))
        assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "a")]))))
        stats = loki.stats
        assert (stats.entries_received, stats.entries_stored, stats.entries_deduplicated) == (4, 3, 1)
        assert loki.streams() == [{"app": "api", "service_name": "api"}]
        with pytest.raises(RuntimeError, match="keeps no entries"):
            loki.entries()


# -- rate limit and faults ---------------------------------------------------------------------


def rate_limited(lines: int, size: int, limit: int = 100) -> str:
    return (
        f"ingestion rate limit exceeded for user fake (limit: {limit} bytes/sec) while attempting to ingest "
        f"'{lines}' lines totaling '{size}' bytes, reduce log volume or contact your Loki administrator to see if "
        "the limit can be increased"
    )


def test_the_ingestion_rate_limit_rejects_the_whole_push(client):
    clock = [NOW_NS]
    limits = LokiLimits(ingestion_rate_bytes_per_s=100, ingestion_burst_size_bytes=100)
    with LokiReceiver(limits=limits, clock_ns=lambda: clock[0]) as loki:
        assert_accepted(push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "x" * 60)]))))
        body = proto_body(('{app="api"}', [(NOW_NS + 1, "y" * 30, {"k": "v"}), (NOW_NS + 2, "z" * 18)]))
        assert_rejected(push(client, loki, body), 429, rate_limited(2, 50))
        assert lines(loki) == ["x" * 60]
        clock[0] += SECOND  # tokens refill at 100 bytes/s
        assert_accepted(push(client, loki, body))
        assert lines(loki) == ["x" * 60, "y" * 30, "z" * 18]


def test_injected_rate_limit_and_server_errors_store_nothing(loki, client):
    body = proto_body(('{app="api"}', [(NOW_NS, "twelve bytes")]))
    loki.inject_fault(Fault.RATE_LIMITED, count=2)
    loki.inject_fault(Fault.INTERNAL_ERROR)
    loki.inject_fault(Fault.UNAVAILABLE)
    for _ in range(2):
        assert_rejected(push(client, loki, body), 429, rate_limited(1, 12, limit=4 * 1024 * 1024))
    assert push(client, loki, body).status_code == 500
    assert_rejected(push(client, loki, body), 503, "too many unhealthy instances in the ring")
    assert loki.entries() == []
    assert_accepted(push(client, loki, body))
    assert lines(loki) == ["twelve bytes"]
    assert loki.stats.responses == {429: 2, 500: 1, 503: 1, 204: 1}


def test_dropped_connections(loki, client):
    loki.inject_fault(Fault.DROP_CONNECTION)
    loki.inject_fault(Fault.DROP_AFTER_WRITE)
    with pytest.raises(httpx.RemoteProtocolError):
        push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "never written")])))
    with pytest.raises(httpx.RemoteProtocolError):
        push(client, loki, proto_body(('{app="api"}', [(NOW_NS, "written, not acknowledged")])))
    assert lines(loki) == ["written, not acknowledged"]
    assert loki.stats.connections_dropped == 2


def test_a_slow_answer_times_the_client_out_after_the_write(loki, client):
    body = proto_body(('{app="api"}', [(NOW_NS, "once")]))
    loki.inject_fault(Fault.SLOW_RESPONSE, delay_s=0.5)
    with pytest.raises(httpx.ReadTimeout):
        client.post(loki.push_url, content=body, headers=PROTOBUF, timeout=0.1)
    assert_accepted(push(client, loki, body))  # the retry is deduplicated
    assert lines(loki) == ["once"]


def test_bodies_over_the_size_limit_are_413(loki, client):
    loki.limits = replace(loki.limits, max_recv_msg_size_bytes=100)
    big = proto_body(('{app="api"}', [(NOW_NS + i, hashlib.sha256(bytes([i])).hexdigest()) for i in range(4)]))
    assert len(big) > 100  # hex digests do not compress
    assert_rejected(
        push(client, loki, big), 413, f"request body too large: message size too large than max ({len(big)} vs 100)"
    )
    request = loki_push_pb2.PushRequest()
    request.streams.add(labels='{app="api"}').entries.add(line="a" * 500).timestamp.seconds = NOW_NS // SECOND
    small_but_expanding = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    assert len(small_but_expanding) < 100
    assert_rejected(
        push(client, loki, small_but_expanding),
        413,
        f"request body too large: message size too large than max ({request.ByteSize()} vs 100)",
    )
    assert loki.entries() == []


def test_a_stopped_receiver_refuses_connections(client):
    loki = LokiReceiver(clock_ns=lambda: NOW_NS).start()
    body = proto_body(('{app="api"}', [(NOW_NS, "x")]))
    assert_accepted(push(client, loki, body))  # leaves a keep-alive connection open
    url = loki.push_url
    loki.stop()
    with pytest.raises(httpx.TransportError):
        client.post(url, content=body, headers=PROTOBUF)


# -- queries -----------------------------------------------------------------------------------


def test_logql_stream_selectors_and_line_filters(loki, client):
    body = proto_body(
        ('{container="etcd", namespace="kube-system"}', [(NOW_NS, "finished compaction"), (NOW_NS + 1, "slow apply")]),
        ('{container="apiserver", namespace="kube-system"}', [(NOW_NS + 2, "compaction requested")]),
        ('{container="web", namespace="shop"}', [(NOW_NS + 3, "GET /cart 500")]),
    )
    assert_accepted(push(client, loki, body))

    def found(logql):
        return [line for _labels, _ts, line in loki.query("fake", logql)]

    assert found('{container="etcd"} |= "compaction"') == ["finished compaction"]
    assert loki.query("fake", '{container="etcd"} |= "compaction"')[0][:2] == (
        {"container": "etcd", "namespace": "kube-system", "service_name": "etcd"},
        NOW_NS,
    )
    assert found('{namespace="kube-system"} |= "compaction"') == ["finished compaction", "compaction requested"]
    assert found('{namespace="kube-system", container!="etcd"}') == ["compaction requested"]
    assert found('{container=~"etcd|web"} != "apply"') == ["finished compaction", "GET /cart 500"]
    assert found('{container=~"etc"}') == []  # label regexes are anchored
    assert found('{namespace="kube-system", container!~"api.*"} |~ "comp[a-z]+" !~ "^slow"') == ["finished compaction"]
    assert found('{service_name="web"} |~ `\\s5\\d\\d$`') == ["GET /cart 500"]
    assert loki.query("other-tenant", '{container="etcd"}') == []


@pytest.mark.parametrize(
    ("logql", "message"),
    [
        ("{}", "parse error at line 1, col 2: syntax error: unexpected }, expecting identifier"),
        ('container="etcd"', "parse error at line 1, col 1: syntax error: unexpected container, expecting {"),
        ('{container=~".*"}', "queries require at least one regexp or equality matcher"),
        ('{container="etcd"} | json', "supports line filters only"),
        ('{container="etcd"} |= compaction', "unexpected compaction, expecting string"),
        ('{container="etcd} ', "unterminated quoted string"),
        ('{container=~"("}', "invalid regex"),
    ],
)
def test_invalid_logql_is_a_parse_error(loki, logql, message):
    with pytest.raises(LogQLParseError, match="parse error") as raised:
        loki.query("fake", logql)
    assert message in str(raised.value)


# -- the label grammar itself ------------------------------------------------------------------


def test_label_sets_round_trip_through_go_quoting():
    pairs = [("a", 'quote " backslash \\ newline \n bell \a é'), ("b.c", "dotted name"), ("z", "")]
    assert format_labels(pairs) == '{a="quote \\" backslash \\\\ newline \\n bell \\a é", "b.c"="dotted name", z=""}'
    assert parse_labels(format_labels(pairs)) == pairs
    assert parse_labels("up{job='x', b=`raw\\n`}") == [("__name__", "up"), ("b", "raw\\n"), ("job", "x")]
    with pytest.raises(LabelParseError, match=r"^1:7: parse error: unexpected end of input inside braces$"):
        parse_labels('{a="b"')


# -- as a program ------------------------------------------------------------------------------


def test_the_program_prints_its_counts_on_exit():
    root = Path(__file__).resolve().parents[1]
    program = subprocess.Popen(
        [sys.executable, "-m", "tests.receivers.loki", "--port", "0", "--count-only"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = program.stdout.readline().strip().removeprefix("listening on ")
        now_ns = time.time_ns()  # the program runs on the real clock
        body = proto_body(('{app="api"}', [(now_ns, "a"), (now_ns + 1, "b")]))
        assert_accepted(httpx.post(url + "/loki/api/v1/push", content=body, headers=PROTOBUF))
        program.send_signal(signal.SIGTERM)
        counts = json.loads(program.communicate(timeout=10)[0])
    finally:
        program.kill()
    assert counts["push_requests"] == 1
    assert (counts["entries_received"], counts["entries_stored"]) == (2, 2)
    assert counts["responses"] == {"204": 1}
