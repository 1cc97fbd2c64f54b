"""Message parsing, one row per case: decoded message -> expected record.

Read top to bottom to learn the format: app JSON (including hostile JSON), KubeArmor relay
alerts and Falco events. Every row runs through RecordBuilder.build and orjson (as a sink
encodes it), so what is asserted is what Elasticsearch would receive.
"""

import orjson
import pytest

from shipper.parse.records import JsonOptions, RecordBuilder, SecurityOptions

T = "2026-11-20T10:00:00.123456789Z"
KUBE = {"pod_name": "p", "namespace_name": "ns"}
BASE = {"@timestamp": "2026-11-20T10:00:00.123Z", "@timestamp_nanos": T, "stream": "stdout"}


def build(content: bytes, json=JsonOptions(), security=SecurityOptions(), container=None):
    records, offsets = [], []
    counts = RecordBuilder(json, security).build(
        [(0, T, "stdout", content, 0)], orjson.Fragment(orjson.dumps(KUBE)), records, offsets, container=container
    )
    assert len(records) == 1 and offsets == [0]
    return orjson.loads(orjson.dumps(records[0])), counts


def plain(text: str, *flags: str) -> dict:
    """A message shipped as plain text, with the flags it carries."""
    record = {**BASE, "log": text, "kubernetes": KUBE}
    if flags:
        record["shipper"] = {"flags": list(flags)}
    return record


def merged(text: str, fields: dict, *flags: str) -> dict:
    """A JSON object merged at the top level (json.mode: top, keep_raw: true)."""
    record = {**BASE, "log": text, **fields, "kubernetes": KUBE}
    if flags:
        record["shipper"] = {"flags": list(flags)}
    return record


DEEP_21 = '{"a":' * 21 + "1" + "}" * 21  # 21 levels of objects: one over the default cap of 20
DEEP_20 = '{"a":' * 20 + "1" + "}" * 20
ARRAYS_300 = '{"a":' + "[" * 300 + "]" * 300 + "}"  # arrays count as levels too
TOO_DEEP_FOR_ORJSON = '{"a":' + "[" * 2000 + "]" * 2000 + "}"  # orjson itself stops at 1024
FIELDS_1001 = orjson.dumps({f"k{i}": i for i in range(1001)}).decode()
FIELDS_NESTED_1001 = orjson.dumps({f"o{i}": {f"k{j}": j for j in range(10)} for i in range(91)}).decode()  # 91+910
FIELDS_1000 = orjson.dumps({f"k{i}": i for i in range(1000)}).decode()
BIG = '{"msg":"' + "x" * (1 << 20) + '"}'  # a 1 MiB single-line JSON: within the caps, merged

APP_CASES = [
    # (what, message, expected record)
    ("plain text", "hello", plain("hello")),
    ("an object is merged, types kept", '{"level":"info","n":1,"f":1.5,"ok":true,"o":{"x":null}}',
     merged('{"level":"info","n":1,"f":1.5,"ok":true,"o":{"x":null}}',
            {"level": "info", "n": 1, "f": 1.5, "ok": True, "o": {"x": None}})),
    ("an array is a plain message", "[1,2]", plain("[1,2]")),
    ("broken JSON is a plain message", '{"a":1', plain('{"a":1')),
    ("trailing text is a plain message", '{"a":1} trailing', plain('{"a":1} trailing')),
    ("NaN is not JSON: plain message", '{"a":NaN}', plain('{"a":NaN}')),
    ("Infinity is not JSON: plain message", '{"a":Infinity}', plain('{"a":Infinity}')),
    ("1e400 overflows a double: plain message", '{"a":1e400}', plain('{"a":1e400}')),
    ("unsigned 64-bit integers are exact", '{"a":18446744073709551615}',
     merged('{"a":18446744073709551615}', {"a": 18446744073709551615})),
    ("integers beyond 64 bits become floats; the exact digits stay in log",
     '{"a":123456789012345678901234}', merged('{"a":123456789012345678901234}', {"a": 1.2345678901234568e23})),
    ("duplicate keys: the last wins; all of them stay in log", '{"a":1,"a":2}', merged('{"a":1,"a":2}', {"a": 2})),
    ("20 levels: merged", DEEP_20, merged(DEEP_20, orjson.loads(DEEP_20))),
    ("21 levels: not merged, flagged", DEEP_21, plain(DEEP_21, "json_too_deep")),
    ("300 levels of arrays: not merged, flagged", ARRAYS_300, plain(ARRAYS_300, "json_too_deep")),
    ("beyond orjson's 1024 levels: flagged too", TOO_DEEP_FOR_ORJSON, plain(TOO_DEEP_FOR_ORJSON, "json_too_deep")),
    ("1000 fields: merged", FIELDS_1000, merged(FIELDS_1000, orjson.loads(FIELDS_1000))),
    ("1001 fields: not merged, flagged", FIELDS_1001, plain(FIELDS_1001, "json_too_many_fields")),
    ("nested keys count", FIELDS_NESTED_1001, plain(FIELDS_NESTED_1001, "json_too_many_fields")),
    ("1 MiB single-line JSON: merged", BIG, merged(BIG, {"msg": "x" * (1 << 20)})),
    ("keys colliding with the shipper's are renamed app_*", '{"@timestamp":"t","kubernetes":"k","stream":"s","x":1}',
     merged('{"@timestamp":"t","kubernetes":"k","stream":"s","x":1}',
            {"app_timestamp": "t", "app_kubernetes": "k", "app_stream": "s", "x": 1})),
]


