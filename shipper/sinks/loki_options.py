"""The ``type: loki`` sink's options, and the guard against labels that would explode streams.

Every Loki stream is one label set; a label whose values are unbounded (a pod uid, a trace id,
a timestamp) makes a new stream per value, which Loki pays for in index size and memory and
eventually refuses (``max_streams_per_user``). Such sources are refused as labels at load time
unless named in ``force_labels``; ``structured_metadata`` (Loki 3) carries them per entry
without creating streams.
"""

import re
from dataclasses import dataclass, replace

from shipper.config_reader import ConfigReader
from shipper.sinks.options import DELIVERY_KEYS, BatchOptions, DeliveryOptions, read_delivery

ENCODINGS = ("protobuf", "json")
LINE_FORMATS = ("message", "json")
PUSH_PATH = "/loki/api/v1/push"
# Promtail's batch: 1 MiB or 1 s. Loki rate-limits per push (a push beyond the tenant's burst,
# 6 MB by default, is refused with 429 for ever), so pushes stay far smaller than bulk requests.
PROMTAIL_BATCH = BatchOptions(max_records=10000, max_bytes=1 << 20, flush_secs=1.0)

# The labels Promtail's stock Kubernetes scrape config (Helm chart) and its cri stage and file
# target give every stream; extra labels may not reuse these names.
PROMTAIL_LABELS = ("namespace", "pod", "container", "app", "job", "node_name", "instance", "component",
                   "stream", "filename")
# Loki's default max_label_names_per_series; a stream with more is refused whole.
MAX_LABEL_NAMES = 15
# Prometheus' label name grammar (Loki parses label sets with it; JSON keys are written unquoted).
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

