"""A followed file's ``kubernetes`` object from the pod metadata cache, refreshed when it changes.

The pipeline calls ``refresh_pod_metadata`` once per chunk at most, and only when the cache's
version moved since the file last looked: each record then carries the file's pre-encoded
metadata as before, so enrichment costs nothing per record. A file whose pod is not in the
cache keeps what its name tells (pod, namespace, container, container id) and ships at once;
it gets the pod's metadata with the first chunk after the watch delivers the pod.
"""

from dataclasses import replace
from functools import lru_cache

import orjson

from shipper.kube.file_names import kubernetes_from_path
from shipper.kube.pod_metadata import PodMetadataCache
from shipper.parse.records import JsonOptions, RecordBuilder, SecurityOptions


def file_kubernetes(path: str, node_name: str) -> dict:
    """What a record gets without the API: the file name's fields, and ``host``."""
    kubernetes = kubernetes_from_path(path)
    if node_name:
        kubernetes["host"] = node_name
    return kubernetes


def refresh_pod_metadata(tailed, pod_metadata: PodMetadataCache, node_name: str) -> None:
    """Merge the cache's metadata for ``tailed``'s container into its ``kubernetes`` object.

    The file name's fields win over the cache's: its container id is the exact container that
    wrote this file (a restarted container has a new one), and a pod recreated under the same
    name is another pod. A pod that leaves the cache (past its deletion grace) leaves the
    file with the last metadata it had: its lines still belong to that pod.
    """
    tailed.pod_metadata_version = pod_metadata.version
    fields = file_kubernetes(tailed.path, node_name)
    namespace, pod = fields.get("namespace_name"), fields.get("pod_name")
    found = pod_metadata.lookup(namespace, pod, fields.get("container_name")) if namespace and pod else None
    if found is None:
        return
    kubernetes = {**found.fields, **fields}
    if not tailed.pod_known or kubernetes != tailed.kubernetes:
        tailed.kubernetes = kubernetes
        tailed.kubernetes_json = orjson.Fragment(orjson.dumps(kubernetes))
    tailed.pod_known = True
    tailed.excluded = found.excluded
    tailed.builder = None if found.parser is None else parser_builder(tailed.input.config.json, tailed.input.config.security,
                                                                   found.parser)


@lru_cache(maxsize=64)
def parser_builder(json: JsonOptions, security: SecurityOptions, parser: str) -> RecordBuilder:
    """The record builder a ``shipper.io/parser`` annotation selects, from the input's options:

    - ``json``: a message that is a JSON object is merged (``json.mode: top`` if the input had it off);
    - ``text``: messages are never parsed (no JSON merge, no KubeArmor/Falco recognition);
    - ``kubearmor`` / ``falco``: recognised by shape whatever the container is called.
    """
    if parser == "json":
        return RecordBuilder(json if json.mode != "off" else replace(json, mode="top"), security)
    if parser == "text":
        return RecordBuilder(replace(json, mode="off"), replace(security, enabled=False))
    if parser == "kubearmor":
        return RecordBuilder(json, replace(security, enabled=True, kubearmor_containers=("*",), falco_containers=()))
    return RecordBuilder(json, replace(security, enabled=True, kubearmor_containers=(), falco_containers=("*",)))
