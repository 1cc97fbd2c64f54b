"""The pod metadata cache: what a record gets from a pod, owners, annotations, deletion grace."""

import pytest

from shipper.kube.pod_metadata import ContainerMetadata, MetadataOptions, PodMetadataCache
from tests.receivers.kube_api import make_pod


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache_of(*pods, clock=None, **options) -> PodMetadataCache:
    cache = PodMetadataCache(MetadataOptions(**options), clock=clock or Clock())
    cache.replace_pods(pods)
    return cache


def test_a_record_gets_the_fluentd_kubernetes_metadata_fields():
    pod = make_pod(
        "checkout-7d9f8b6c5-abcde", "shop", node_name="node-a",
        labels={"app": "checkout", "app.kubernetes.io/part-of": "shop", "pod-template-hash": "7d9f8b6c5"},
        containers=(("checkout", "registry.example/checkout:2.1"), ("envoy", "envoyproxy/envoy:v1.31")),
        owner=("ReplicaSet", "checkout-7d9f8b6c5"),
    )
    cache = cache_of(pod)

    found = cache.lookup("shop", "checkout-7d9f8b6c5-abcde", "checkout")

    status = pod["status"]["containerStatuses"][0]
    assert found == ContainerMetadata(
        {
            "pod_name": "checkout-7d9f8b6c5-abcde",
            "namespace_name": "shop",
            "pod_id": pod["metadata"]["uid"],
            "host": "node-a",
            "pod_ip": pod["status"]["podIP"],
            "labels": {"app": "checkout", "app_kubernetes_io/part-of": "shop", "pod-template-hash": "7d9f8b6c5"},
            "owner_kind": "Deployment",
            "owner_name": "checkout",
            "container_image": "registry.example/checkout:2.1",
            "container_image_id": status["imageID"],
        },
        excluded=False,
        parser=None,
    )
    assert cache.lookup("shop", "checkout-7d9f8b6c5-abcde", "envoy").fields["container_image"] == "envoyproxy/envoy:v1.31"
    assert cache.lookup("shop", "other", "checkout") is None
    assert len(cache) == 1


@pytest.mark.parametrize(
    "owner, labels, expected",
    [
        (("ReplicaSet", "web-5d8f9c7b6"), {"pod-template-hash": "5d8f9c7b6"}, ("Deployment", "web")),
        # A bare ReplicaSet (no Deployment's hash label, or a name that does not end in it).
        (("ReplicaSet", "web-5d8f9c7b6"), {}, ("ReplicaSet", "web-5d8f9c7b6")),
        (("ReplicaSet", "web"), {"pod-template-hash": "5d8f9c7b6"}, ("ReplicaSet", "web")),
        (("StatefulSet", "db"), {}, ("StatefulSet", "db")),
        (("DaemonSet", "falco"), {}, ("DaemonSet", "falco")),
        (("Job", "report-28901234"), {}, ("Job", "report-28901234")),
        (None, {}, None),
    ],
)
def test_owner_is_the_controller_with_replicasets_resolved_to_their_deployment(owner, labels, expected):
    cache = cache_of(make_pod("p", labels=labels, owner=owner))

    fields = cache.lookup("default", "p", "app").fields

    assert (fields.get("owner_kind"), fields.get("owner_name")) == (expected or (None, None))


def test_the_controller_reference_wins_over_other_owners():
    pod = make_pod("p", owner=("StatefulSet", "db"))
    pod["metadata"]["ownerReferences"].insert(0, {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "x"})

    fields = cache_of(pod).lookup("default", "p", "app").fields

    assert (fields["owner_kind"], fields["owner_name"]) == ("StatefulSet", "db")


def test_annotations_are_off_by_default_and_follow_allow_then_deny():
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
        "team.example/owner": "payments",
        "kubectl.kubernetes.io/last-applied-configuration": "{...}",
    }
    pod = make_pod("p", annotations=annotations)

    assert "annotations" not in cache_of(pod).lookup("default", "p", "app").fields
    allowed = cache_of(pod, annotations_allow=("prometheus.io/*", "team.example/*"),
                       annotations_deny=("prometheus.io/port",))
    assert allowed.lookup("default", "p", "app").fields["annotations"] == {
        "prometheus_io/scrape": "true",
        "team_example/owner": "payments",
    }
    everything = cache_of(pod, annotations_allow=("*",), annotations_deny=("kubectl.kubernetes.io/*",), de_dot=False)
    assert set(everything.lookup("default", "p", "app").fields["annotations"]) == {
        "prometheus.io/scrape", "prometheus.io/port", "team.example/owner",
    }


def test_labels_can_be_left_out_and_kept_with_their_dots():
    pod = make_pod("p", labels={"app.kubernetes.io/name": "web"})

    assert "labels" not in cache_of(pod, labels=False).lookup("default", "p", "app").fields
    assert cache_of(pod, de_dot=False).lookup("default", "p", "app").fields["labels"] == {"app.kubernetes.io/name": "web"}


