"""Loki streams for records: Promtail's Kubernetes labels, extra labels and structured metadata.

Promtail's stock Kubernetes scrape config (grafana/helm-charts ``charts/promtail/values.yaml``)
gives every stream ``namespace``, ``pod``, ``container``, ``node_name``, ``instance``,
``component``, ``app`` (the first of the pod labels ``app.kubernetes.io/name`` and ``app``, the
controller name without its hash, the pod name) and ``job`` = ``<namespace>/<app>``; its
``cri`` stage adds ``stream`` and its file target ``filename``. The same names and values here
keep dashboards and queries such as ``{container="etcd"} |= "compaction"`` working.

Until pod metadata is known (``source.kubernetes`` without ``labels``/``owner_name``), the
controller name is read from the pod name the way Kubernetes builds it: a ReplicaSet, DaemonSet
or Job pod is ``<controller>-<5 characters of Kubernetes' random alphabet>``.

Label sets are rendered once per file and stream (``stdout``/``stderr``) and cached; per record
only the stream name is looked up, unless labels come from record fields.
"""

import re
from collections.abc import Callable

import orjson

from shipper.sinks.loki_options import LokiOptions

# Promtail's relabel rule for __meta_kubernetes_pod_controller_name (fully anchored, as
# Prometheus anchors relabel regexes): the name without a ReplicaSet's template hash.
_CONTROLLER = re.compile(r"([0-9a-z-.]+?)(-[0-9a-f]{8,10})?")
# k8s.io/apimachinery util/rand: generated name suffixes use this alphabet (no vowels, no 0 1 3).
_GENERATED_SUFFIX = re.compile(r"(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}")
_PLAIN_VALUE = re.compile(r'[^"\\\x00-\x1f\x7f]*\Z')
_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v"}
_MAX_CACHED_FILES = 10000


def go_quote(value: str) -> str:
    """Go's strconv.Quote, which Loki uses to print label values: our rendering must match its
    text so a rejection message can be traced back to the stream it names."""
    if _PLAIN_VALUE.match(value) and value.isprintable():
        return '"' + value + '"'
    out = []
    for ch in value:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


class StreamLabels:
    """One label set: ``text`` as Loki prints it (sorted, ``{a="1", b="2"}``) and ``pairs``."""

    __slots__ = ("text", "pairs")

    def __init__(self, pairs: dict[str, str]) -> None:
        # Loki drops empty values. A file name that is not UTF-8 (kept by Python as surrogate
        # escapes) would fail every protobuf push: such bytes become U+FFFD.
        self.pairs = {name: pairs[name].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                      for name in sorted(pairs) if pairs[name]}
        self.text = "{" + ", ".join(f"{name}={go_quote(value)}" for name, value in self.pairs.items()) + "}"


def _pod_label(pod_labels: dict, key: str) -> str | None:
    """A pod label by its Kubernetes key, or as the metadata cache's de_dot wrote it."""
    return pod_labels.get(key) or pod_labels.get(key.replace(".", "_"))


def promtail_labels(kubernetes: dict, path: str) -> dict[str, str]:
    """The labels Promtail's Kubernetes defaults give a file's streams (without ``stream``)."""
    pod_labels = kubernetes.get("labels") or {}
    pod = kubernetes.get("pod_name") or ""
    namespace = kubernetes.get("namespace_name") or ""
    # The pod's owner from the metadata cache (a ReplicaSet already named by its Deployment).
    controller = kubernetes.get("owner_name")
    if controller is None and "labels" not in kubernetes:
        generated = _GENERATED_SUFFIX.fullmatch(pod)
        controller = generated.group(1) if generated else ""
    if controller:
        match = _CONTROLLER.fullmatch(controller)
        controller = match.group(1) if match else controller
    app = _pod_label(pod_labels, "app.kubernetes.io/name") or pod_labels.get("app") or controller or pod
    return {
        "namespace": namespace,
        "pod": pod,
        "container": kubernetes.get("container_name") or "",
        "app": app,
        "job": f"{namespace}/{app}" if namespace or app else "",
        "node_name": kubernetes.get("host") or "",
        "instance": _pod_label(pod_labels, "app.kubernetes.io/instance") or pod_labels.get("instance") or "",
        "component": _pod_label(pod_labels, "app.kubernetes.io/component") or pod_labels.get("component") or "",
        "filename": path,
    }


