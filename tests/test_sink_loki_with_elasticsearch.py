"""Loki and Elasticsearch fed by the same input: everything reaches both, and a file position
advances only when both acknowledged, so one sink down slows both and loses nothing."""

import asyncio

import orjson
import pytest

from shipper.cli import build_sinks, samples_glob
from shipper.config import parse_config
from shipper.metrics import Metrics
from shipper.pipeline import Input, Pipeline
from tests.helpers import wait_for
from tests.receivers.elasticsearch import ElasticsearchReceiver
from tests.receivers.loki import Fault, LokiReceiver
from tests.test_sink_loki import AT_ANY_DATE, acknowledged, fixed_clock, numbered, numbered_lines, pod_log, write

FAST_RETRIES = {"retry": {"initial_backoff_secs": 0.01, "max_backoff_secs": 0.05}, "batch": {"flush_secs": 0.02}}


def make(tmp_path, paths: list[str], es_url: str, loki_url: str, settings: str = "", one_shot=False):
    # One index per namespace, as in config/elasticsearch.yaml: apps' field types do not collide.
    es = {"type": "elasticsearch", "endpoints": [es_url], "index": "logstash-{kubernetes.namespace_name}-%Y.%m.%d",
          "dead_letter_path": str(tmp_path / "es.ndjson"), **FAST_RETRIES}
    loki = {"type": "loki", "endpoints": [loki_url], "dead_letter_path": str(tmp_path / "loki.ndjson"),
            **FAST_RETRIES}
    config = parse_config(
        f"positions: {{path: {tmp_path}/positions.json, checkpoint_interval_secs: 0.05}}\n"
        "metrics: {listen: null}\n"
        "node_name: node-1\n"
        f"{settings}"
        f"inputs: {{app: {{paths: {orjson.dumps(paths).decode()}, sinks: [es, loki]}}}}\n"
        f"sinks: {{es: {orjson.dumps(es).decode()}, loki: {orjson.dumps(loki).decode()}}}\n",
        "test.yaml",
    )
    metrics = Metrics()
    sinks = build_sinks(config, metrics)
    inputs = [Input.from_config(inp, [sinks[name] for name in inp.sinks]) for inp in config.inputs]
    return Pipeline(config, inputs, metrics, one_shot=one_shot, persist_positions=not one_shot), metrics


def test_the_sample_logs_reach_both_sinks_completely(tmp_path):
    with ElasticsearchReceiver() as es, LokiReceiver(limits=AT_ANY_DATE) as loki:
        pipeline, metrics = make(tmp_path, [samples_glob()], es.url, loki.url, one_shot=True)
        asyncio.run(pipeline.run())
        assert metrics.value("shipper_records_total") == 115
        assert es.count() == 115
        assert loki.stats.entries_stored == 115
        assert sorted(doc["log"] for index in es.indices() for doc in es.documents(index)) == sorted(
            entry.line for entry in loki.entries())
    assert not (tmp_path / "es.ndjson").exists() and not (tmp_path / "loki.ndjson").exists()


@pytest.mark.slow
def test_loki_down_holds_the_position_and_slows_elasticsearch_without_loss(tmp_path):
    log = pod_log(tmp_path)
    write(log, numbered(20000))  # ~0.8 MB, far over the 64 KiB budget below
    budget, chunk = 65536, 16384
    with ElasticsearchReceiver() as es, LokiReceiver(clock_ns=fixed_clock) as loki:
        loki.inject_fault(Fault.UNAVAILABLE, count=40)
        pipeline, metrics = make(tmp_path, [str(log)], es.url, loki.url,
                                 f"read: {{poll_interval_secs: 0.01, chunk_bytes: {chunk}}}\n"
                                 f"buffer: {{max_in_flight_bytes: {budget}}}\n")

        async def scenario():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: metrics.value("shipper_sink_retries_total", sink="loki") >= 10)
            # Elasticsearch took what was read, but the position waits for Loki, and reading
            # stops at the budget: Elasticsearch gets no further than Loki can follow.
            assert es.count() > 0
            assert metrics.value("shipper_read_bytes_total") <= budget + chunk
            assert all(t.acks.checkpoint == 0 for t in pipeline.files.values())
            await wait_for(lambda: acknowledged(pipeline, log), timeout=60)
            pipeline.stop()
            await task

        asyncio.run(scenario())
        assert es.count() == 20000
        assert numbered_lines(loki) == [f"line {i}" for i in range(20000)]
