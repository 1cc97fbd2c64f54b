"""Prometheus metrics and the HTTP endpoints ``/metrics``, ``/healthz`` and ``/readyz``.

Counters are bumped once per chunk, never per line. Every instance has its own registry, so
tests and the dry-run summary read exactly what one pipeline counted.
"""

import threading
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.lines = Counter("shipper_lines", "Physical lines read", ["input"], registry=registry)
        self.read_bytes = Counter("shipper_read_bytes", "Bytes read from log files", ["input"], registry=registry)
        self.records = Counter("shipper_records", "Records built from lines", ["input"], registry=registry)
        self.flagged = Counter(
            "shipper_records_flagged",
            "Records shipped with a repair or problem flag, by reason",
            ["input", "reason"],
            registry=registry,
        )
        self.json_merged = Counter(
            "shipper_json_merged", "Messages parsed as JSON objects and merged", ["input"], registry=registry
        )
        self.json_key_conflicts = Counter(
            "shipper_json_key_conflicts",
            "App JSON keys renamed because they collided with the shipper's own keys",
            ["input"],
            registry=registry,
        )
        self.security_events = Counter(
            "shipper_security_events",
            "KubeArmor and Falco events recognised and given stable field types",
            ["input", "kind"],
            registry=registry,
        )
        self.dropped = Counter(
            "shipper_records_dropped", "Records dropped by a keep/drop filter", ["input", "filter"], registry=registry
        )
        self.sink_records = Counter(
            "shipper_sink_records", "Records delivered and acknowledged by a sink", ["sink"], registry=registry
        )
        self.sink_replayed = Counter(
            "shipper_sink_records_replayed",
            "Records a sink found already delivered (a replay after a restart): counted as delivered",
            ["sink"],
            registry=registry,
        )
        self.sink_rejected = Counter(
            "shipper_sink_records_dead_lettered",
            "Records the destination refused for good, written to the dead-letter file, by reason",
            ["sink", "reason"],
            registry=registry,
        )
        self.sink_retries = Counter(
            "shipper_sink_retries",
            "Requests or records sent again after a retryable failure, by reason",
            ["sink", "reason"],
            registry=registry,
        )
        self.sink_requests = Histogram(
            "shipper_sink_request_seconds",
            "Time from sending a request to its answer, by outcome",
            ["sink", "outcome"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.sink_sent_bytes = Counter(
            "shipper_sink_sent_bytes", "Request body bytes sent, before compression", ["sink"], registry=registry
        )
        self.sink_in_flight_bytes = Gauge(
            "shipper_sink_in_flight_bytes", "Encoded bytes a sink holds that are not yet delivered", ["sink"],
            registry=registry,
        )
        self.loki_streams = Gauge(
            "shipper_loki_streams", "Loki streams (label sets) a Loki sink has made for the files it read", ["sink"],
            registry=registry,
        )
        self.loki_label_values_capped = Counter(
            "shipper_loki_label_values_capped",
            "Record-field label values beyond max_label_values, shipped as structured metadata instead of a stream",
            ["sink", "label"],
            registry=registry,
        )
        self.files = Gauge("shipper_files_open", "Log files being followed", registry=registry)
        self.skipped_files = Counter(
            "shipper_files_skipped", "Files matched but not read, by reason", ["reason"], registry=registry
        )
        self.truncations = Counter(
            "shipper_files_truncated", "Files that shrank below their read offset (copytruncate)", registry=registry
        )
        self.file_lag = Gauge(
            "shipper_file_lag_bytes",
            "Bytes of a file not yet acknowledged by every sink (size minus checkpoint)",
            ["path"],
            registry=registry,
        )
        self.in_flight_bytes = Gauge(
            "shipper_in_flight_bytes", "Bytes read and not yet acknowledged by every sink", registry=registry
        )
        self.checkpoints = Counter("shipper_position_saves", "Times the positions file was written", registry=registry)
        # Pod metadata (shipper.kube): bumped by the watch thread, per event, not per line.
        self.kube_pods = Gauge("shipper_kube_cache_pods", "Pods in the metadata cache (deleted ones within their grace)",
                               registry=registry)
        self.kube_watch_restarts = Counter(
            "shipper_kube_watch_restarts", "Watches that ended and were started again, by reason (ended, expired, error)",
            ["resource", "reason"], registry=registry,
        )
        self.kube_relists = Counter("shipper_kube_relists", "Full lists of a watched resource", ["resource"],
                                    registry=registry)
        self.kube_events_skipped = Counter(
            "shipper_kube_events_skipped", "Watch events that could not be read, skipped", ["resource"], registry=registry
        )
        self.kube_records_without_metadata = Counter(
            "shipper_kube_records_without_metadata",
            "Records shipped with only what the file name tells, their pod not (yet) in the cache", ["input"],
            registry=registry,
        )
        self.kube_records_excluded = Counter(
            "shipper_kube_records_excluded", "Records not shipped because their pod is annotated shipper.io/exclude",
            ["input"], registry=registry,
        )

    def value(self, name: str, **labels: str) -> float:
        """A counter's total over all label values matching ``labels`` (0 when never counted)."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """A counter's totals per value of ``label``."""
        totals: dict[str, float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and sample.value:
                    key = sample.labels[label]
                    totals[key] = totals.get(key, 0.0) + sample.value
        return totals


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # scrapes are not news
        pass


class HealthState:
    """Liveness: the event loop beats; readiness: the pipeline said it is ready."""

    def __init__(self, stall_secs: float = 30.0) -> None:
        self.ready = False
        self._stall_secs = stall_secs
        self._last_beat = time.monotonic()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._last_beat < self._stall_secs


def serve_metrics(metrics: Metrics, health: HealthState, host: str, port: int) -> WSGIServer:
    """Serve the endpoints from a daemon thread, so a busy event loop still answers scrapes."""
    prometheus_app = make_wsgi_app(metrics.registry)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return prometheus_app(environ, start_response)
        if path in ("/healthz", "/readyz"):
            ok = health.alive() if path == "/healthz" else health.ready and health.alive()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"not ready\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    server = make_server(host, port, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
