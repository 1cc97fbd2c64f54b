"""docs/runbook.md stays true to the repository: the paths it tells users to apply or import
exist, and the env positions its example JSON patch targets hold the variables it names."""

import os
import re

from tests.deploy_manifests import REPO, built, container

RUNBOOK = os.path.join(REPO, "docs", "runbook.md")


def runbook() -> str:
    with open(RUNBOOK, encoding="utf-8") as handle:
        return handle.read()


def test_every_repository_path_the_runbook_names_exists():
    paths = set(re.findall(r"(?<![\w/.])((?:deploy|docs)/[\w./-]*\w|Dockerfile)", runbook()))
    assert "deploy/daemonset/overlays/loki" in paths and "deploy/dashboards/grafana-loki.json" in paths
    for path in paths:
        assert os.path.exists(os.path.join(REPO, path)), f"docs/runbook.md names {path}, which does not exist"


def test_the_example_patch_replaces_the_backend_url():
    assert "/spec/template/spec/containers/0/env/1/value" in runbook()
    urls = {overlay: [variable["name"] for variable in container(built(overlay, "DaemonSet"))["env"]]
            for overlay in ("elasticsearch", "loki", "both")}
    assert urls["elasticsearch"][1] == "ES_URL" and urls["loki"][1] == "LOKI_URL"
    assert urls["both"][1] == "ES_URL" and urls["both"][4] == "LOKI_URL"  # "env/4 in both"
