"""The ``kube:`` configuration section: whether to watch the API, and what records get."""

from dataclasses import dataclass, field
from typing import Any

from shipper.config_reader import ConfigReader
from shipper.kube.pod_metadata import MetadataOptions


@dataclass(frozen=True)
class KubeOptions:
    enabled: bool = False  # off: records get what the file name tells, and no API is contacted
    kubeconfig: str | None = None  # None: the pod's service account (in-cluster)
    metadata: MetadataOptions = field(default_factory=MetadataOptions)


def read_kube_options(reader: ConfigReader, value: Any, node_name: str) -> KubeOptions:
    spec = reader.mapping(
        value, "kube",
        ("enabled", "kubeconfig", "labels", "annotations", "namespace_labels", "de_dot", "deleted_pod_grace_secs"),
    )
    defaults = MetadataOptions()
    annotations = reader.mapping(spec.get("annotations", {}), "kube.annotations", ("allow", "deny"))
    metadata = MetadataOptions(
        labels=reader.boolean(spec.get("labels", defaults.labels), "kube.labels"),
        annotations_allow=reader.strings(annotations.get("allow", []), "kube.annotations.allow"),
        annotations_deny=reader.strings(annotations.get("deny", []), "kube.annotations.deny"),
        namespace_labels=reader.boolean(spec.get("namespace_labels", defaults.namespace_labels), "kube.namespace_labels"),
        de_dot=reader.boolean(spec.get("de_dot", defaults.de_dot), "kube.de_dot"),
        deleted_pod_grace_secs=reader.number(
            spec.get("deleted_pod_grace_secs", defaults.deleted_pod_grace_secs), "kube.deleted_pod_grace_secs", float, 0
        ),
    )
    enabled = reader.boolean(spec.get("enabled", False), "kube.enabled")
    if enabled and not node_name:
        # The watch asks for spec.nodeName=<node_name>; without it every pod of the cluster would come.
        raise reader.fail("kube.enabled", "needs node_name (set it from the downward API: spec.nodeName)")
    kubeconfig = spec.get("kubeconfig")
    return KubeOptions(
        enabled=enabled,
        kubeconfig=None if kubeconfig in (None, "") else reader.string(kubeconfig, "kube.kubeconfig"),
        metadata=metadata,
    )
