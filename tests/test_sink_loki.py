"""The Loki sink against the strict receiver, through the real pipeline: streams as Promtail
makes them, every entry once, every error class handled as PROTOCOLS.md section 2 says."""

import asyncio
import glob
import logging
import os
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from shipper.cli import build_sinks, samples_glob
from shipper.config import ConfigError, load_config, parse_config
from shipper.metrics import Metrics
from shipper.pipeline import Input, Pipeline
from tests.helpers import acknowledged, cri, ship, wait_for
from tests.receivers._tls import TLSFiles
from tests.receivers.loki import Fault, LokiLimits, LokiReceiver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = "2026-11-20T10:00:00.5Z"
NOW_NS = int(datetime(2026, 11, 20, 12, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
# Lines of the sample files keep their 2026-11-20 times: a receiver that takes them at any date.
AT_ANY_DATE = LokiLimits(reject_old_samples=False)


def fixed_clock() -> int:
    return NOW_NS


def sink_yaml(url: str, **options) -> str:
    settings = {"type": "loki", "endpoints": [url],
                "retry": {"initial_backoff_secs": 0.01, "max_backoff_secs": 0.05, "auth_backoff_secs": 0.2},
                "batch": {"flush_secs": 0.02}, **options}
    return orjson.dumps(settings).decode()


def make(tmp_path, url: str, read: str = "", buffer: str = "", paths: list[str] | None = None, one_shot=False,
         input_options: str = "", grace_secs: float = 5, **options) -> tuple[Pipeline, Metrics]:
    paths = paths or [str(tmp_path / "*.log")]
    options.setdefault("dead_letter_path", str(tmp_path / "dead-letter.ndjson"))
    text = (
        f"positions: {{path: {tmp_path}/positions.json, checkpoint_interval_secs: 0.05}}\n"
        f"read: {{poll_interval_secs: 0.01{read}}}\n"
        f"buffer: {{{buffer}}}\n"
        "metrics: {listen: null}\n"
        "node_name: node-1\n"
        f"shutdown: {{grace_secs: {grace_secs}}}\n"
        f"inputs: {{app: {{paths: {orjson.dumps(paths).decode()}, sinks: [loki]{input_options}}}}}\n"
        f"sinks: {{loki: {sink_yaml(url, **options)}}}\n"
    )
    config = parse_config(text, "test.yaml")
    metrics = Metrics()
    sinks = build_sinks(config, metrics)
    inputs = [Input.from_config(inp, [sinks[name] for name in inp.sinks]) for inp in config.inputs]
    return Pipeline(config, inputs, metrics, one_shot=one_shot, persist_positions=not one_shot), metrics


def pod_log(tmp_path, pod="web-7d9f8b6c5-x2x4z", namespace="shop", container="web") -> str:
    return str(tmp_path / f"{pod}_{namespace}_{container}-{'a' * 64}.log")


def write(path, lines: list[bytes], mode="ab") -> None:
    with open(path, mode) as handle:
        handle.write(b"".join(lines))


def numbered(count: int, start: int = 0, time: str = T, stream: str = "stdout") -> list[bytes]:
    return [cri(time, stream, "F", f"line {i}") for i in range(start, start + count)]


def lines(loki: LokiReceiver, tenant: str = "fake", **selector) -> list[str]:
    return [entry.line for entry in loki.entries(tenant, selector)]


def numbered_lines(loki: LokiReceiver) -> list[str]:
    """``line N`` entries by N: pushes in flight together may land in any order, and lines with
    one timestamp are kept in arrival order (Loki accepts them so, unordered writes being on)."""
    return sorted(lines(loki), key=lambda line: int(line.split()[1]))


def dead_letters(tmp_path) -> list[dict]:
    path = tmp_path / "dead-letter.ndjson"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def sample(name_prefix: str) -> str:
    (path,) = glob.glob(samples_glob().replace("*.log", f"{name_prefix}*.log"))
    return path


def cri_messages(path: str) -> list[str]:
    with open(path, "rb") as handle:
        return [line.rstrip(b"\n").split(b" ", 3)[3].decode() for line in handle]


def test_the_sample_logs_answer_the_promtail_queries_with_the_example_configuration(tmp_path):
    environ = {"LOKI_URL": "", "SHIPPER_LOG_GLOB": samples_glob(), "NODE_NAME": "node-1",
               "SHIPPER_POSITIONS": str(tmp_path / "positions.json"),
               "SHIPPER_DEAD_LETTER": str(tmp_path / "dead-letter.ndjson")}
    with LokiReceiver(limits=AT_ANY_DATE) as loki:
        environ["LOKI_URL"] = loki.url
        config = load_config(os.path.join(REPO, "config", "loki.yaml"), environ)
        metrics = Metrics()
        sinks = build_sinks(config, metrics)
        inputs = [Input.from_config(inp, [sinks[name] for name in inp.sinks]) for inp in config.inputs]
        asyncio.run(Pipeline(config, inputs, metrics, one_shot=True, persist_positions=False).run())

        assert loki.stats.entries_stored == metrics.value("shipper_records_total") == 115
        assert not (tmp_path / "dead-letter.ndjson").exists()
        etcd = cri_messages(sample("etcd-"))
        compaction = loki.query("fake", '{container="etcd"} |= "compaction"')
        assert [line for _, _, line in compaction] == [m for m in etcd if "compaction" in m]
        assert len(compaction) == 3
        falco = loki.query("fake", '{namespace="falco"}')
        # Both streams of the pod: the startup text (stderr) and the JSON events (stdout).
        assert sorted(line for _, _, line in falco) == sorted(cri_messages(sample("falco-")))
        events = loki.query("fake", '{namespace="falco", stream="stdout"} |= "output_fields"')
        assert len(events) == 5 and all(orjson.loads(line)["rule"] for _, _, line in events)
        labels, _, _ = compaction[0]
        assert labels == {
            "namespace": "kube-system", "pod": "etcd-control-plane-1", "container": "etcd",
            "app": "etcd-control-plane-1", "job": "kube-system/etcd-control-plane-1", "node_name": "node-1",
            "stream": "stderr", "filename": sample("etcd-"), "cluster": "local",
            "service_name": "etcd-control-plane-1",  # added by Loki
        }
        assert metrics.value("shipper_loki_streams", sink="loki") == len(loki.streams())


def test_entries_carry_the_runtime_timestamp_to_the_nanosecond(tmp_path):
    log = pod_log(tmp_path)
    write(log, [cri("2026-11-20T10:00:00.123456789Z", "stdout", "F", "containerd"),
                cri("2026-11-20T10:00:01Z", "stdout", "F", "whole second"),
                cri("2026-11-20T11:00:02.000000007+01:00", "stdout", "F", "cri-o with an offset")])
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        pipeline, _ = make(tmp_path, loki.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        stored = [(entry.ts_ns, entry.line) for entry in loki.entries()]
    ten = NOW_NS - 2 * 3600 * 10**9  # 2026-11-20T10:00:00Z
    assert stored == [(ten + 123456789, "containerd"), (ten + 10**9, "whole second"),
                      (ten + 2 * 10**9 + 7, "cri-o with an offset")]


def test_streams_have_promtails_labels_per_runtime_stream(tmp_path):
    log = pod_log(tmp_path)
    write(log, numbered(2) + numbered(1, 2, stream="stderr"))
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        pipeline, _ = make(tmp_path, loki.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        streams = sorted(loki.streams(), key=lambda labels: labels["stream"])
    common = {"namespace": "shop", "pod": "web-7d9f8b6c5-x2x4z", "container": "web", "app": "web",
              "job": "shop/web", "node_name": "node-1", "filename": log, "service_name": "web"}
    assert streams == [{**common, "stream": "stderr"}, {**common, "stream": "stdout"}]


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_both_encodings_store_the_same_entries(tmp_path, encoding):
    log = pod_log(tmp_path)
    tricky = ['quote " backslash \\ tab \t', "unicode Zoë ✓ 😀", ""]
    write(log, [cri(T, "stdout", "F", message) for message in tricky])
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        pipeline, _ = make(tmp_path, loki.url, encoding=encoding)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert lines(loki) == tricky


def test_json_encoding_with_gzip(tmp_path):
    log = pod_log(tmp_path)
    write(log, numbered(50))
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        pipeline, metrics = make(tmp_path, loki.url, encoding="json", compression="gzip")
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert numbered_lines(loki) == [f"line {i}" for i in range(50)]
        assert metrics.value("shipper_sink_sent_bytes_total", sink="loki") > 50 * len('["1795168800500000000",""]')


def test_line_format_json_ships_the_enriched_record(tmp_path):
    log = pod_log(tmp_path)
    write(log, [cri(T, "stdout", "F", '{"level":"warn","msg":"disk"}')])
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        pipeline, _ = make(tmp_path, loki.url, line_format="json")
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        (line,) = lines(loki)
    record = orjson.loads(line)
    assert record["level"] == "warn" and record["log"] == '{"level":"warn","msg":"disk"}'
    assert record["kubernetes"]["pod_name"] == "web-7d9f8b6c5-x2x4z"


def test_entries_are_time_ordered_within_a_stream_in_each_push(tmp_path):
    """Runtime times can step back (a clock adjustment); with Loki's ordered writes an entry
    older than one already in the push is refused, so each push sorts its streams."""
    log = pod_log(tmp_path)
    times = ["10:00:03", "10:00:01", "10:00:02", "10:00:00", "10:00:04"]
    write(log, [cri(f"2026-11-20T{time}.5Z", "stdout", "F", f"at {time}") for time in times])
    with LokiReceiver(clock_ns=fixed_clock, limits=LokiLimits(unordered_writes=False)) as loki:
        pipeline, _ = make(tmp_path, loki.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert lines(loki) == [f"at {time}" for time in sorted(times)]
        assert loki.stats.responses == {204: 1}
    assert dead_letters(tmp_path) == []


def test_pushes_keep_to_max_records(tmp_path):
    a, b = pod_log(tmp_path, pod="a-7d9f8b6c5-x2x4z"), pod_log(tmp_path, pod="b-7d9f8b6c5-x2x4z")
    write(a, numbered(10))
    write(b, numbered(10, 10))
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        pipeline, _ = make(tmp_path, loki.url, one_shot=True, batch={"max_records": 7, "flush_secs": 30})
        asyncio.run(pipeline.run())
        assert numbered_lines(loki) == [f"line {i}" for i in range(20)]
        assert loki.stats.entries_received == 20  # in pushes of 7, 7 and 6
        assert loki.stats.push_requests == 3


@pytest.mark.slow
def test_a_429_storm_pauses_reading_and_loses_nothing(tmp_path):
    log = pod_log(tmp_path)
    write(log, numbered(20000))  # ~0.8 MB, far over the 64 KiB budget below
    budget, chunk = 65536, 16384
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        loki.inject_fault(Fault.RATE_LIMITED, count=30)
        pipeline, metrics = make(tmp_path, loki.url, read=f", chunk_bytes: {chunk}",
                                 buffer=f"max_in_flight_bytes: {budget}")

        async def scenario():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: metrics.value("shipper_sink_retries_total", sink="loki") >= 10)
            # While refused, no more than the budget (plus one chunk) is read and held.
            assert metrics.value("shipper_read_bytes_total") <= budget + chunk
            assert all(t.acks.checkpoint == 0 for t in pipeline.files.values())
            await wait_for(lambda: acknowledged(pipeline, log), timeout=60)
            pipeline.stop()
            await task

        asyncio.run(scenario())
        assert numbered_lines(loki) == [f"line {i}" for i in range(20000)]
        assert loki.stats.responses[429] == 30
        assert metrics.value("shipper_sink_retries_total", sink="loki", reason="http_429") == 30
        assert metrics.value("shipper_sink_request_seconds_count", sink="loki", outcome="http_429") == 30
        assert metrics.value("shipper_sink_request_seconds_count", sink="loki", outcome="ok") >= 1
        assert metrics.value("shipper_sink_records_total", sink="loki") == 20000


@pytest.mark.parametrize("fault", [Fault.INTERNAL_ERROR, Fault.UNAVAILABLE, Fault.DROP_CONNECTION,
                                   Fault.DROP_AFTER_WRITE])
def test_server_and_connection_failures_are_retried_and_replays_are_deduplicated(tmp_path, fault):
    log = pod_log(tmp_path)
    write(log, numbered(100))
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        loki.inject_fault(fault, count=3)
        pipeline, metrics = make(tmp_path, loki.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert numbered_lines(loki) == [f"line {i}" for i in range(100)]
        assert metrics.value("shipper_sink_retries_total", sink="loki") == 3
        assert metrics.value("shipper_sink_in_flight_bytes", sink="loki") == 0
        if fault is Fault.DROP_AFTER_WRITE:  # written each time; the resends were identical
            assert loki.stats.entries_deduplicated == 3 * 100
    assert dead_letters(tmp_path) == []


def test_a_push_slower_than_the_timeout_is_sent_again(tmp_path):
    log = pod_log(tmp_path)
    write(log, numbered(10))
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        loki.inject_fault(Fault.SLOW_RESPONSE, delay_s=1.0)
        pipeline, metrics = make(tmp_path, loki.url, request_timeout_secs=0.2)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert numbered_lines(loki) == [f"line {i}" for i in range(10)]
        assert metrics.value("shipper_sink_retries_total", sink="loki", reason="timeout") == 1


def test_a_413_splits_the_push(tmp_path):
    log = pod_log(tmp_path)
    write(log, numbered(400))
    with LokiReceiver(clock_ns=fixed_clock, limits=LokiLimits(max_recv_msg_size_bytes=4000)) as loki:
        pipeline, metrics = make(tmp_path, loki.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert numbered_lines(loki) == [f"line {i}" for i in range(400)]
        assert loki.stats.responses[413] >= 1
        assert metrics.value("shipper_sink_in_flight_bytes", sink="loki") == 0
        assert metrics.value("shipper_sink_retries_total", sink="loki", reason="http_413_split") >= 1


def test_the_tenant_header_selects_the_tenant(tmp_path):
    log = pod_log(tmp_path)
    write(log, numbered(3))
    with LokiReceiver(clock_ns=fixed_clock, auth_enabled=True) as loki:
        pipeline, _ = make(tmp_path, loki.url, tenant="team-a")
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert lines(loki, "team-a") == ["line 0", "line 1", "line 2"]


def test_a_missing_tenant_is_reported_loudly_retried_slowly_and_acks_nothing(tmp_path, caplog):
    log = pod_log(tmp_path)
    write(log, numbered(3))
    with LokiReceiver(clock_ns=fixed_clock, auth_enabled=True) as loki:
        pipeline, metrics = make(tmp_path, loki.url, grace_secs=0.1)

        async def scenario():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: loki.stats.responses[401] >= 2)
            assert all(t.acks.checkpoint == 0 for t in pipeline.files.values())
            pipeline.stop()
            await task

        with caplog.at_level(logging.ERROR, logger="shipper.sinks.loki"):
            asyncio.run(scenario())
        assert "refused the credentials (HTTP 401: no org id)" in caplog.text
        assert metrics.value("shipper_sink_retries_total", sink="loki", reason="http_401") >= 2
    assert dead_letters(tmp_path) == []


def test_a_url_that_is_not_lokis_push_api_holds_the_entries_and_says_so(tmp_path, caplog):
    log = pod_log(tmp_path)
    write(log, numbered(3))
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        pipeline, metrics = make(tmp_path, loki.url + "/prefix", grace_secs=0.1)

        async def scenario():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: metrics.value("shipper_sink_retries_total", sink="loki", reason="http_404") >= 2)
            assert all(t.acks.checkpoint == 0 for t in pipeline.files.values())
            pipeline.stop()
            await task

        with caplog.at_level(logging.ERROR, logger="shipper.sinks.loki"):
            asyncio.run(scenario())
        assert f"{loki.url}/prefix/loki/api/v1/push has no push API at this URL (HTTP 404" in caplog.text
    assert dead_letters(tmp_path) == []


def test_the_cardinality_guard_refuses_unbounded_labels_unless_forced(tmp_path):
    with pytest.raises(ConfigError, match=r"sinks\.loki\.labels\.trace: 'trace_id' is unbounded"):
        make(tmp_path, "http://loki:3100", labels={"trace": "trace_id"})
    with pytest.raises(ConfigError, match=r"sinks\.loki\.labels\.uid: 'kubernetes\.pod_id' is unbounded"):
        make(tmp_path, "http://loki:3100", labels={"uid": "kubernetes.pod_id"})
    make(tmp_path, "http://loki:3100", labels={"trace": "trace_id"}, force_labels=["trace"])


def test_field_labels_beyond_max_values_become_structured_metadata(tmp_path):
    log = pod_log(tmp_path)
    levels = ["info", "warn", "info", "error", "debug", "warn"]
    write(log, [cri(T, "stdout", "F", orjson.dumps({"level": level, "n": i, "trace_id": f"t{i}"}).decode())
                for i, level in enumerate(levels)])
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        pipeline, metrics = make(tmp_path, loki.url, labels={"level": "level"}, max_label_values=2,
                                 structured_metadata={"trace_id": "trace_id"})
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        entries = loki.entries()
        assert sorted({stream.get("level", "") for stream in loki.streams()}) == ["", "info", "warn"]
        by_n = {orjson.loads(entry.line)["n"]: entry for entry in entries}
        assert by_n[3].labels.get("level") is None
        assert by_n[3].structured_metadata == {"level": "error", "trace_id": "t3"}
        assert by_n[1].labels["level"] == "warn" and by_n[1].structured_metadata == {"trace_id": "t1"}
        assert metrics.value("shipper_loki_label_values_capped_total", sink="loki", label="level") == 2


def test_reading_waits_for_loki_and_the_checkpoint_follows_its_answers(tmp_path):
    log = pod_log(tmp_path)
    write(log, numbered(10))
    with LokiReceiver(clock_ns=fixed_clock) as loki:
        loki.inject_fault(Fault.UNAVAILABLE, count=1000)
        pipeline, metrics = make(tmp_path, loki.url, grace_secs=0.1)

        async def scenario():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: metrics.value("shipper_sink_retries_total", sink="loki") >= 5)
            assert all(t.acks.checkpoint == 0 for t in pipeline.files.values())
            assert metrics.value("shipper_sink_in_flight_bytes", sink="loki") > 0
            pipeline.stop()
            await task

        asyncio.run(scenario())
        assert loki.entries() == []


class _HeaderRecorder(BaseHTTPRequestHandler):
    """Answers every push 204 and keeps its headers: what the sink sends, nothing else."""

    seen: list = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        _HeaderRecorder.seen.append(dict(self.headers))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args) -> None:
        pass


@pytest.mark.parametrize("auth, authorization", [
    ({"user": "promtail", "password": "s3cret"}, "Basic cHJvbXRhaWw6czNjcmV0"),
    ({"bearer_token": "t0ken"}, "Bearer t0ken"),
])
def test_credentials_tenant_and_content_type_are_sent(tmp_path, auth, authorization):
    log = pod_log(tmp_path)
    write(log, numbered(1))
    _HeaderRecorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeaderRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pipeline, _ = make(tmp_path, f"http://127.0.0.1:{server.server_address[1]}", one_shot=True, auth=auth,
                           tenant="team-a")
        asyncio.run(pipeline.run())
    finally:
        server.shutdown()
        server.server_close()
    (headers,) = _HeaderRecorder.seen
    assert headers["Authorization"] == authorization
    assert headers["X-Scope-OrgID"] == "team-a"
    assert headers["Content-Type"] == "application/x-protobuf" and "Content-Encoding" not in headers


def test_tls_is_verified_by_default_and_takes_a_ca_and_a_client_certificate(tmp_path):
    log = pod_log(tmp_path)
    write(log, numbered(1))
    tls = TLSFiles("loki-tls-", client_cert=True)
    _HeaderRecorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeaderRecorder)
    server.socket = tls.server_context(require_client_cert=True).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        # The server's certificate is from a CA the system does not trust: nothing is delivered.
        pipeline, metrics = make(tmp_path, url, grace_secs=0.1)

        async def refused():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: metrics.value("shipper_sink_retries_total", sink="loki", reason="connection") >= 2)
            pipeline.stop()
            await task

        asyncio.run(refused())
        assert _HeaderRecorder.seen == []
        pipeline, _ = make(tmp_path, url, one_shot=True, tls={
            "ca_file": str(tls.ca_file), "cert_file": str(tls.client_cert_file), "key_file": str(tls.client_key_file)})
        asyncio.run(pipeline.run())
        assert len(_HeaderRecorder.seen) == 1
    finally:
        server.shutdown()
        server.server_close()
        tls.cleanup()
