"""The node's pod metadata cache: what a record gets under ``kubernetes`` from the API.

Fed by the list+watch thread (``shipper.kube.watch``) or, for a dry run, by a saved
``kubectl get pods -o json`` list. The data path only reads it: ``lookup`` is a dict get, and
``version`` tells the pipeline when anything it may have looked up changed, so files refresh
their metadata once per change instead of once per record.

Thread safety: one writer (the watch thread) and readers on the event loop. Writers replace
whole ``_Pod`` entries in the dict (an atomic store under the GIL) and bump ``version`` last;
readers never iterate the dict. A deleted pod stays for ``deleted_pod_grace_secs`` because its
logs outlive it; entries past their grace are removed whenever the cache is written to (every
event and bookmark), so memory follows the pods on the node, not the pods ever seen.

Pods are parsed lean, straight from the JSON as dicts: only the fields records carry are kept
(``benchmarks/bench_kube.py`` measures what 110 pods cost).
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import NamedTuple

log = logging.getLogger("shipper.kube")

# Per-pod controls, as Fluent Bit's ``fluentbit.io/exclude`` and ``fluentbit.io/parser``: the
# bare name applies to every container of the pod, ``<name>-<container>`` to one container.
EXCLUDE_ANNOTATION = "shipper.io/exclude"
PARSER_ANNOTATION = "shipper.io/parser"
# What a parser annotation may name (shipper.kube.parsers builds them).
PARSERS = ("json", "text", "kubearmor", "falco")
# The label Deployments put on the pods of their ReplicaSets (and in the ReplicaSet's name).
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})


@dataclass(frozen=True)
class MetadataOptions:
    """What the cache keeps of each pod; from the ``kube:`` configuration section."""

    labels: bool = True
    annotations_allow: tuple[str, ...] = ()  # fnmatch patterns; empty: no annotations (the default)
    annotations_deny: tuple[str, ...] = ()  # applied after allow
    namespace_labels: bool = False
    # `.` in label and annotation keys becomes `_`, as fluentd's kubernetes_metadata de_dot does:
    # `app` and `app.kubernetes.io/name` cannot both be Elasticsearch fields otherwise.
    de_dot: bool = True
    deleted_pod_grace_secs: float = 60.0


class ContainerMetadata(NamedTuple):
    """What ``lookup`` tells about one container of a known pod."""

    fields: dict  # merged into the record's `kubernetes` object
    excluded: bool  # the pod or container is annotated not to be shipped
    parser: str | None  # the parser its annotations select (one of PARSERS), or None


@dataclass
class _Pod:
    uid: str
    fields: dict  # pod-wide record fields
    images: dict  # container name -> {"container_image": ..., "container_image_id": ...}
    annotations: dict  # every annotation, raw: the controls are read from it at lookup
    deleted_at: float | None = None


@dataclass
class CacheCounts:
    """Writes the cache refused, for logs and tests (the watch reports them as metrics)."""

    bad_objects: int = 0
    bad_controls: dict = field(default_factory=dict)  # annotation -> times an invalid value was seen


class PodMetadataCache:
    """Pods of this node (and, optionally, namespace labels) by namespace and name."""

    def __init__(self, options: MetadataOptions = MetadataOptions(), clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.version = 0  # bumped after every change a lookup could see
        self.counts = CacheCounts()
        self._clock = clock
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._namespace_labels: dict[str, dict] = {}

    # ---- reading (event loop) --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pods)

    def lookup(self, namespace: str, pod_name: str, container: str | None) -> ContainerMetadata | None:
        """The metadata of ``container`` in pod ``namespace/pod_name``; None when the pod is unknown."""
        pod = self._pods.get((namespace, pod_name))
        if pod is None:
            return None
        fields = dict(pod.fields)
        if container is not None and container in pod.images:
            fields.update(pod.images[container])
        if self.options.namespace_labels:
            labels = self._namespace_labels.get(namespace)
            if labels is not None:
                fields["namespace_labels"] = labels
        excluded = _is_true(pod.annotations.get(EXCLUDE_ANNOTATION)) or (
            container is not None and _is_true(pod.annotations.get(f"{EXCLUDE_ANNOTATION}-{container}"))
        )
        parser = None
        if container is not None:
            parser = pod.annotations.get(f"{PARSER_ANNOTATION}-{container}")
        if parser is None:
            parser = pod.annotations.get(PARSER_ANNOTATION)
        if parser is not None and parser not in PARSERS:
            self._count_bad_control(PARSER_ANNOTATION, f"{namespace}/{pod_name}", parser)
            parser = None
        return ContainerMetadata(fields, excluded, parser)

    # ---- writing (watch thread, or a preload) ----------------------------------------------

    def replace_pods(self, pods: Iterable[dict]) -> None:
        """A full list: these are the pods now. Pods not in it are treated as deleted now
        (kept for the grace period), so a relist after a lost watch loses no metadata."""
        now = self._clock()
        seen = set()
        for pod in pods:
            key = self._store(pod)
            if key is not None:
                seen.add(key)
        for key, entry in list(self._pods.items()):
            if key not in seen and entry.deleted_at is None:
                entry.deleted_at = now
        self._expire(now)
        self.version += 1

    def apply_pod_event(self, event_type: str, pod: dict) -> None:
        """One ADDED, MODIFIED or DELETED watch event."""
        if event_type == "DELETED":
            key = _pod_key(pod)
            entry = self._pods.get(key) if key is not None else None
            # A DELETED for an older pod of the same name (a StatefulSet's, recreated) is stale.
            if entry is not None and entry.uid == _metadata(pod).get("uid") and entry.deleted_at is None:
                entry.deleted_at = self._clock()
        elif self._store(pod) is None:
            return
        self._expire(self._clock())
        self.version += 1

    def expire(self) -> None:
        """Remove pods deleted longer than the grace period ago (also done on every write)."""
        self._expire(self._clock())

    def replace_namespaces(self, namespaces: Iterable[dict]) -> None:
        labels = {}
        for namespace in namespaces:
            name = _metadata(namespace).get("name")
            if isinstance(name, str):
                labels[name] = self._keys(_string_map(_metadata(namespace).get("labels")))
            else:
                self.counts.bad_objects += 1
        self._namespace_labels = labels
        self.version += 1

    def apply_namespace_event(self, event_type: str, namespace: dict) -> None:
        name = _metadata(namespace).get("name")
        if not isinstance(name, str):
            self.counts.bad_objects += 1
            return
        if event_type == "DELETED":
            self._namespace_labels.pop(name, None)
        else:
            self._namespace_labels[name] = self._keys(_string_map(_metadata(namespace).get("labels")))
        self.version += 1

    # ---- internals -------------------------------------------------------------------------

    def _store(self, pod: dict) -> tuple[str, str] | None:
        key = _pod_key(pod)
        if key is None:
            self.counts.bad_objects += 1
            log.warning("pod without metadata.namespace/name skipped")
            return None
        self._pods[key] = self._parse(pod, key)
        return key

    def _parse(self, pod: dict, key: tuple[str, str]) -> _Pod:
        metadata = _metadata(pod)
        spec = _mapping(pod.get("spec"))
        status = _mapping(pod.get("status"))
        options = self.options
        labels = _string_map(metadata.get("labels"))
        annotations = _string_map(metadata.get("annotations"))
        fields: dict = {"pod_name": key[1], "namespace_name": key[0]}
        uid = metadata.get("uid") if isinstance(metadata.get("uid"), str) else ""
        if uid:
            fields["pod_id"] = uid
        for name, source in (("host", spec.get("nodeName")), ("pod_ip", status.get("podIP"))):
            if isinstance(source, str) and source:
                fields[name] = source
        if options.labels:
            fields["labels"] = self._keys(labels)
        if options.annotations_allow:
            allowed = {
                key_: value
                for key_, value in annotations.items()
                if any(fnmatchcase(key_, p) for p in options.annotations_allow)
                and not any(fnmatchcase(key_, p) for p in options.annotations_deny)
            }
            if allowed:
                fields["annotations"] = self._keys(allowed)
        owner = _owner(metadata.get("ownerReferences"), labels)
        if owner is not None:
            fields["owner_kind"], fields["owner_name"] = owner
        # Annotations are kept raw only when they carry a control; most pods keep none.
        controls = {k: v for k, v in annotations.items() if k.startswith((EXCLUDE_ANNOTATION, PARSER_ANNOTATION))}
        return _Pod(uid, fields, _container_images(spec, status), controls)

    def _keys(self, mapping: dict) -> dict:
        if not self.options.de_dot:
            return mapping
        return {key.replace(".", "_"): value for key, value in mapping.items()}

    def _expire(self, now: float) -> None:
        grace = self.options.deleted_pod_grace_secs
        expired = [key for key, pod in self._pods.items() if pod.deleted_at is not None and now - pod.deleted_at >= grace]
        for key in expired:
            del self._pods[key]

    def _count_bad_control(self, annotation: str, pod: str, value: str) -> None:
        seen = self.counts.bad_controls.get(annotation, 0)
        if not seen:  # once per annotation name: lookups repeat on every metadata refresh
            log.warning("pod %s: %s=%r is not one of %s; ignored", pod, annotation, value, ", ".join(PARSERS))
        self.counts.bad_controls[annotation] = seen + 1


def _metadata(obj: dict) -> dict:
    return _mapping(obj.get("metadata")) if isinstance(obj, dict) else {}


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _string_map(value: object) -> dict:
    """Labels and annotations are string to string; anything else in them is dropped."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _pod_key(pod: dict) -> tuple[str, str] | None:
    metadata = _metadata(pod)
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
        return namespace, name
    return None


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE_WORDS


