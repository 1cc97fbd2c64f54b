"""The Loki sink's parts on their own: Promtail's labels, Loki's label text, entry times,
push bodies, and the options with their cardinality guard."""

import cramjam
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.config import ConfigError, parse_config
from shipper.sinks.loki_encoding import (Entries, ProtobufBodies, group_streams, json_body, protobuf_body,
                                          to_epoch_ns)
from shipper.sinks.loki_labels import StreamLabeler, StreamLabels, promtail_labels
from shipper.sinks.loki_options import LokiOptions, unbounded_source
from shipper.sinks.options import BatchOptions, DeliveryOptions
from tests.receivers import loki_push_pb2
from tests.receivers.loki import format_labels, parse_labels

FILE = "/var/log/containers/x.log"


@pytest.mark.parametrize("kubernetes, app, extra", [
    # From the file name only: the controller is read from Kubernetes' generated pod names.
    ({"pod_name": "checkout-5c8d66c76d-qxk2n"}, "checkout", {}),  # Deployment: ReplicaSet hash and suffix
    ({"pod_name": "falco-7x2kq"}, "falco", {}),  # DaemonSet
    ({"pod_name": "nginx-proxy"}, "nginx-proxy", {}),  # a bare pod: 'proxy' is no generated suffix
    ({"pod_name": "web-0"}, "web-0", {}),  # StatefulSet ordinals are not generated
    # With pod metadata: Promtail's order of app.kubernetes.io/name, app, controller, pod.
    ({"pod_name": "p-1", "labels": {"app.kubernetes.io/name": "shop", "app": "legacy"}}, "shop", {}),
    ({"pod_name": "p-1", "labels": {"app": "legacy"}}, "legacy", {}),
    ({"pod_name": "p-7x2kq", "labels": {}, "owner_name": "orders-84c6d9f7b8"}, "orders", {}),
    ({"pod_name": "p-7x2kq", "labels": {}, "owner_name": "orders"}, "orders", {}),  # the cache's Deployment
    # The metadata cache de-dots label keys by default (kube.de_dot).
    ({"pod_name": "p-1", "labels": {"app_kubernetes_io/name": "shop", "app": "legacy"}}, "shop", {}),
    ({"pod_name": "p-7x2kq", "labels": {}}, "p-7x2kq", {}),  # metadata known, no controller: the pod
    ({"pod_name": "p", "labels": {"app.kubernetes.io/instance": "blue", "app.kubernetes.io/component": "db"}},
     "p", {"instance": "blue", "component": "db"}),
    ({"pod_name": "p", "labels": {"instance": "green", "component": "cache"}}, "p",
     {"instance": "green", "component": "cache"}),
])
def test_promtail_labels(kubernetes, app, extra):
    labels = promtail_labels({"namespace_name": "shop", "container_name": "c", "host": "node-1", **kubernetes}, FILE)
    assert labels == {"namespace": "shop", "pod": kubernetes["pod_name"], "container": "c", "app": app,
                      "job": f"shop/{app}", "node_name": "node-1", "instance": "", "component": "",
                      "filename": FILE, **extra}


def test_a_file_without_kubernetes_fields_keeps_only_what_it_has():
    assert StreamLabels({**promtail_labels({}, FILE), "stream": "stdout"}).pairs == {"filename": FILE,
                                                                                    "stream": "stdout"}


def test_a_file_name_that_is_not_utf8_gives_a_label_loki_can_take():
    path = b"/var/log/x\xff.log".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    assert StreamLabels({"filename": path}).text == '{filename="/var/log/x\ufffd.log"}'


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True)


@given(st.dictionaries(label_names, st.text(max_size=12), max_size=5))
def test_label_text_is_what_loki_prints_and_parses_back(pairs):
    """Loki names a refused stream by its printed label set: the sink's text must be the same."""
    labels = StreamLabels(pairs)
    kept = sorted((name, value) for name, value in pairs.items() if value)
    assert labels.text == format_labels(kept)
    assert parse_labels(labels.text) == kept


def test_a_new_kubernetes_dict_for_a_file_relabels_its_streams():
    class File:
        key, path = "k", FILE
        kubernetes = {"pod_name": "p", "namespace_name": "n", "labels": {"app": "one"}}

    labeler = StreamLabeler(LokiOptions(delivery=DeliveryOptions(endpoints=("http://loki",))), lambda label: None)
    first = labeler.stream(labeler.for_file(File), "stdout")
    assert first.pairs["app"] == "one" and labeler.for_file(File) is labeler.for_file(File)
    File.kubernetes = {**File.kubernetes, "labels": {"app": "two"}}  # pod relabelled
    assert labeler.stream(labeler.for_file(File), "stdout").pairs["app"] == "two"


