"""docs/runbook.md stays true to the repository: the paths it tells users to apply or import
exist, and its example overlay patch sets the variable it names."""

import os
import re

import yaml

from tests.deploy_manifests import REPO, built, container, overlay_dir
from tests.kustomize_build import apply_patch, build

RUNBOOK = os.path.join(REPO, "docs", "runbook.md")


def runbook() -> str:
    with open(RUNBOOK, encoding="utf-8") as handle:
        return handle.read()


def test_every_repository_path_the_runbook_names_exists():
    paths = set(re.findall(r"(?<![\w/.])((?:deploy|docs)/[\w./-]*\w|Dockerfile)", runbook()))
    assert "deploy/daemonset/overlays/loki" in paths and "deploy/dashboards/grafana-loki.json" in paths
    for path in paths:
        assert os.path.exists(os.path.join(REPO, path)), f"docs/runbook.md names {path}, which does not exist"


def test_the_example_patch_sets_the_backend_url_and_nothing_else():
    """The runbook's overlay patch, applied to the overlays that have ES_URL, sets exactly that
    variable, and leaves every variable with one source (the API refuses value + valueFrom)."""
    example = re.search(r"# my-cluster/kustomization.yaml\n(.*?)```", runbook(), re.S).group(1)
    (patch,) = yaml.safe_load(example)["patches"]
    for overlay in ("elasticsearch", "both"):
        objects = build(overlay_dir(overlay))
        apply_patch(objects, yaml.safe_load(patch["patch"]), "docs/runbook.md")
        (daemonset,) = [document for document in objects if document["kind"] == "DaemonSet"]
        before = container(built(overlay, "DaemonSet"))["env"]
        after = container(daemonset)["env"]
        assert [variable for variable in after if variable not in before] == [
            {"name": "ES_URL", "value": "https://elasticsearch.example.com:9200"}]
        assert all(("value" in variable) != ("valueFrom" in variable) for variable in after)