@pytest.mark.parametrize("what, message, expected", APP_CASES, ids=[case[0] for case in APP_CASES])
def test_app_json(what, message, expected):
    record, _ = build(message.encode())
    assert record == expected


def test_invalid_utf8_inside_json_strings_is_replaced_then_merged():
    # The message is decoded with U+FFFD replacement first, so the JSON still parses.
    record, counts = build(b'{"msg":"caf\xe9 \xff"}')
    assert record == merged('{"msg":"caf\ufffd \ufffd"}', {"msg": "caf\ufffd \ufffd"}, "invalid_utf8")
    assert counts.flagged == {"invalid_utf8": 1} and counts.json_merged == 1


def test_caps_are_counted_and_configurable():
    _, counts = build(DEEP_21.encode())
    assert counts.flagged == {"json_too_deep": 1} and counts.json_merged == 0
    _, counts = build(FIELDS_1001.encode())
    assert counts.flagged == {"json_too_many_fields": 1}
    record, _ = build(DEEP_21.encode(), JsonOptions(max_depth=30))
    assert "a" in record
    record, counts = build(b'{"a":1,"b":2,"c":3}', JsonOptions(max_fields=2))
    assert "a" not in record and counts.flagged == {"json_too_many_fields": 1}


# --- KubeArmor (PROTOCOLS.md section 4) ---------------------------------------------------

KA = {"Timestamp": 1795168801, "UpdatedTime": "2026-11-20T10:00:01.998346Z", "ClusterName": "default",
      "HostName": "node-1", "NamespaceName": "shop", "PodName": "checkout-1", "PPID": 221, "PID": 229, "UID": 0,
      "PolicyName": "block-apt", "Severity": "5", "Tags": "NIST,process", "ATags": ["NIST", "process"],
      "Message": "Alert!", "Type": "MatchedPolicy", "Operation": "Process", "Resource": "/usr/bin/apt",
      "Enforcer": "BPFLSM", "Action": "Block", "Result": "Permission denied"}


def ka(**changes) -> str:
    return orjson.dumps({**KA, **changes}).decode()


KUBEARMOR_CASES = [
    ("Severity string becomes an integer; names kept", ka(), {**KA, "Severity": 5}, []),
    ("Severity already an integer", ka(Severity=7), {**KA, "Severity": 7}, []),
    ("Severity unparsable: kept as Severity_raw, flagged", ka(Severity="high"),
     {k: v for k, v in KA.items() if k != "Severity"} | {"Severity_raw": "high"}, ["kubearmor_bad_severity"]),
    ("keywords that are not strings become their JSON text", ka(Action=1, Result=None),
     {**KA, "Severity": 5, "Action": "1", "Result": None}, []),
    ("Timestamp as a string of digits becomes an integer", ka(Timestamp="1795168801"), {**KA, "Severity": 5}, []),
    ("a log (no Severity) stays without one", orjson.dumps({k: v for k, v in KA.items() if k != "Severity"}).decode(),
     {k: v for k, v in KA.items() if k != "Severity"}, []),
]


@pytest.mark.parametrize("what, message, fields, flags", KUBEARMOR_CASES, ids=[c[0] for c in KUBEARMOR_CASES])
def test_kubearmor(what, message, fields, flags):
    record, counts = build(message.encode())
    assert record == merged(message, fields, *flags)
    assert counts.kubearmor == 1


