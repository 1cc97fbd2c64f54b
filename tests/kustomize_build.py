"""The part of ``kustomize build`` the deploy manifests use, for tests (no kustomize binary here).

Resources (files and directories), components, ``configMapGenerator`` with ``files``, patches
given by ``path`` (strategic merge on the object with the patch's apiVersion, kind and name) and
``namespace``. Any other kustomization key is refused rather than ignored, so the manifests cannot
come to depend on something these tests would not check. Generated ConfigMaps keep their plain
name: kustomize appends a content hash to it and to every reference, which changes nothing checked
here.
"""

import copy
import os

import yaml

KUSTOMIZATION = ("kustomize.config.k8s.io/v1beta1", "Kustomization")
COMPONENT = ("kustomize.config.k8s.io/v1alpha1", "Component")
KNOWN_KEYS = {"apiVersion", "kind", "namespace", "resources", "components", "configMapGenerator", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}
# Strategic merge keys of the lists a patch may merge into (Kubernetes' patchMergeKey); any other
# list in a patch replaces the original, as for ClusterRole rules.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}


class KustomizeError(ValueError):
    pass


def build(directory: str) -> list[dict]:
    """The objects ``kustomize build directory`` would print, in resource order."""
    return _build(directory, KUSTOMIZATION)


def referenced_files(directory: str) -> list[str]:
    """Every file a kustomization names, through its resources and components, recursively."""
    kustomization = _load(directory)
    files = [os.path.join(directory, "kustomization.yaml")]
    for entry in kustomization.get("resources", []) + kustomization.get("components", []):
        path = os.path.join(directory, entry)
        files += referenced_files(path) if os.path.isdir(path) else [path]
    for generator in kustomization.get("configMapGenerator", []):
        files += [os.path.join(directory, _file_entry(entry)[1]) for entry in generator.get("files", [])]
    files += [os.path.join(directory, patch["path"]) for patch in kustomization.get("patches", [])]
    return files


def _load(directory: str) -> dict:
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(path):
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    with open(path, encoding="utf-8") as handle:
        kustomization = yaml.safe_load(handle) or {}
    unknown = set(kustomization) - KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{path}: keys not modelled by this test's kustomize: {sorted(unknown)}")
    return kustomization


def _build(directory: str, expected: tuple[str, str], objects: list[dict] | None = None) -> list[dict]:
    kustomization = _load(directory)
    kind = (kustomization.get("apiVersion"), kustomization.get("kind"))
    if kind != expected:
        raise KustomizeError(f"{directory}/kustomization.yaml: expected {expected[1]} ({expected[0]}), got {kind}")
    objects = [] if objects is None else objects
    for entry in kustomization.get("resources", []):
        path = os.path.join(directory, entry)
        if os.path.isdir(path):
            objects += _build(path, KUSTOMIZATION)
        else:
            objects += _documents(path)
    for entry in kustomization.get("components", []):
        # A component works on what the kustomization that names it has gathered so far.
        _build(os.path.join(directory, entry), COMPONENT, objects)
    for generator in kustomization.get("configMapGenerator", []):
        objects.append(_config_map(directory, generator))
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{directory}: only patches given by path are modelled, got {patch}")
        for document in _documents(os.path.join(directory, patch["path"])):
            apply_patch(objects, document, patch["path"])
    if "namespace" in kustomization:
        _set_namespace(objects, kustomization["namespace"])
    return objects


def _documents(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise KustomizeError(f"{path}: no such file")
    with open(path, encoding="utf-8") as handle:
        return [document for document in yaml.safe_load_all(handle) if document is not None]


def _file_entry(entry: str) -> tuple[str, str]:
    """``key=path`` or ``path`` (the key is then the file's name)."""
    key, _, path = entry.rpartition("=")
    return key or os.path.basename(path), path


def _config_map(directory: str, generator: dict) -> dict:
    if set(generator) != {"name", "files"}:
        raise KustomizeError(f"{directory}: configMapGenerator entries with name and files only, got {generator}")
    data = {}
    for entry in generator["files"]:
        key, path = _file_entry(entry)
        full_path = os.path.join(directory, path)
        if not os.path.isfile(full_path):
            raise KustomizeError(f"{full_path}: no such file (configMapGenerator {generator['name']})")
        with open(full_path, encoding="utf-8") as handle:
            data[key] = handle.read()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


def _identity(document: dict) -> tuple:
    return document.get("apiVersion"), document.get("kind"), document.get("metadata", {}).get("name")


def apply_patch(objects: list[dict], patch: dict, source: str) -> None:
    targets = [i for i, document in enumerate(objects) if _identity(document) == _identity(patch)]
    if len(targets) != 1:
        raise KustomizeError(f"{source}: patch for {_identity(patch)} matches {len(targets)} objects")
    objects[targets[0]] = _merge(objects[targets[0]], patch)


def _merge(original: object, patch: object, key: str = "") -> object:
    if isinstance(original, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(original)
        for name, value in patch.items():
            if name.startswith("$"):
                raise KustomizeError(f"patch directive {name} is not modelled")
            merged[name] = _merge(original[name], value, name) if name in original else copy.deepcopy(value)
        return merged
    if isinstance(original, list) and isinstance(patch, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        merged, added = copy.deepcopy(original), []
        for item in patch:
            index = next((i for i, old in enumerate(merged) if old.get(merge_key) == item.get(merge_key)), None)
            if index is None:
                added.append(copy.deepcopy(item))
            else:
                merged[index] = _merge(merged[index], item)
        return added + merged  # kustomize puts the patch's new items first
    return copy.deepcopy(patch)


def _set_namespace(objects: list[dict], namespace: str) -> None:
    for document in objects:
        if document.get("kind") not in CLUSTER_SCOPED:
            document.setdefault("metadata", {})["namespace"] = namespace
        for subject in document.get("subjects", []) if document.get("kind") == "ClusterRoleBinding" else []:
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace
