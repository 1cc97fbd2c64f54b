"""Pod metadata: memory of the node cache, and CPU per record of enrichment.

    python benchmarks/bench_kube.py [--pods 110] [--records 200000] [--repeat 5]

Memory: ``--pods`` pods (110 is the kubelet's default maxPods) shaped like production pods
(recommended app.kubernetes.io labels, a Helm chart label, a Deployment's pod-template-hash,
Prometheus, checksum, CNI and Istio sidecar annotations; an app and a sidecar container with
env, probes, mounts) arrive as one list response. Measured with tracemalloc: what stays
allocated once the response is gone, for the cache with its defaults (annotations off), the
cache keeping every annotation, and, for comparison, the official client's ``V1Pod`` models of
the same list (what ``Watch.stream`` / a deserialized list would hold).

CPU: ``RecordBuilder.build`` + ``orjson.dumps`` (what a sink encodes) per plain-text record,
with the metadata a file name gives versus the cache's metadata for the same container; the
difference is what enrichment costs per record. Plus the cost of one ``refresh_pod_metadata``
(done per file when the cache changes, never per record).
"""

import argparse
import gc
import hashlib
import os
import statistics
import sys
import time
import tracemalloc

import orjson

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shipper.kube.enrich import file_kubernetes, refresh_pod_metadata  # noqa: E402
from shipper.kube.pod_metadata import MetadataOptions, PodMetadataCache  # noqa: E402
from shipper.parse.records import JsonOptions, RecordBuilder  # noqa: E402

NODE = "node-7"
TEAMS = ("payments", "search", "checkout", "identity", "data", "platform")


def realistic_pod(index: int) -> dict:
    app = f"{TEAMS[index % len(TEAMS)]}-svc{index}"
    template_hash = hashlib.sha256(app.encode()).hexdigest()[:10]
    name = f"{app}-{template_hash}-{hashlib.sha256(str(index).encode()).hexdigest()[:5]}"
    namespace = TEAMS[index % len(TEAMS)]
    digest = hashlib.sha256(name.encode()).hexdigest()
    image = f"registry.example.com/{namespace}/{app}:1.{index}.0"
    istio_status = orjson.dumps({
        "initContainers": ["istio-init"], "containers": ["istio-proxy"],
        "volumes": ["workload-socket", "credential-socket", "workload-certs", "istio-envoy", "istio-data",
                    "istio-podinfo", "istio-token", "istiod-ca-cert"],
        "imagePullSecrets": None, "revision": "default",
    }).decode()
    containers = [
        {
            "name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "env": [{"name": f"SETTING_{k}", "value": f"value-{k}-{index}"} for k in range(12)],
            "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "256Mi"}},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 5},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"},
                             {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                              "readOnly": True}],
        },
        {
            "name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.1",
            "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
            "env": [{"name": f"ISTIO_META_{k}", "value": f"v{k}"} for k in range(10)],
            "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "10m", "memory": "40Mi"}},
        },
    ]
    return {
        "metadata": {
            "name": name, "namespace": namespace, "uid": f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}",
            "resourceVersion": str(100000 + index), "creationTimestamp": "2026-11-20T09:00:00Z",
            "generateName": f"{app}-{template_hash}-",
            "labels": {
                "app.kubernetes.io/name": app, "app.kubernetes.io/instance": f"{app}-prod",
                "app.kubernetes.io/version": f"1.{index}.0", "app.kubernetes.io/component": "api",
                "app.kubernetes.io/part-of": namespace, "app.kubernetes.io/managed-by": "Helm",
                "helm.sh/chart": f"{app}-0.{index}.3", "pod-template-hash": template_hash,
                "security.istio.io/tlsMode": "istio", "service.istio.io/canonical-name": app,
            },
            "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": "9090", "prometheus.io/path": "/metrics",
                "checksum/config": hashlib.sha256(f"config{index}".encode()).hexdigest(),
                "checksum/secret": hashlib.sha256(f"secret{index}".encode()).hexdigest(),
                "kubectl.kubernetes.io/restartedAt": "2026-11-19T08:12:44Z",
                "kubectl.kubernetes.io/default-container": "app",
                "cni.projectcalico.org/containerID": digest,
                "cni.projectcalico.org/podIP": f"10.42.{index % 256}.{index // 256 + 2}/32",
                "cni.projectcalico.org/podIPs": f"10.42.{index % 256}.{index // 256 + 2}/32",
                "sidecar.istio.io/status": istio_status,
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{app}-{template_hash}",
                                 "uid": digest[:36], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "containers": containers, "nodeName": NODE, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "serviceAccountName": app, "schedulerName": "default-scheduler", "priority": 0,
            "volumes": [{"name": "config", "configMap": {"name": f"{app}-config", "defaultMode": 420}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300}],
        },
        "status": {
            "phase": "Running", "hostIP": "192.168.10.7", "podIP": f"10.42.{index % 256}.{index // 256 + 2}",
            "startTime": "2026-11-20T09:00:01Z", "qosClass": "Burstable",
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2026-11-20T09:00:05Z"}
                           for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "containerStatuses": [
                {"name": c["name"], "image": c["image"], "ready": True, "restartCount": 0, "started": True,
                 "imageID": f"{c['image'].rsplit(':', 1)[0]}@sha256:{hashlib.sha256(c['image'].encode()).hexdigest()}",
                 "containerID": "containerd://" + hashlib.sha256(f"{name}/{c['name']}".encode()).hexdigest(),
                 "state": {"running": {"startedAt": "2026-11-20T09:00:03Z"}}}
                for c in containers
            ],
        },
    }