def kubernetes_field(kubernetes: dict, source: str) -> str:
    """``kubernetes.labels.<pod label>`` or ``kubernetes.<field>`` of a file, as a string."""
    if source.startswith("kubernetes.labels."):
        value = (kubernetes.get("labels") or {}).get(source[len("kubernetes.labels."):])
    else:
        value = kubernetes.get(source[len("kubernetes."):])
    return as_text(value)


def as_text(value) -> str:
    if value is None:
        return ""
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return orjson.dumps(value).decode()


def field_getter(source: str) -> Callable[[dict], str]:
    """Reads a dotted record field path (``level``, ``http.method``) as text; '' when missing."""
    keys = source.split(".")
    if len(keys) == 1:
        return lambda record: as_text(record.get(source))

    def get(record: dict) -> str:
        value = record
        for key in keys:
            if type(value) is not dict:
                return ""
            value = value.get(key)
        return as_text(value)

    return get


class FileStreams:
    """The streams of one file: per runtime stream name when no label comes from a record."""

    __slots__ = ("kubernetes", "base", "by_stream", "metadata")

    def __init__(self, kubernetes: dict, base: dict[str, str], metadata: tuple[tuple[str, str], ...]) -> None:
        self.kubernetes = kubernetes  # the dict these labels were made from; a new one means relabel
        self.base = base
        self.by_stream: dict = {}  # "stdout"/"stderr"/None, or (stream, field values) -> StreamLabels
        self.metadata = metadata  # structured metadata that comes from the file (kubernetes.*)


class StreamLabeler:
    """Finds each record's stream; counts field labels that hit ``max_label_values``."""

    def __init__(self, options: LokiOptions, on_capped: Callable[[str], None]) -> None:
        self._static = dict(options.static_labels)
        self._file_labels = tuple((n, s) for n, s in options.labels if s.startswith("kubernetes."))
        self._field_labels = tuple((n, field_getter(s)) for n, s in options.labels if not s.startswith("kubernetes."))
        self._file_metadata = tuple((n, s) for n, s in options.structured_metadata if s.startswith("kubernetes."))
        self._field_metadata = tuple(
            (n, field_getter(s)) for n, s in options.structured_metadata if not s.startswith("kubernetes.")
        )
        self.per_record = bool(self._field_labels or options.structured_metadata)
        self._max_values = options.max_label_values
        self._seen_values: dict[str, set] = {name: set() for name, _ in self._field_labels}
        self._on_capped = on_capped
        self._files: dict[str, FileStreams] = {}

    @property
    def stream_count(self) -> int:
        return sum(len(streams.by_stream) for streams in self._files.values())

    def for_file(self, source) -> FileStreams:
        streams = self._files.get(source.key)
        if streams is None or streams.kubernetes is not source.kubernetes:
            if len(self._files) >= _MAX_CACHED_FILES:  # files come and go with pods; start over
                self._files.clear()
            kubernetes = source.kubernetes
            base = promtail_labels(kubernetes, source.path)
            base.update(self._static)
            for name, field in self._file_labels:
                base[name] = kubernetes_field(kubernetes, field)
            metadata = tuple(
                (name, value) for name, field in self._file_metadata
                if (value := kubernetes_field(kubernetes, field))
            )
            streams = self._files[source.key] = FileStreams(kubernetes, base, metadata)
        return streams

    def stream(self, streams: FileStreams, runtime_stream) -> StreamLabels:
        """The stream of a record that has no field labels."""
        labels = streams.by_stream.get(runtime_stream)
        if labels is None:
            labels = streams.by_stream[runtime_stream] = StreamLabels({**streams.base, "stream": runtime_stream or ""})
        return labels

    def record_stream(self, streams: FileStreams, record: dict) -> tuple[StreamLabels, tuple]:
        """Stream and structured metadata of a record when labels or metadata come from its fields."""
        metadata = list(streams.metadata)
        values = []
        for name, get in self._field_labels:
            value = get(record)
            seen = self._seen_values[name]
            if value and value not in seen:
                if len(seen) >= self._max_values:
                    # A label that turned out unbounded: keep the value, as metadata, not a stream.
                    self._on_capped(name)
                    metadata.append((name, value))
                    value = ""
                else:
                    seen.add(value)
            values.append(value)
        for name, get in self._field_metadata:
            value = get(record)
            if value:
                metadata.append((name, value))
        runtime_stream = record.get("stream")
        key = (runtime_stream, *values)
        labels = streams.by_stream.get(key)
        if labels is None:
            pairs = {**streams.base, "stream": runtime_stream or ""}
            pairs.update(zip((name for name, _ in self._field_labels), values))
            labels = streams.by_stream[key] = StreamLabels(pairs)
        return labels, tuple(metadata)