@pytest.mark.parametrize("time, ns", [
    ("2026-11-20T10:00:00.123456789Z", 1795168800_123456789),
    ("2026-11-20T10:00:00.25Z", 1795168800_250000000),  # containerd trims trailing zeros
    ("2026-11-20T10:00:00Z", 1795168800_000000000),
    ("2026-11-20T10:00:00.000000001+00:00", 1795168800_000000001),  # CRI-O
    ("2026-11-20T11:30:00.5+01:30", 1795168800_500000000),
    ("2026-11-20T04:00:00.5-06:00", 1795168800_500000000),
    ("2026-11-20T10:00:00.5", 1795168800_500000000),  # no zone: the node's clock is UTC
    ("2026-11-20T10:00:00.1234567891Z", 1795168800_123456789),  # beyond nanoseconds: cut
    ("not-a-time", None),
    ("2026-13-20T10:00:00Z", None),
    ("2026-11-20T10:00:00.Z", None),
    ("2026-11-20 10:00:00Z", None),
    ("2026-11-20T10:00:00.5+25:00", None),
])
def test_entry_times(time, ns):
    assert to_epoch_ns(time) == ns


class Labels:
    def __init__(self, text: str) -> None:
        self.text, self.pairs = text, dict(parse_labels(text))


def test_groups_of_one_stream_merge_in_time_order_keeping_read_order_for_equal_times():
    a, b = Labels('{a="1"}'), Labels('{a="2"}')
    groups = [Entries.from_tuples(a, [(3, "a3", (), 1), (1, "a1", (("k", "v"),), 1)]),
              Entries.from_tuples(b, [(2, "b2", (), 1)]), Entries.from_tuples(a, [(1, "a1 again", (), 2)])]
    assert [(stream.labels.text, stream.tuples()) for stream in group_streams(groups)] == [
        ('{a="1"}', [(1, "a1", (("k", "v"),), 1), (1, "a1 again", (), 2), (3, "a3", (), 1)]),
        ('{a="2"}', [(2, "b2", (), 1)])]


def pushed_entries(body: bytes) -> list[tuple[str, list[tuple]]]:
    """A protobuf push body as Loki reads it: per stream, its labels and (ts_ns, line, metadata)."""
    request = loki_push_pb2.PushRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
    return [(stream.labels, [(e.timestamp.seconds * 1_000_000_000 + e.timestamp.nanos, e.line,
                              [(p.name, p.value) for p in e.structuredMetadata]) for e in stream.entries])
            for stream in request.streams]


def test_push_bodies_carry_streams_entries_and_structured_metadata():
    entries = [(1795168800_123456789, "one", (), 1), (1795168801_000000000, "", (("k", "v"),), 1)]
    streams = [Entries.from_tuples(Labels('{app="x"}'), entries)]
    body, size = protobuf_body(streams)
    assert size == len(cramjam.snappy.decompress_raw(body))
    assert pushed_entries(body) == [
        ('{app="x"}', [(1795168800_123456789, "one", []), (1795168801_000000000, "", [("k", "v")])])]
    assert orjson.loads(json_body(streams)) == {"streams": [{"stream": {"app": "x"}, "values": [
        ["1795168800123456789", "one"], ["1795168801000000000", "", {"k": "v"}]]}]}


def test_push_bodies_built_one_after_another_carry_only_their_own_entries():
    bodies = ProtobufBodies()  # a sink's: its buffers outlive each push
    large = [Entries.from_tuples(Labels(f'{{app="{app}"}}'), [(1795168800_000000000 + i, f"{app} line {i} " * 20, (), 1)
                                                            for i in range(2000)]) for app in ("a", "b")]
    small = [Entries.from_tuples(Labels('{app="c"}'), [(0, "at the epoch", (), 2), (-1_500_000_000, "before it", (), 2),
                                                      (1795168800_000000001, "ünïcødé ✓", (("k", "v"),), 2)])]
    large_body, _ = bodies.build(large)
    small_body, size = bodies.build(small)
    assert pushed_entries(small_body) == [('{app="c"}', [(0, "at the epoch", []), (-1_500_000_000, "before it", []),
                                                         (1795168800_000000001, "ünïcødé ✓", [("k", "v")])])]
    assert size == len(cramjam.snappy.decompress_raw(small_body))
    assert [(labels, len(entries)) for labels, entries in pushed_entries(large_body)] == [
        ('{app="a"}', 2000), ('{app="b"}', 2000)]


