"""The DaemonSet manifests: they build, the API would take them, and they agree with the
configuration each overlay mounts (paths, ports, grace period, permissions)."""

import glob
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
import yaml

from shipper.cli import main
from shipper.metrics import HealthState, Metrics, serve_metrics
from shipper.tail.files import matching_paths
from tests.deploy_manifests import (
    DAEMONSET_DIR,
    OVERLAYS,
    REPO,
    built,
    config_path,
    container,
    overlay_config,
    overlay_dir,
    pod_environment,
)
from tests.kube_models import ManifestError, check_fields, check_manifest, model_name
from tests.kustomize_build import KustomizeError, build, referenced_files

# Measured (README, Benchmarks): the highest peak RSS of the benchmarks, bench_es's 92-115 MB.
MEASURED_PEAK_RSS = 115 * 10**6


def mounts(daemonset: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (the volume mount, its volume)."""
    volumes = {volume["name"]: volume for volume in daemonset["spec"]["template"]["spec"]["volumes"]}
    return {mount["mountPath"]: (mount, volumes[mount["name"]]) for mount in container(daemonset)["volumeMounts"]}


def mount_holding(daemonset: dict, path: str) -> tuple[dict, dict]:
    """The mount a file path (or glob) of the configuration is under, or an assertion error."""
    for mount_path, found in mounts(daemonset).items():
        if os.path.commonpath([mount_path, path]) == mount_path:
            return found
    raise AssertionError(f"{path} is under none of the container's mounts: {sorted(mounts(daemonset))}")


def quantity_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]i?|)", quantity).groups()
    powers = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(number) * powers[unit]


# ---- the manifests themselves --------------------------------------------------------------


def test_every_file_a_kustomization_names_exists():
    for overlay in OVERLAYS:
        for path in referenced_files(overlay_dir(overlay)):
            assert os.path.isfile(path), f"{overlay}: {path} is named but missing"


def test_every_manifest_is_a_known_kind_with_only_fields_the_api_knows():
    files = [path for path in glob.glob(os.path.join(DAEMONSET_DIR, "**", "*.yaml"), recursive=True)
             if os.path.basename(path) not in ("kustomization.yaml", "shipper.yaml")]
    assert len(files) >= 9
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for document in yaml.safe_load_all(handle):
                # Patches are partial objects: their fields are checked here, required ones in the builds.
                check_fields(document, model_name(document), os.path.relpath(path, REPO))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_builds_objects_the_api_accepts(overlay):
    documents = build(overlay_dir(overlay))
    for document in documents:
        check_manifest(document)
    assert sorted(document["kind"] for document in documents) == sorted([
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "DaemonSet", "ConfigMap",
    ])  # and no Secret: credentials are referenced, never committed


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its kustomize) is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_test_build_is_what_kubectl_kustomize_builds(overlay):
    """The tests' kustomize stands in for the real one: where kubectl is at hand, the two must
    print the same objects (but for the hash kustomize appends to the generated ConfigMap)."""
    real = subprocess.run(["kubectl", "kustomize", overlay_dir(overlay)], capture_output=True, text=True, check=True)

    def normalised(documents) -> str:
        text = yaml.safe_dump(sorted(documents, key=lambda d: (d["kind"], d["metadata"]["name"])), sort_keys=True)
        return re.sub(r"shipper-config-[a-z0-9]{10}\b", "shipper-config", text)

    assert normalised(build(overlay_dir(overlay))) == normalised(yaml.safe_load_all(real.stdout))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_environment_variable_has_one_source(overlay):
    """The API refuses an env entry with both ``value`` and ``valueFrom`` (as a positional patch
    gone astray would leave it)."""
    for variable in container(built(overlay, "DaemonSet"))["env"]:
        assert ("value" in variable) != ("valueFrom" in variable), f"{overlay}: {variable}"


def test_the_validator_refuses_what_the_api_would_refuse():
    daemonset = built("loki", "DaemonSet")
    container(daemonset)["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(ManifestError, match=r"livenessProbe\.httpGet\.paht: unknown field"):
        check_manifest(daemonset)
    daemonset = built("loki", "DaemonSet")
    daemonset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30"
    with pytest.raises(ManifestError, match="terminationGracePeriodSeconds: expected int"):
        check_manifest(daemonset)
    daemonset = built("loki", "DaemonSet")
    del daemonset["spec"]["selector"]
    with pytest.raises(ManifestError, match="selector"):
        check_manifest(daemonset)
    with pytest.raises(ManifestError, match="unknown apiVersion/kind extensions/v1beta1/DaemonSet"):
        check_manifest({**daemonset, "apiVersion": "extensions/v1beta1"})


def test_a_kustomization_naming_a_missing_file_does_not_build(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "configMapGenerator:\n  - name: shipper-config\n    files: [shipper.yaml]\n"
    )
    with pytest.raises(KustomizeError, match="shipper.yaml: no such file"):
        build(str(tmp_path))


# ---- the configuration each overlay mounts --------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_mounted_configuration_passes_check_config_with_the_pods_environment(overlay, monkeypatch, capsys):
    path = config_path(overlay)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    config_map = built(overlay, "ConfigMap")
    assert config_map["data"] == {"shipper.yaml": text}
    environ = pod_environment(built(overlay, "DaemonSet"))
    required = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    assert required <= set(environ), f"variables the DaemonSet does not set: {required - set(environ)}"
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config", path]) == 0, capsys.readouterr().err
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_positions_and_dead_letters_are_on_the_host_and_the_logs_read_only(overlay):
    config = overlay_config(overlay)
    daemonset = built(overlay, "DaemonSet")
    # Everything the shipper writes must be on the hostPath that outlives the pod (the root
    # file system is read-only): positions and every sink's dead letters.
    written = [config.positions_path] + [sink.options.delivery.dead_letter_path for sink in config.sinks.values()]
    for path in written:
        mount, volume = mount_holding(daemonset, path)
        assert volume["hostPath"] == {"path": "/var/lib/shipper", "type": "DirectoryOrCreate"}, path
        assert not mount.get("readOnly", False), path
    for inp in config.inputs:
        for pattern in inp.paths:
            mount, volume = mount_holding(daemonset, pattern)
            assert volume["hostPath"]["path"] == "/var/log" and mount["readOnly"] is True, pattern
    assert container(daemonset)["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_outlives_the_configured_drain(overlay):
    config = overlay_config(overlay)
    grace = built(overlay, "DaemonSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # SIGKILL must not cut the drain short, and positions are written after it.
    assert grace > config.shutdown_grace_secs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_scrapes_reach_the_configured_metrics_port(overlay):
    config = overlay_config(overlay)
    daemonset = built(overlay, "DaemonSet")
    port = int(config.metrics_listen.rpartition(":")[2])
    shipper = container(daemonset)
    (metrics_port,) = [p for p in shipper["ports"] if p["name"] == "metrics"]
    assert metrics_port["containerPort"] == port
    assert shipper["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert shipper["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                           "prometheus.io/path": "/metrics"}


def test_the_probed_paths_are_served_by_the_shipper():
    daemonset = built("both", "DaemonSet")
    shipper = container(daemonset)
    health = HealthState()
    server = serve_metrics(Metrics(), health, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.server_port}"

        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as answer:
                    return answer.status
            except urllib.error.HTTPError as error:
                return error.code

        readiness = shipper["readinessProbe"]["httpGet"]["path"]
        assert status(readiness) == 503  # not ready before the pipeline started
        health.ready = True
        for probe in ("livenessProbe", "readinessProbe"):
            assert status(shipper[probe]["httpGet"]["path"]) == 200
        assert status(daemonset["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]) == 200
    finally:
        server.shutdown()
        threading.Thread(target=server.server_close).start()


# ---- permissions and placement --------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_cluster_role_grants_only_what_the_watches_use(overlay):
    config = overlay_config(overlay)
    resources = ["pods"] + (["namespaces"] if config.kube.metadata.namespace_labels else [])
    assert config.kube.enabled
    assert built(overlay, "ClusterRole")["rules"] == [
        {"apiGroups": [""], "resources": resources, "verbs": ["get", "list", "watch"]}
    ]
    binding = built(overlay, "ClusterRoleBinding")
    daemonset = built(overlay, "DaemonSet")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": built(overlay, "ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": daemonset["spec"]["template"]["spec"]["serviceAccountName"],
                                    "namespace": daemonset["metadata"]["namespace"]}]
    assert built(overlay, "ServiceAccount")["metadata"]["name"] == binding["subjects"][0]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_runs_on_every_node_without_privileges(overlay):
    spec = built(overlay, "DaemonSet")["spec"]
    pod = spec["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]  # every taint, control-plane included
    assert pod["priorityClassName"] == built(overlay, "PriorityClass")["metadata"]["name"]
    assert built(overlay, "PriorityClass")["value"] < 2_000_000_000  # below the system-* classes
    security = container(built(overlay, "DaemonSet"))["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_memory_limit_holds_the_measured_peak_and_every_sinks_buffer(overlay):
    config = overlay_config(overlay)
    resources = container(built(overlay, "DaemonSet"))["resources"]
    limit = quantity_bytes(resources["limits"]["memory"])
    assert "cpu" not in resources["limits"]  # throttling would delay probes and shipping, not save anything
    assert quantity_bytes(resources["requests"]["memory"]) <= limit
    assert limit > MEASURED_PEAK_RSS + len(config.sinks) * config.max_in_flight_bytes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_shipper_does_not_ship_its_own_logs(overlay, tmp_path):
    """Its pod's log (``<pod>_<namespace>_<container>-<id>.log``) is excluded, other pods' are not."""
    daemonset, namespace = built(overlay, "DaemonSet"), built(overlay, "Namespace")["metadata"]["name"]
    own = tmp_path / f"{daemonset['metadata']['name']}-x7k2p_{namespace}_{container(daemonset)['name']}-{'ab' * 32}.log"
    other = tmp_path / f"web-7d9f8b6c5-x2x4z_shop_web-{'cd' * 32}.log"
    own.touch()
    other.touch()
    for inp in overlay_config(overlay).inputs:
        assert matching_paths((str(tmp_path / "*.log"),), inp.exclude) == [str(other)]