def list_response(pods: int) -> bytes:
    items = [realistic_pod(i) for i in range(pods)]
    return orjson.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "200000"}, "items": items})


def retained_bytes(build) -> int:
    """Bytes still allocated after ``build()`` returned what it keeps (the rest collected)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return after - before


def lean_cache(body: bytes, options: MetadataOptions) -> PodMetadataCache:
    cache = PodMetadataCache(options)
    cache.replace_pods(orjson.loads(body)["items"])
    return cache


def client_models(client, body: bytes):
    return client.deserialize(body.decode(), "V1PodList", "application/json")


def per_record_us(builder: RecordBuilder, fragment, lines: list, repeat: int) -> float:
    best = float("inf")
    dumps = orjson.dumps
    for _ in range(repeat):
        out: list = []
        offsets: list = []
        started = time.process_time()
        builder.build(lines, fragment, out, offsets, "app")
        for record in out:
            dumps(record)
        best = min(best, time.process_time() - started)
    return best / len(lines) * 1e6


class FollowedFile:
    """The fields of a TailedFile that refresh_pod_metadata reads and writes."""

    def __init__(self, path: str, kubernetes: dict) -> None:
        self.path = path
        self.kubernetes = kubernetes
        self.kubernetes_json = orjson.Fragment(orjson.dumps(kubernetes))
        self.pod_metadata_version = -1
        self.pod_known = False
        self.excluded = False
        self.builder = None
        self.input = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    body = list_response(args.pods)
    print(f"list response: {args.pods} pods, {len(body) / 1024:.0f} KiB of JSON ({len(body) / args.pods / 1024:.1f} KiB a pod)")
    from kubernetes.client import ApiClient  # loaded (and its client made) before measuring

    client = ApiClient()
    client_models(client, body)

    for label, build in (
        ("cache, defaults (labels, no annotations)", lambda: lean_cache(body, MetadataOptions())),
        ("cache, every annotation kept", lambda: lean_cache(body, MetadataOptions(annotations_allow=("*",)))),
        ("official client V1Pod models (not used)", lambda: client_models(client, body)),
    ):
        sizes = [retained_bytes(build) for _ in range(3)]
        size = statistics.median(sizes)
        print(f"memory  {label:45s} {size / 1024:8.0f} KiB  ({size / args.pods / 1024:.1f} KiB a pod)")

    cache = lean_cache(body, MetadataOptions())
    pod = realistic_pod(0)
    container_id = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    path = f"/var/log/containers/{pod['metadata']['name']}_{pod['metadata']['namespace']}_app-{container_id}.log"
    from_file_name = file_kubernetes(path, NODE)
    followed = FollowedFile(path, from_file_name)
    refresh_pod_metadata(followed, cache, NODE)
    assert followed.pod_known, "the benchmark's file must match a cached pod"
    t = "2026-11-20T10:00:00.123456789Z"
    lines = [(i * 100, t, "stdout", f"GET /api/v1/orders/{i} 200 {i % 97}ms".encode(), 0) for i in range(args.records)]
    builder = RecordBuilder(JsonOptions())
    plain = per_record_us(builder, orjson.Fragment(orjson.dumps(from_file_name)), lines, args.repeat)
    enriched = per_record_us(builder, followed.kubernetes_json, lines, args.repeat)
    print(f"cpu     build + encode, file-name metadata ({len(orjson.dumps(from_file_name))} B)   {plain:6.2f} us/record")
    print(f"cpu     build + encode, cache metadata ({len(orjson.dumps(followed.kubernetes))} B)      {enriched:6.2f} us/record")
    print(f"cpu     enrichment per record                              {enriched - plain:6.2f} us/record")

    rounds = 20_000
    started = time.process_time()
    for _ in range(rounds):
        followed.pod_metadata_version = -1
        refresh_pod_metadata(followed, cache, NODE)
    refresh_us = (time.process_time() - started) / rounds * 1e6
    print(f"cpu     refresh_pod_metadata (per file, when the cache changed)  {refresh_us:6.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