def _owner(references: object, labels: dict) -> tuple[str, str] | None:
    """The controlling owner's (kind, name); a ReplicaSet made by a Deployment is reported as
    the Deployment: its name is the Deployment's plus ``-<pod-template-hash>``."""
    if not isinstance(references, list):
        return None
    candidates = [ref for ref in references if isinstance(ref, dict)]
    controller = next((ref for ref in candidates if ref.get("controller") is True), None)
    reference = controller or (candidates[0] if candidates else None)
    if reference is None:
        return None
    kind, name = reference.get("kind"), reference.get("name")
    if not isinstance(kind, str) or not isinstance(name, str):
        return None
    template_hash = labels.get(POD_TEMPLATE_HASH_LABEL)
    if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
        return "Deployment", name[: -len(template_hash) - 1]
    return kind, name


def _container_images(spec: dict, status: dict) -> dict:
    """Container name -> image fields. The status's image is what runs (a tag resolved, or the
    image a runtime reports); the spec's stands in until the container has a status."""
    images: dict = {}
    for section in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(section) or ():
            if isinstance(container, dict) and isinstance(container.get("name"), str):
                image = container.get("image")
                images[container["name"]] = {"container_image": image} if isinstance(image, str) else {}
    for section in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for container in status.get(section) or ():
            if not isinstance(container, dict) or not isinstance(container.get("name"), str):
                continue
            fields = images.setdefault(container["name"], {})
            if isinstance(container.get("image"), str) and container["image"]:
                fields["container_image"] = container["image"]
            if isinstance(container.get("imageID"), str) and container["imageID"]:
                fields["container_image_id"] = container["imageID"]
    return images
