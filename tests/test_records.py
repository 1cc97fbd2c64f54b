"""The record layout sinks receive: input line -> expected record."""

import orjson
import pytest

from shipper.kube.file_names import kubernetes_from_path
from shipper.parse.records import JsonOptions, RecordBuilder

T = "2026-11-20T10:00:00.123456789Z"
KUBE = {"pod_name": "p", "namespace_name": "ns"}


def build(content, json=JsonOptions(), time=T, stream="stdout", line_flags=0):
    records, offsets = [], []
    counts = RecordBuilder(json).build(
        [(42, time, stream, content, line_flags)], orjson.Fragment(orjson.dumps(KUBE)), records, offsets
    )
    assert offsets == [42]
    return orjson.loads(orjson.dumps(records[0])), counts


BASE = {"@timestamp": "2026-11-20T10:00:00.123Z", "@timestamp_nanos": T, "stream": "stdout"}


@pytest.mark.parametrize(
    "content, json, expected",
    [
        (b"plain text", JsonOptions(), {**BASE, "log": "plain text", "kubernetes": KUBE}),
        (b'{"level":"info","n":1,"ok":true,"f":1.5,"o":{"x":null}}', JsonOptions(),
         {"level": "info", "n": 1, "ok": True, "f": 1.5, "o": {"x": None},
          **BASE, "log": '{"level":"info","n":1,"ok":true,"f":1.5,"o":{"x":null}}', "kubernetes": KUBE}),
        (b'{"level":"info"}', JsonOptions(keep_raw=False), {"level": "info", **BASE, "kubernetes": KUBE}),
        (b'{"level":"info"}', JsonOptions(mode="key", key="app"),
         {**BASE, "log": '{"level":"info"}', "app": {"level": "info"}, "kubernetes": KUBE}),
        (b'{"level":"info"}', JsonOptions(mode="off"), {**BASE, "log": '{"level":"info"}', "kubernetes": KUBE}),
        (b"[1,2,3]", JsonOptions(), {**BASE, "log": "[1,2,3]", "kubernetes": KUBE}),  # not an object: a message
        (b'{"a":1', JsonOptions(), {**BASE, "log": '{"a":1', "kubernetes": KUBE}),  # broken JSON: a message
        (b'{"a":1} trailing', JsonOptions(), {**BASE, "log": '{"a":1} trailing', "kubernetes": KUBE}),
    ],
)
def test_message_to_record(content, json, expected):
    record, _ = build(content, json)
    assert record == expected
    # Key order too: a merged object's own keys first, then the shipper's (the parsed object is
    # the record, not copied into a new one).
    assert list(record) == list(expected)


def test_colliding_app_keys_are_renamed_not_lost():
    content = b'{"@timestamp":"app time","stream":"mine","kubernetes":"k","log":"l","msg":"m","app_stream":"taken"}'
    record, counts = build(content)
    assert record["stream"] == "stdout" and record["kubernetes"] == KUBE and record["log"] == content.decode()
    assert record["app_timestamp"] == "app time"
    assert record["_app_stream"] == "mine"  # app_stream was the app's own key
    assert record["app_stream"] == "taken"
    assert record["app_kubernetes"] == "k" and record["app_log"] == "l" and record["msg"] == "m"
    assert counts.json_key_conflicts == 4 and counts.json_merged == 1


def test_invalid_utf8_is_replaced_and_flagged():
    record, counts = build(b"bad \xff\xfe byte \x80")
    assert record["log"] == "bad \ufffd\ufffd byte \ufffd"
    assert record["shipper"] == {"flags": ["invalid_utf8"]}
    assert counts.flagged == {"invalid_utf8": 1}


def test_timestamps_are_utc_milliseconds_and_bad_ones_fall_back_to_now():
    record, _ = build(b"x", time="2024-05-01T10:00:00.987654321+02:00")
    assert record["@timestamp"] == "2024-05-01T08:00:00.987Z"
    assert record["@timestamp_nanos"] == "2024-05-01T10:00:00.987654321+02:00"
    for bad in ("2024-99-01T10:00:00+02:00", "5", ""):  # "5": a docker line's numeric time, as text
        record, counts = build(b"x", time=bad)
        assert record["shipper"] == {"flags": ["bad_time"]} and counts.flagged == {"bad_time": 1}
        assert record["@timestamp"].endswith("Z") and len(record["@timestamp"]) == 24
        assert record["@timestamp_nanos"] == bad


def test_malformed_line_keeps_the_raw_text():
    record, _ = build(b"Segmentation fault", time=None, stream=None, line_flags=1)
    assert record["log"] == "Segmentation fault"
    assert record["stream"] is None and record["shipper"] == {"flags": ["malformed"]}


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/var/log/containers/etcd-cp-1_kube-system_etcd-" + "a" * 64 + ".log",
         {"pod_name": "etcd-cp-1", "namespace_name": "kube-system", "container_name": "etcd",
          "container_id": "a" * 64, "docker_id": "a" * 64}),
        ("/var/log/containers/relay-6d8f_kubearmor_kubearmor-relay-" + "b" * 64 + ".log",
         {"pod_name": "relay-6d8f", "namespace_name": "kubearmor", "container_name": "kubearmor-relay",
          "container_id": "b" * 64, "docker_id": "b" * 64}),
        ("/var/log/pods/shop_checkout-7d9f_0b7c6f2e-1111-2222-3333-444455556666/checkout/0.log",
         {"namespace_name": "shop", "pod_name": "checkout-7d9f",
          "pod_id": "0b7c6f2e-1111-2222-3333-444455556666", "container_name": "checkout"}),
        ("/tmp/app.log", {}),
    ],
)
def test_kubernetes_fields_from_file_names(path, expected):
    assert kubernetes_from_path(path) == expected