_TENANT_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!-_.*'()")
# Sources whose values are per pod incarnation, per request or per line: unbounded.
_UNBOUNDED_SOURCES = frozenset({
    "kubernetes.pod_id", "kubernetes.container_id", "kubernetes.docker_id", "kubernetes.pod_ip",
    "kubernetes.labels.pod-template-hash", "kubernetes.labels.controller-revision-hash",
    "kubernetes.labels.statefulset.kubernetes.io/pod-name", "kubernetes.labels.apps.kubernetes.io/pod-index",
    "@timestamp", "@timestamp_nanos", "log",
})
_UNBOUNDED_NAME = re.compile(
    r"(?:^|[._-])(?:uid|uuid|id|ids|trace_?id|span_?id|request_?id|req_?id|correlation_?id|session_?id|"
    r"user_?id|ip|client_?ip|remote_?addr|addr|ts|time|timestamp|msg|message|url|uri|path|query|pid|"
    r"duration\w*|latency\w*|took|stacktrace|error)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class LokiOptions:
    delivery: DeliveryOptions
    tenant: str = ""  # X-Scope-OrgID; empty sends no header (a single-tenant Loki)
    encoding: str = "protobuf"  # protobuf + snappy (Promtail's), or json
    line_format: str = "message"  # the original message, or the whole record as JSON
    labels: tuple[tuple[str, str], ...] = ()  # extra (label name, source) pairs
    static_labels: tuple[tuple[str, str], ...] = ()
    structured_metadata: tuple[tuple[str, str], ...] = ()  # (name, source) pairs
    max_label_values: int = 100  # distinct values a record-field label may take; later ones go to metadata


def unbounded_source(source: str) -> bool:
    """Whether ``source`` (a record field path or ``kubernetes.…``) takes a new value per pod,
    request or line, by name: the cardinality guard's rule."""
    return source in _UNBOUNDED_SOURCES or bool(_UNBOUNDED_NAME.search(source))


def read_loki_options(reader: ConfigReader, spec: dict, path: str, default_dead_letter_path: str) -> LokiOptions:
    spec = reader.mapping(spec, path, (
        "type", "tenant", "encoding", "line_format", "labels", "static_labels", "structured_metadata",
        "force_labels", "max_label_values", *DELIVERY_KEYS,
    ))
    delivery = read_delivery(reader, spec, path, default_dead_letter_path)
    given = spec.get("batch", {})
    delivery = replace(delivery, batch=BatchOptions(**{
        key: getattr(delivery.batch if key in given else PROMTAIL_BATCH, key)
        for key in BatchOptions.__dataclass_fields__
    }))
    if delivery.auth.api_key:
        raise reader.fail(f"{path}.auth.api_key", "is Elasticsearch's; Loki takes user/password or bearer_token")
    options = {"delivery": delivery}
    if "tenant" in spec:
        tenant = options["tenant"] = reader.string(spec["tenant"], f"{path}.tenant")
        # Loki refuses other tenant ids with a 400 for every push (dskit tenant validation).
        bad = sorted(set(tenant) - _TENANT_CHARACTERS)
        if bad or len(tenant) > 150 or tenant in (".", ".."):
            raise reader.fail(f"{path}.tenant", f"'{tenant}' is not a Loki tenant id (at most 150 of "
                                                "a-z A-Z 0-9 ! - _ . * ' ( ), not '.' or '..')")
    options["encoding"] = reader.string(spec.get("encoding", "protobuf"), f"{path}.encoding", ENCODINGS)
    if options["encoding"] == "protobuf" and delivery.compression != "none":
        raise reader.fail(f"{path}.compression", "protobuf pushes are always snappy-compressed; "
                                                 "gzip applies to encoding: json only")
    options["line_format"] = reader.string(spec.get("line_format", "message"), f"{path}.line_format", LINE_FORMATS)
    force = set(reader.strings(spec.get("force_labels", []), f"{path}.force_labels"))
    labels = _read_sources(reader, spec.get("labels", {}), f"{path}.labels")
    for name, source in labels:
        if name in PROMTAIL_LABELS:
            raise reader.fail(f"{path}.labels.{name}", "is one of the Promtail labels every stream already has")
        if name not in force and (unbounded_source(source) or unbounded_source(name)):
            raise reader.fail(
                f"{path}.labels.{name}",
                f"'{source}' is unbounded (each value makes a new stream); ship it under structured_metadata, "
                "or list it in force_labels if its values are few",
            )
    unknown = force - {name for name, _ in labels}
    if unknown:
        raise reader.fail(f"{path}.force_labels", f"names no label under labels: {', '.join(sorted(unknown))}")
    static_spec = spec.get("static_labels", {})
    static = tuple(
        (name, reader.string(value, f"{path}.static_labels.{name}"))
        for name, value in _read_names(reader, static_spec, f"{path}.static_labels")
    )
    for name, value in static:
        if name in PROMTAIL_LABELS or name in dict(labels):
            raise reader.fail(f"{path}.static_labels.{name}", "is already a label")
        if not value:
            raise reader.fail(f"{path}.static_labels.{name}", "must not be empty (Loki drops empty labels)")
    count = len(PROMTAIL_LABELS) + len(labels) + len(static)
    if count > MAX_LABEL_NAMES:
        raise reader.fail(f"{path}.labels", f"streams would have up to {count} labels; Loki refuses more than "
                                            f"{MAX_LABEL_NAMES} (max_label_names_per_series) by default")
    options["labels"] = labels
    options["static_labels"] = static
    options["structured_metadata"] = _read_sources(reader, spec.get("structured_metadata", {}),
                                                   f"{path}.structured_metadata")
    if "max_label_values" in spec:
        options["max_label_values"] = reader.number(spec["max_label_values"], f"{path}.max_label_values", int, 1)
    return LokiOptions(**options)


def _read_names(reader: ConfigReader, value, path: str) -> list[tuple[str, object]]:
    if not isinstance(value, dict):
        raise reader.fail(path, "must be a mapping of label names")
    pairs = []
    for name, item in value.items():
        if not isinstance(name, str) or not LABEL_NAME.match(name) or name.startswith("__"):
            raise reader.fail(f"{path}.{name}", "is not a Loki label name ([a-zA-Z_][a-zA-Z0-9_]*, "
                                                "not starting with __)")
        pairs.append((name, item))
    return pairs


def _read_sources(reader: ConfigReader, value, path: str) -> tuple[tuple[str, str], ...]:
    """``{name: source}``: a record field path (``level``, ``http.method``) or a file's Kubernetes
    field (``kubernetes.labels.team``, ``kubernetes.pod_id``)."""
    pairs = []
    for name, source in _read_names(reader, value, path):
        source = reader.string(source, f"{path}.{name}")
        if not source or source.startswith(".") or source.endswith(".") or ".." in source:
            raise reader.fail(f"{path}.{name}", f"'{source}' is not a field path (e.g. level, kubernetes.labels.team)")
        if source == "kubernetes" or source == "kubernetes.labels":
            raise reader.fail(f"{path}.{name}", f"'{source}' is an object; name one field of it")
        pairs.append((name, source))
    return tuple(pairs)
