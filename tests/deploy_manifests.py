"""The deploy manifests as tests see them: each overlay built, its DaemonSet's container and the
environment the pod gives the shipper, its configuration loaded with that environment."""

import os
from dataclasses import replace

from shipper.config import Config, load_config
from tests.kustomize_build import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAEMONSET_DIR = os.path.join(REPO, "deploy", "daemonset")
OVERLAYS = ("elasticsearch", "loki", "both")
NODE = "node-1"


def overlay_dir(overlay: str) -> str:
    return os.path.join(DAEMONSET_DIR, "overlays", overlay)


def config_path(overlay: str) -> str:
    return os.path.join(overlay_dir(overlay), "shipper.yaml")


def built(overlay: str, kind: str) -> dict:
    (found,) = [document for document in build(overlay_dir(overlay)) if document["kind"] == kind]
    return found


def container(daemonset: dict) -> dict:
    (shipper,) = daemonset["spec"]["template"]["spec"]["containers"]
    return shipper


def pod_environment(daemonset: dict) -> dict[str, str]:
    """What the container's environment holds on a node, with stand-ins for the downward API
    and for Secrets; an optional Secret key is taken as missing (its variable is then unset)."""
    environ = {}
    for variable in container(daemonset).get("env", []):
        source = variable.get("valueFrom", {})
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            environ[variable["name"]] = NODE
        elif "secretKeyRef" in source and not source["secretKeyRef"].get("optional", False):
            environ[variable["name"]] = f"secret:{source['secretKeyRef']['name']}/{source['secretKeyRef']['key']}"
    return environ


def overlay_config(overlay: str, **environment: str) -> Config:
    """The overlay's shipper.yaml as the pod reads it; ``environment`` overrides variables."""
    return load_config(config_path(overlay), {**pod_environment(built(overlay, "DaemonSet")), **environment})


def on_local_files(config: Config, paths: tuple[str, ...], state_dir: str) -> Config:
    """The configuration reading ``paths`` and keeping positions and dead letters in ``state_dir``
    instead of the node's /var/log and /var/lib/shipper."""
    sinks = {
        name: replace(sink, options=replace(sink.options, delivery=replace(
            sink.options.delivery, dead_letter_path=os.path.join(state_dir, f"dead-letter-{name}.ndjson"))))
        for name, sink in config.sinks.items()
    }
    return replace(config, positions_path=os.path.join(state_dir, "positions.json"), sinks=sinks,
                   inputs=tuple(replace(inp, paths=paths) for inp in config.inputs))