def loki_sink(extra: str) -> str:
    return ("inputs: {a: {paths: [/x/*.log], sinks: [l]}}\n"
            f"sinks: {{l: {{type: loki, endpoints: [http://loki:3100]{extra}}}}}\n")


def test_defaults_are_promtails():
    options = parse_config(loki_sink(""), "c.yaml").sinks["l"].options
    assert (options.encoding, options.line_format, options.tenant) == ("protobuf", "message", "")
    assert options.delivery.batch == BatchOptions(max_records=10000, max_bytes=1 << 20, flush_secs=1.0)
    partly = parse_config(loki_sink(", batch: {flush_secs: 5}"), "c.yaml").sinks["l"].options.delivery.batch
    assert partly == BatchOptions(max_records=10000, max_bytes=1 << 20, flush_secs=5.0)
    assert options.delivery.tls.verify


@pytest.mark.parametrize("extra, message", [
    (", labels: {trace: trace_id}", "sinks.l.labels.trace: 'trace_id' is unbounded (each value makes a new "
     "stream); ship it under structured_metadata, or list it in force_labels if its values are few"),
    (", labels: {hash: kubernetes.labels.pod-template-hash}",
     "sinks.l.labels.hash: 'kubernetes.labels.pod-template-hash' is unbounded"),
    (", labels: {request_id: level}", "sinks.l.labels.request_id: 'level' is unbounded"),
    (", labels: {pod: kubernetes.labels.x}", "sinks.l.labels.pod: is one of the Promtail labels"),
    (", labels: {a.b: level}", "sinks.l.labels.a.b: is not a Loki label name"),
    (", labels: {__a: level}", "sinks.l.labels.__a: is not a Loki label name"),
    (", labels: {team: kubernetes}", "sinks.l.labels.team: 'kubernetes' is an object"),
    (", labels: {team: a..b}", "sinks.l.labels.team: 'a..b' is not a field path"),
    (", force_labels: [x]", "sinks.l.force_labels: names no label under labels: x"),
    (", static_labels: {cluster: ''}", "sinks.l.static_labels.cluster: must not be empty"),
    (", labels: {a: x1, b: x2, c: x3, d: x4, e: x5, f: x6}", "sinks.l.labels: streams would have up to 16 labels"),
    (", tenant: 'team a'", "sinks.l.tenant: 'team a' is not a Loki tenant id"),
    (", tenant: '..'", "sinks.l.tenant: '..' is not a Loki tenant id"),
    (", encoding: avro", "sinks.l.encoding: must be one of protobuf, json, got 'avro'"),
    (", compression: gzip", "sinks.l.compression: protobuf pushes are always snappy-compressed"),
    (", auth: {api_key: k}", "sinks.l.auth.api_key: is Elasticsearch's"),
    (", tenent: a", "sinks.l.tenent: unknown key (did you mean 'tenant'?)"),
])
def test_option_errors_name_the_key(extra, message):
    with pytest.raises(ConfigError) as error:
        parse_config(loki_sink(extra), "c.yaml")
    assert str(error.value).startswith(f"c.yaml: {message}")


def test_forced_labels_and_json_with_gzip_are_accepted():
    options = parse_config(loki_sink(", labels: {trace: trace_id}, force_labels: [trace], encoding: json, "
                                     "compression: gzip"), "c.yaml").sinks["l"].options
    assert options.labels == (("trace", "trace_id"),) and options.delivery.compression == "gzip"


@pytest.mark.parametrize("source, unbounded", [
    ("level", False), ("kubernetes.labels.team", False), ("kubernetes.namespace_name", False),
    ("http.method", False), ("kubernetes.labels.app.kubernetes.io/name", False),
    ("trace_id", True), ("traceId", True), ("http.path", True), ("user_id", True), ("kubernetes.pod_id", True),
    ("@timestamp", True), ("duration_ms", True), ("client_ip", True),
])
def test_the_cardinality_guard_rule(source, unbounded):
    assert unbounded_source(source) is unbounded
