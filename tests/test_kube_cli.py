"""Pod metadata from the command line: the offline dry run, and `shipper run` against the fake API."""

import hashlib
import json
import os
import signal
import subprocess
import sys

import orjson
import pytest

from shipper.cli import sample_pods_path
from tests.receivers.kube_api import FakeKubeApi, make_pod

T = "2026-11-20T10:00:00.5Z"


def shipper(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shipper", *args], capture_output=True, timeout=60, **kwargs)


def records_of(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def test_the_bundled_pods_enrich_every_sample_record_offline(tmp_path):
    plain = records_of(shipper("--dry-run", cwd=tmp_path))
    result = shipper("--dry-run", "--kube-pods", cwd=tmp_path)

    records = records_of(result)
    assert len(records) == len(plain)
    assert all("pod_id" in r["kubernetes"] and "container_image" in r["kubernetes"] for r in records)
    owners = {(r["kubernetes"]["pod_name"], r["kubernetes"]["owner_kind"], r["kubernetes"]["owner_name"]) for r in records}
    assert ("checkout-7d9f8b6c5-abcde", "Deployment", "checkout") in owners
    assert ("falco-7x2kq", "DaemonSet", "falco") in owners
    assert ("etcd-control-plane-1", "Node", "control-plane-1") in owners
    # The file's fields agree with the list's: the bundled list matches the bundled files.
    pods = {p["metadata"]["name"]: p for p in json.loads(open(sample_pods_path()).read())["items"]}
    for record in records:
        status = pods[record["kubernetes"]["pod_name"]]["status"]["containerStatuses"][0]
        assert status["containerID"] == "containerd://" + record["kubernetes"]["container_id"]
    assert "pod metadata: 9 pods (0 unreadable, skipped); records without it: 0" in result.stderr.decode()


def test_a_saved_pod_list_with_controls_and_unreadable_items(tmp_path):
    container_id = hashlib.sha256(b"x").hexdigest()
    for pod in ("web-0", "quiet-0", "unknown-0"):
        (tmp_path / f"{pod}_default_app-{container_id}.log").write_bytes(f"{T} stdout F hello from {pod}\n".encode())
    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps({"kind": "List", "items": [
        make_pod("web-0", labels={"app": "web"}),
        make_pod("quiet-0", annotations={"shipper.io/exclude": "true"}),
        {"metadata": {"name": "no-namespace"}},
    ]}))

    result = shipper("--dry-run", "--path", str(tmp_path / "*.log"), "--kube-pods", str(pods))

    records = records_of(result)
    assert [(r["log"], r["kubernetes"].get("labels")) for r in records] == [
        ("hello from unknown-0", None),
        ("hello from web-0", {"app": "web"}),
    ]
    assert ("pod metadata: 2 pods (1 unreadable, skipped); records without it: 1, excluded by annotation: 1"
            in result.stderr.decode())


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not JSON"),
        ('{"kind": "Status"}', "not a pod list"),
        ("[1, 2]", "not a pod list"),
    ],
)
def test_an_unusable_pod_list_exits_2_with_a_reason(tmp_path, content, message):
    pods = tmp_path / "pods.json"
    pods.write_text(content)

    result = shipper("--dry-run", "--kube-pods", str(pods))

    assert result.returncode == 2
    assert result.stderr.decode().startswith(f"error: --kube-pods {pods}: {message}")


def test_kube_pods_needs_a_dry_run():
    result = shipper("run", "--config", "x.yaml", "--kube-pods", "pods.json")

    assert result.returncode == 2


def test_run_enriches_records_from_the_api(tmp_path):
    container_id = hashlib.sha256(b"web").hexdigest()
    log = tmp_path / f"web-0_shop_app-{container_id}.log"
    log.write_bytes(f"{T} stdout F first\n".encode())
    with FakeKubeApi(bookmark_interval=None) as api:
        api.add_pod(make_pod("web-0", "shop", node_name="node-a", labels={"app": "web"}))
        config = tmp_path / "shipper.yaml"
        config.write_text(
            "node_name: node-a\n"
            f"kube: {{enabled: true, kubeconfig: {api.write_kubeconfig(tmp_path / 'kubeconfig')}}}\n"
            f"positions: {{path: {tmp_path}/positions.json}}\n"
            "read: {poll_interval_secs: 0.05}\n"
            "metrics: {listen: null}\n"
            f"inputs: {{app: {{paths: ['{tmp_path}/*.log'], sinks: [out]}}}}\n"
            "sinks: {out: {type: stdout}}\n"
        )
        process = subprocess.Popen([sys.executable, "-m", "shipper", "run", "--config", str(config)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            first = orjson.loads(process.stdout.readline())  # may come before the list: not waited for
            api.wait_for_watches(1, timeout=20)
            with open(log, "ab") as handle:
                handle.write(f"{T} stdout F second\n".encode())
            second = orjson.loads(process.stdout.readline())
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
        finally:
            process.kill()

    assert first["log"] == "first"
    assert second["log"] == "second"
    assert second["kubernetes"]["labels"] == {"app": "web"}
    assert second["kubernetes"]["host"] == "node-a"


def test_run_outside_a_cluster_without_a_kubeconfig_is_a_config_error(tmp_path):
    config = tmp_path / "shipper.yaml"
    config.write_text(
        "node_name: node-a\nkube: {enabled: true}\nmetrics: {listen: null}\n"
        f"positions: {{path: {tmp_path}/positions.json}}\n"
        f"inputs: {{app: {{paths: ['{tmp_path}/*.log'], sinks: [out]}}}}\nsinks: {{out: {{type: stdout}}}}\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}

    result = shipper("run", "--config", str(config), env=environment)

    assert result.returncode == 2
    assert result.stderr.decode().startswith(f"config error: {config}: kube: cannot set up the API client:")