def test_kubearmor_event_time_is_optional():
    record, _ = build(ka().encode())
    assert record["@timestamp"] == BASE["@timestamp"]  # default: the runtime's time
    record, _ = build(ka().encode(), security=SecurityOptions(event_time=True))
    assert record["@timestamp"] == "2026-11-20T10:00:01.998Z"  # UpdatedTime
    no_updated = orjson.dumps({k: v for k, v in KA.items() if k != "UpdatedTime"})
    record, _ = build(no_updated, security=SecurityOptions(event_time=True))
    assert record["@timestamp"] == "2026-11-20T10:00:01.000Z"  # Timestamp seconds
    record, _ = build(ka(UpdatedTime="garbage", Timestamp="x").encode(), security=SecurityOptions(event_time=True))
    assert record["@timestamp"] == BASE["@timestamp"]  # no usable event time: the runtime's


def test_kubearmor_recognised_by_container_when_known():
    _, counts = build(ka().encode(), container="kubearmor-relay")
    assert counts.kubearmor == 1
    record, counts = build(ka().encode(), container="checkout")  # an app printing the same shape
    assert counts.kubearmor == 0 and record["Severity"] == "5"
    _, counts = build(ka().encode(), security=SecurityOptions(enabled=False))
    assert counts.kubearmor == 0


# --- Falco (PROTOCOLS.md section 5) -------------------------------------------------------

FALCO = {"hostname": "node-1", "output": "10:01:12.482913557: Notice A shell was spawned",
         "output_fields": {"container.image": "reg/shop/checkout:2.14.3", "container.image.repository": "reg/shop/checkout",
                           "evt.time": 1795168872482913557, "proc.tty": 34816, "user.loginuid": -1, "k8s.pod.name": None},
         "priority": "Notice", "rule": "Terminal shell in container", "source": "syscall",
         "tags": ["T1059", "container"], "time": "2026-11-20T10:01:12.482913557Z"}
FALCO_FIELDS = {"container_image": "reg/shop/checkout:2.14.3", "container_image_repository": "reg/shop/checkout",
                "evt_time": 1795168872482913557, "proc_tty": 34816, "user_loginuid": -1, "k8s_pod_name": None}


def falco(**changes) -> str:
    return orjson.dumps({**FALCO, **changes}).decode()


FALCO_CASES = [
    ("output_fields de-dotted; level from priority", falco(),
     {**FALCO, "output_fields": FALCO_FIELDS, "level": "info"}),
    ("Emergency -> critical", falco(priority="Emergency"),
     {**FALCO, "priority": "Emergency", "output_fields": FALCO_FIELDS, "level": "critical"}),
    ("Alert -> critical", falco(priority="Alert"), {**FALCO, "priority": "Alert", "output_fields": FALCO_FIELDS, "level": "critical"}),
    ("Critical -> critical", falco(priority="Critical"),
     {**FALCO, "priority": "Critical", "output_fields": FALCO_FIELDS, "level": "critical"}),
    ("Error -> error", falco(priority="Error"), {**FALCO, "priority": "Error", "output_fields": FALCO_FIELDS, "level": "error"}),
    ("WARNING -> warning (any case)", falco(priority="WARNING"),
     {**FALCO, "priority": "WARNING", "output_fields": FALCO_FIELDS, "level": "warning"}),
    ("Informational -> info", falco(priority="Informational"),
     {**FALCO, "priority": "Informational", "output_fields": FALCO_FIELDS, "level": "info"}),
    ("Debug -> debug", falco(priority="Debug"), {**FALCO, "priority": "Debug", "output_fields": FALCO_FIELDS, "level": "debug"}),
    ("unknown priority: no level", falco(priority="Loud"), {**FALCO, "priority": "Loud", "output_fields": FALCO_FIELDS}),
    ("keys meeting after de-dotting are both kept", falco(output_fields={"a.b": 1, "a_b": 2}),
     {**FALCO, "output_fields": {"a_b": 1, "_a_b": 2}, "level": "info"}),
]


@pytest.mark.parametrize("what, message, fields", FALCO_CASES, ids=[c[0] for c in FALCO_CASES])
def test_falco(what, message, fields):
    record, counts = build(message.encode())
    assert record == merged(message, fields)
    assert counts.falco == 1


def test_falco_event_time_is_optional():
    record, _ = build(falco().encode(), security=SecurityOptions(event_time=True))
    assert record["@timestamp"] == "2026-11-20T10:01:12.482Z"
    record, _ = build(falco().encode())
    assert record["@timestamp"] == BASE["@timestamp"]