@pytest.mark.parametrize(
    "annotations, container, excluded",
    [
        ({"shipper.io/exclude": "true"}, "app", True),
        ({"shipper.io/exclude": "True"}, "sidecar", True),
        ({"shipper.io/exclude": "false"}, "app", False),
        ({"shipper.io/exclude-sidecar": "true"}, "sidecar", True),
        ({"shipper.io/exclude-sidecar": "true"}, "app", False),
        ({"fluentbit.io/exclude": "true"}, "app", False),  # another shipper's annotation
        ({}, "app", False),
    ],
)
def test_an_annotation_excludes_a_pod_or_one_container(annotations, container, excluded):
    pod = make_pod("p", annotations=annotations, containers=(("app", "a:1"), ("sidecar", "s:1")))

    assert cache_of(pod).lookup("default", "p", container).excluded is excluded


def test_an_annotation_selects_a_parser_per_pod_or_container_and_an_unknown_one_is_counted():
    pod = make_pod(
        "p",
        annotations={"shipper.io/parser": "text", "shipper.io/parser-relay": "kubearmor", "shipper.io/parser-bad": "xml"},
        containers=(("app", "a:1"), ("relay", "r:1"), ("bad", "b:1")),
    )
    cache = cache_of(pod)

    assert [cache.lookup("default", "p", name).parser for name in ("app", "relay", "bad")] == ["text", "kubearmor", None]
    assert cache.counts.bad_controls == {"shipper.io/parser": 1}


def test_a_deleted_pod_stays_for_the_grace_period():
    clock = Clock()
    cache = cache_of(make_pod("p"), clock=clock, deleted_pod_grace_secs=60)
    deleted = make_pod("p")

    cache.apply_pod_event("DELETED", deleted)
    clock.now += 59
    cache.expire()
    assert cache.lookup("default", "p", "app") is not None
    clock.now += 1
    cache.apply_pod_event("ADDED", make_pod("q"))  # any write expires what is due

    assert cache.lookup("default", "p", "app") is None
    assert len(cache) == 1


def test_a_stale_delete_of_an_older_pod_with_the_same_name_is_ignored():
    clock = Clock()
    cache = cache_of(clock=clock, deleted_pod_grace_secs=0)
    old = make_pod("db-0")
    new = make_pod("db-0")
    new["metadata"]["uid"] = "recreated"
    cache.apply_pod_event("ADDED", new)

    cache.apply_pod_event("DELETED", old)

    assert cache.lookup("default", "db-0", "app").fields["pod_id"] == "recreated"


def test_a_relist_keeps_pods_it_no_longer_has_for_the_grace_period():
    clock = Clock()
    cache = cache_of(make_pod("a"), make_pod("b"), clock=clock, deleted_pod_grace_secs=60)

    cache.replace_pods([make_pod("b"), make_pod("c")])
    assert [cache.lookup("default", name, "app") is not None for name in "abc"] == [True, True, True]
    clock.now += 60
    cache.replace_pods([make_pod("b"), make_pod("c")])

    assert [cache.lookup("default", name, "app") is not None for name in "abc"] == [False, True, True]


def test_every_change_a_lookup_can_see_moves_the_version():
    cache = cache_of()
    versions = [cache.version]
    cache.apply_pod_event("ADDED", make_pod("p"))
    versions.append(cache.version)
    cache.apply_pod_event("MODIFIED", make_pod("p", labels={"tier": "front"}))
    versions.append(cache.version)
    cache.replace_namespaces([{"metadata": {"name": "default", "labels": {"env": "prod"}}}])
    versions.append(cache.version)

    assert versions == sorted(set(versions))


def test_namespace_labels_are_added_when_asked_for():
    cache = cache_of(make_pod("p"), namespace_labels=True)
    cache.replace_namespaces([{"metadata": {"name": "default", "labels": {"env.example/tier": "prod"}}}])

    assert cache.lookup("default", "p", "app").fields["namespace_labels"] == {"env_example/tier": "prod"}
    cache.apply_namespace_event("MODIFIED", {"metadata": {"name": "default", "labels": {"env": "dev"}}})
    assert cache.lookup("default", "p", "app").fields["namespace_labels"] == {"env": "dev"}
    cache.apply_namespace_event("DELETED", {"metadata": {"name": "default"}})
    assert "namespace_labels" not in cache.lookup("default", "p", "app").fields
    assert "namespace_labels" not in cache_of(make_pod("p")).lookup("default", "p", "app").fields


@pytest.mark.parametrize(
    "pod",
    [
        {},
        {"metadata": None},
        {"metadata": {"name": "p"}},
        {"metadata": {"name": 7, "namespace": "default"}},
        "not a pod",
    ],
)
def test_a_pod_without_name_or_namespace_is_a_counted_skip(pod):
    cache = cache_of()

    cache.replace_pods([pod, make_pod("ok")])
    cache.apply_pod_event("ADDED", pod)

    assert cache.counts.bad_objects == 2
    assert len(cache) == 1


def test_odd_field_types_in_a_pod_are_left_out_not_fatal():
    pod = make_pod("p", labels={"app": "web"})
    pod["metadata"]["labels"]["replicas"] = 3
    pod["metadata"]["ownerReferences"] = "not a list"
    pod["spec"]["containers"].append("not a container")
    pod["status"]["containerStatuses"] = None

    fields = cache_of(pod).lookup("default", "p", "app").fields

    assert fields["labels"] == {"app": "web"}
    assert "owner_kind" not in fields
    assert fields["container_image"] == "docker.io/library/nginx:1.27"
