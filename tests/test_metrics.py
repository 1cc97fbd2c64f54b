"""The Prometheus endpoint and the health probes, over real HTTP."""

import asyncio
import os

import httpx

from shipper.metrics import HealthState, Metrics, serve_metrics
from shipper.pipeline import Input, Pipeline
from tests.helpers import CollectingSink, cri, make_config

T = "2026-11-20T10:00:00.5Z"


def test_metrics_and_probes_over_http(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(cri(T, "stdout", "F", "ok") + b"garbage\n" + cri(T, "stdout", "F", b"\xff"))
    metrics, health = Metrics(), HealthState()
    server = serve_metrics(metrics, health, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert httpx.get(f"{base}/readyz").status_code == 503  # not ready before the pipeline started
        assert httpx.get(f"{base}/healthz").status_code == 200
        config = make_config(tmp_path, [str(log)])
        pipeline = Pipeline(config, [Input.from_config(config.inputs[0], [CollectingSink()])], metrics,
                            one_shot=True, persist_positions=False, health=health)
        asyncio.run(pipeline.run())
        assert httpx.get(f"{base}/readyz").status_code == 200
        body = httpx.get(f"{base}/metrics").text
        assert 'shipper_lines_total{input="test"} 3.0' in body
        assert 'shipper_records_flagged_total{input="test",reason="malformed"} 1.0' in body
        assert 'shipper_records_flagged_total{input="test",reason="invalid_utf8"} 1.0' in body
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.shutdown()


def test_liveness_fails_when_the_loop_stops_beating():
    health = HealthState(stall_secs=0.0)
    assert not health.alive()


def test_every_metric_is_documented_in_the_readme():
    """Operators alert on what the README lists: a metric it does not name cannot be found."""
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    names = {metric.name for metric in Metrics().registry.collect()}
    assert len(names) > 20
    undocumented = {name for name in names if name not in readme}
    assert undocumented == set(), f"metrics the README does not name: {sorted(undocumented)}"
