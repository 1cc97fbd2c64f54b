"""A strict check of Kubernetes manifests against the official client's OpenAPI models.

``kubectl apply`` with server-side field validation refuses a manifest with an unknown or
misplaced field; no cluster is at hand here, so the client's generated models stand in for the
API's schema: every key must be in the model's ``attribute_map`` and every value of the type its
``openapi_types`` names, recursively. The client's own deserializer then applies the models'
required fields and enums.
"""

import re

from kubernetes import client
from kubernetes.client import models

# (apiVersion, kind) of the objects the deploy manifests may hold, and their model classes.
KINDS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("scheduling.k8s.io/v1", "PriorityClass"): "V1PriorityClass",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
}

_LIST = re.compile(r"^[Ll]ist\[(.+)\]$")
_DICT = re.compile(r"^[Dd]ict\((?:str), (.+)\)$|^[Dd]ict\[str, (.+)\]$")
_SCALARS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "bytes": (str,)}


class ManifestError(ValueError):
    """A field the API would refuse, with its path (``spec.template.spec.containers[0].ports``)."""


def model_name(manifest: dict) -> str:
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    if key not in KINDS:
        raise ManifestError(f"unknown apiVersion/kind {key[0]}/{key[1]}")
    return KINDS[key]


def check_fields(value: object, type_name: str, path: str = "") -> None:
    """Every key known to the model, every value of the model's type; required fields not asked."""
    if type_name == "object":  # IntOrString, RawExtension: any JSON value
        return
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            raise ManifestError(f"{path}: expected a list ({type_name}), got {type(value).__name__}")
        for index, item in enumerate(value):
            check_fields(item, match.group(1), f"{path}[{index}]")
        return
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: expected a mapping ({type_name}), got {type(value).__name__}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ManifestError(f"{path}: key {key!r} is not a string")
            check_fields(item, match.group(1) or match.group(2), f"{path}.{key}")
        return
    if type_name in _SCALARS:
        # YAML's `true` is a bool, and a bool is an int in Python: keep them apart.
        if not isinstance(value, _SCALARS[type_name]) or (isinstance(value, bool) and type_name != "bool"):
            raise ManifestError(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    if type_name in ("datetime", "date"):
        if not isinstance(value, str):
            raise ManifestError(f"{path}: expected an RFC 3339 {type_name} string, got {value!r}")
        return
    model = getattr(models, type_name)
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: expected a {type_name} mapping, got {type(value).__name__}")
    fields = {json_key: attribute for attribute, json_key in model.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            where = f"{path}.{key}" if path else key
            raise ManifestError(f"{where}: unknown field for {type_name}")
        check_fields(item, model.openapi_types[fields[key]], f"{path}.{key}" if path else key)


def check_manifest(manifest: dict) -> object:
    """The manifest's model object, or ManifestError for an unknown field, a wrong type or a
    missing required field."""
    name = model_name(manifest)
    check_fields(manifest, name)
    try:
        # The client's deserializer builds the model with client-side validation (required
        # fields, enums), as it does for the API's answers.
        return client.ApiClient()._ApiClient__deserialize(manifest, name)
    except ValueError as error:
        raise ManifestError(f"{manifest['kind']} {manifest.get('metadata', {}).get('name')}: {error}") from None
