"""The fake Kubernetes API works with the official client unchanged, and frames what it sends
as kube-apiserver does (PROTOCOLS.md §6)."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import kubernetes
import pytest
import urllib3
from kubernetes.client import ApiException, CoreV1Api
from kubernetes.watch import Watch

from tests.receivers.kube_api import FakeKubeApi, make_pod

NODE = "node-a"
ON_NODE = f"spec.nodeName={NODE}"
# (connect, read) seconds: a watch that never delivers fails the test instead of hanging it.
REQUEST_TIMEOUT = (2, 5)
UNAUTHORIZED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi(bookmark_interval=None) as server:
        yield server


@contextlib.contextmanager
def official_client(api: FakeKubeApi, token: str | None = None) -> Iterator[CoreV1Api]:
    api_client = kubernetes.config.new_client_from_config(config_file=str(api.write_kubeconfig(token=token)))
    try:
        yield CoreV1Api(api_client)
    finally:
        api_client.close()


@pytest.fixture
def core(api: FakeKubeApi) -> Iterator[CoreV1Api]:
    with official_client(api) as client:
        yield client


def http_client(api: FakeKubeApi, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token or api.token}"}
    return httpx.Client(base_url=api.url, verify=ssl.create_default_context(cafile=str(api.ca_path)), headers=headers)


def watch_requests(api: FakeKubeApi) -> list[dict[str, str]]:
    return [request.query for request in api.requests if request.query.get("watch")]


def node_watch(watch: Watch, core: CoreV1Api, **options) -> Iterator[dict]:
    """The watch the node cache runs: all namespaces, this node's pods."""
    return watch.stream(
        core.list_pod_for_all_namespaces, field_selector=ON_NODE, _request_timeout=REQUEST_TIMEOUT, **options
    )


def summary(event: dict) -> tuple[str, str, str]:
    return event["type"], event["object"].metadata.name, event["object"].metadata.resource_version


# Lists ---------------------------------------------------------------------------------------


def test_list_returns_the_pods_of_the_node_and_the_current_resource_version(api, core):
    api.add_pod(make_pod("web-0", node_name=NODE, owner=("ReplicaSet", "web-5d8f")))
    api.add_pod(make_pod("job-0", "batch", node_name=NODE))
    api.add_pod(make_pod("db-0", "data", node_name="node-b"))
    api.add_pod(make_pod("pending-0", node_name=None))

    pods = core.list_pod_for_all_namespaces(field_selector=ON_NODE)

    assert [(pod.metadata.namespace, pod.metadata.name) for pod in pods.items] == [
        ("batch", "job-0"),
        ("default", "web-0"),
    ]
    assert pods.metadata.resource_version == api.resource_version
    web = pods.items[1]
    assert web.metadata.owner_references[0].kind == "ReplicaSet"
    assert web.status.container_statuses[0].container_id.startswith("containerd://")
    assert web.status.container_statuses[0].image_id.startswith("docker.io/library/nginx@sha256:")


def test_namespaced_list_honours_label_equality_and_existence(api, core):
    api.add_pod(make_pod("web-0", labels={"app": "web", "tier": "front"}))
    api.add_pod(make_pod("web-1", labels={"app": "web"}))
    api.add_pod(make_pod("cache-0", labels={"app": "cache", "tier": "front"}))
    api.add_pod(make_pod("web-2", "other", labels={"app": "web"}))

    def names(label_selector: str) -> list[str]:
        pods = core.list_namespaced_pod("default", label_selector=label_selector)
        return [pod.metadata.name for pod in pods.items]

    assert names("app=web") == ["web-0", "web-1"]
    assert names("app==web,tier") == ["web-0"]
    assert names("app!=web") == ["cache-0"]
    assert names("!tier") == ["web-1"]


def test_pages_of_a_list_are_one_snapshot_taken_by_the_first_page(api, core):
    for index in range(5):
        api.add_pod(make_pod(f"web-{index}", node_name=NODE))
    api.add_pod(make_pod("db-0", node_name="node-b"))

    first = core.list_pod_for_all_namespaces(field_selector=ON_NODE, limit=2)
    api.delete_pod("default", "web-3")
    api.add_pod(make_pod("web-9", node_name=NODE))
    second = core.list_pod_for_all_namespaces(field_selector=ON_NODE, limit=2, _continue=first.metadata._continue)
    third = core.list_pod_for_all_namespaces(field_selector=ON_NODE, limit=2, _continue=second.metadata._continue)

    pages = [[pod.metadata.name for pod in page.items] for page in (first, second, third)]
    assert pages == [["web-0", "web-1"], ["web-2", "web-3"], ["web-4"]]
    assert {page.metadata.resource_version for page in (first, second, third)} == {first.metadata.resource_version}
    assert third.metadata._continue is None
    assert first.metadata.remaining_item_count is None  # etcd cannot count what a selector filters


def test_an_unfiltered_page_counts_the_remaining_items(api, core):
    for index in range(3):
        api.add_pod(make_pod(f"web-{index}"))

    page = core.list_pod_for_all_namespaces(limit=1)

    assert page.metadata.remaining_item_count == 2


def test_an_expired_continue_token_gets_410_and_a_token_to_continue_inconsistently(core):
    with FakeKubeApi(bookmark_interval=None, history_size=2) as api, official_client(api) as core:
        for index in range(3):
            api.add_pod(make_pod(f"web-{index}"))
        first = core.list_namespaced_pod("default", limit=1)
        for index in range(3, 6):
            api.add_pod(make_pod(f"web-{index}"))

        with pytest.raises(ApiException) as expired:
            core.list_namespaced_pod("default", limit=1, _continue=first.metadata._continue)
        status = json.loads(expired.value.body)
        rest = core.list_namespaced_pod("default", _continue=status["metadata"]["continue"])

    assert expired.value.status == 410
    assert (status["reason"], status["code"]) == ("Expired", 410)
    assert status["message"].startswith("The provided continue parameter is too old")
    assert [pod.metadata.name for pod in rest.items] == ["web-1", "web-2", "web-3", "web-4", "web-5"]
    assert rest.metadata.resource_version == api.resource_version


def test_get_returns_one_pod_or_a_not_found_status(api, core):
    api.add_pod(make_pod("web-0"))

    pod = core.read_namespaced_pod("web-0", "default")
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod("web-1", "default")

    assert (pod.kind, pod.metadata.name) == ("Pod", "web-0")
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["details"] == {"name": "web-1", "kind": "pods"}


# Watches -------------------------------------------------------------------------------------


def test_watch_delivers_changes_in_order_as_the_field_selector_sees_them(api, core):
    start = core.list_pod_for_all_namespaces(field_selector=ON_NODE).metadata.resource_version
    added = api.add_pod(make_pod("web-0", node_name=NODE))
    api.add_pod(make_pod("db-0", node_name="node-b"))
    api.add_pod(make_pod("late-0", node_name=None))
    modified = api.modify_pod("default", "web-0", {"metadata": {"labels": {"tier": "front"}}})
    bound = api.modify_pod("default", "late-0", {"spec": {"nodeName": NODE}})
    deleted = api.delete_pod("default", "web-0")

    watch = Watch()
    events = []
    for event in node_watch(watch, core, resource_version=start):
        events.append(event)
        assert api.send_bookmark() == 0  # this watch did not allow bookmarks
        if len(events) == 4:
            watch.stop()

    assert [summary(event) for event in events] == [
        ("ADDED", "web-0", added["metadata"]["resourceVersion"]),
        ("MODIFIED", "web-0", modified["metadata"]["resourceVersion"]),
        ("ADDED", "late-0", bound["metadata"]["resourceVersion"]),  # bound to the node: new to this watch
        ("DELETED", "web-0", deleted["metadata"]["resourceVersion"]),
    ]
    assert events[3]["object"].metadata.labels == {"tier": "front"}
    assert watch.resource_version == deleted["metadata"]["resourceVersion"]


def test_a_pod_that_stops_matching_a_label_selector_leaves_as_deleted(api, core):
    start = api.resource_version
    api.add_pod(make_pod("web-0", labels={"tier": "front"}))
    left = api.modify_pod("default", "web-0", {"metadata": {"labels": {"tier": "back"}}})

    watch = Watch()
    events = []
    for event in watch.stream(
        core.list_namespaced_pod, "default", label_selector="tier=front", resource_version=start,
        _request_timeout=REQUEST_TIMEOUT,
    ):
        events.append(event)
        if len(events) == 2:
            watch.stop()

    assert [summary(event) for event in events][1] == ("DELETED", "web-0", left["metadata"]["resourceVersion"])
    assert events[1]["object"].metadata.labels == {"tier": "front"}  # the content it last matched with


def test_watch_without_a_resource_version_starts_with_the_current_pods(api, core):
    api.add_pod(make_pod("web-0", node_name=NODE))
    api.add_pod(make_pod("web-1", node_name=NODE))
    api.modify_pod("default", "web-0", {"metadata": {"labels": {"tier": "front"}}})

    watch = Watch()
    events = []
    for event in node_watch(watch, core):
        events.append(event)
        if len(events) == 1:
            api.add_pod(make_pod("web-2", node_name=NODE))
        if len(events) == 3:
            watch.stop()

    assert [(event["type"], event["object"].metadata.name) for event in events] == [
        ("ADDED", "web-0"),
        ("ADDED", "web-1"),
        ("ADDED", "web-2"),
    ]


def test_a_bookmark_reaches_the_client_as_a_raw_dict_and_moves_its_resource_version(api, core):
    start = api.resource_version
    api.add_pod(make_pod("web-0", node_name=NODE))

    watch = Watch()
    events = []
    for event in node_watch(watch, core, resource_version=start, allow_watch_bookmarks=True):
        events.append(event)
        if event["type"] == "ADDED":
            api.add_pod(make_pod("db-0", node_name="node-b"))  # the RV moves on, unseen by this watch
            assert api.send_bookmark() == 1
        else:
            watch.stop()

    assert [event["type"] for event in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"] == {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": api.resource_version},
        "spec": {"containers": None},
        "status": {},
    }
    assert watch.resource_version == api.resource_version


def test_bookmarks_come_periodically_to_watches_that_allow_them():
    with FakeKubeApi(bookmark_interval=0.2) as api, http_client(api) as client:
        api.add_pod(make_pod("web-0", node_name=NODE))
        query = {
            "watch": "1",
            "resourceVersion": api.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "3",
        }
        started = time.monotonic()
        with client.stream("GET", "/api/v1/pods", params=query) as response:
            lines = response.iter_lines()
            bookmarks = [json.loads(next(lines)) for _ in range(2)]
        elapsed = time.monotonic() - started

    assert [event["type"] for event in bookmarks] == ["BOOKMARK", "BOOKMARK"]
    assert {event["object"]["metadata"]["resourceVersion"] for event in bookmarks} == {api.resource_version}
    assert 0.35 < elapsed < 1.5


def test_client_rewatches_from_its_last_resource_version_when_the_server_ends_a_watch(api, core):
    start = api.resource_version
    first = api.add_pod(make_pod("web-0", node_name=NODE))

    watch = Watch()
    events = []
    for event in node_watch(watch, core, resource_version=start):
        events.append(event)
        if len(events) == 1:
            assert api.drop_watches() == 1
            api.add_pod(make_pod("web-1", node_name=NODE))
        else:
            watch.stop()

    assert [event["object"].metadata.name for event in events] == ["web-0", "web-1"]
    assert [query["resourceVersion"] for query in watch_requests(api)] == [start, first["metadata"]["resourceVersion"]]


def test_a_cut_watch_raises_in_the_client_which_can_resume_from_its_last_resource_version(api, core):
    start = api.resource_version
    first = api.add_pod(make_pod("web-0", node_name=NODE))

    watch = Watch()
    events = []
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for event in node_watch(watch, core, resource_version=start):
            events.append(event)
            assert api.drop_watches(abort=True) == 1
            api.add_pod(make_pod("web-1", node_name=NODE))
    for event in node_watch(watch, core, resource_version=watch.resource_version):
        events.append(event)
        watch.stop()

    assert [event["object"].metadata.name for event in events] == ["web-0", "web-1"]
    assert watch_requests(api)[1]["resourceVersion"] == first["metadata"]["resourceVersion"]


def test_a_watch_from_an_expired_resource_version_is_retried_once_then_raises_410():
    with FakeKubeApi(bookmark_interval=None, history_size=2) as api, official_client(api) as core:
        stale = api.resource_version
        for index in range(3):
            api.add_pod(make_pod(f"web-{index}", node_name=NODE))

        with pytest.raises(ApiException) as expired:
            for _ in node_watch(Watch(), core, resource_version=stale):
                pytest.fail("an expired watch delivered an event")

    assert expired.value.status == 410
    assert expired.value.reason.startswith(f"Expired: too old resource version: {stale} (")
    assert [query["resourceVersion"] for query in watch_requests(api)] == [stale, stale]


def test_with_timeout_seconds_the_first_410_raises(api, core):
    api.expire_next_watch()

    with pytest.raises(ApiException) as expired:
        for _ in Watch().stream(
            core.list_pod_for_all_namespaces, resource_version=api.resource_version, timeout_seconds=5,
            _request_timeout=REQUEST_TIMEOUT,
        ):
            pytest.fail("an expired watch delivered an event")

    assert expired.value.status == 410
    assert len(watch_requests(api)) == 1


def test_one_injected_expiry_is_absorbed_by_the_clients_silent_retry(api, core):
    start = api.resource_version
    api.add_pod(make_pod("web-0", node_name=NODE))
    api.expire_next_watch()

    watch = Watch()
    events = []
    for event in node_watch(watch, core, resource_version=start):
        events.append(event)
        watch.stop()

    assert [event["object"].metadata.name for event in events] == ["web-0"]
    assert [query["resourceVersion"] for query in watch_requests(api)] == [start, start]


def test_a_watch_from_a_resource_version_not_reached_yet_fails_with_504():
    with FakeKubeApi(bookmark_interval=None, resource_version_wait=0.1) as api, official_client(api) as core:
        ahead = str(int(api.resource_version) + 5)

        with pytest.raises(ApiException) as too_large:
            for _ in Watch().stream(
                core.list_pod_for_all_namespaces, resource_version=ahead, _request_timeout=REQUEST_TIMEOUT
            ):
                pytest.fail("a watch from the future delivered an event")

    assert too_large.value.status == 504
    assert "Too large resource version" in too_large.value.reason


def test_watch_ends_cleanly_after_timeout_seconds(api):
    with http_client(api) as client:
        started = time.monotonic()
        query = {"watch": "true", "resourceVersion": api.resource_version, "timeoutSeconds": "1"}
        response = client.get("/api/v1/pods", params=query)
        elapsed = time.monotonic() - started

    assert (response.status_code, response.content) == (200, b"")
    assert 0.9 < elapsed < 2.0


# Authentication and TLS ----------------------------------------------------------------------


def test_requests_without_a_token_or_with_a_wrong_one_get_401(api):
    configuration = kubernetes.client.Configuration(host=api.url)
    configuration.ssl_ca_cert = str(api.ca_path)
    with kubernetes.client.ApiClient(configuration) as anonymous, pytest.raises(ApiException) as without_token:
        CoreV1Api(anonymous).list_pod_for_all_namespaces()
    with official_client(api, token="wrong") as core, pytest.raises(ApiException) as wrong_token:
        core.list_pod_for_all_namespaces()
    with httpx.Client(verify=ssl.create_default_context(cafile=str(api.ca_path))) as client:
        raw = client.get(f"{api.url}/api/v1/pods", params={"watch": "1"})

    for error in (without_token.value, wrong_token.value):
        assert (error.status, json.loads(error.body)) == (401, UNAUTHORIZED)
    assert (raw.status_code, raw.headers["content-type"], raw.json()) == (401, "application/json", UNAUTHORIZED)
    assert [request.authorized for request in api.requests] == [False, False, False]


def test_the_server_certificate_is_trusted_only_through_the_test_ca(api):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{api.url}/api/v1/pods")
    assert "BEGIN CERTIFICATE" in api.ca_pem.decode()


# Wire format ---------------------------------------------------------------------------------


def read_chunked_watch(api: FakeKubeApi, target: str, until_lines: int, then: Callable[[], None]) -> list[bytes]:
    """Send a watch over a raw TLS socket and return the body's chunks as they came.

    Calls `then()` once the first `until_lines` lines have arrived; reads until the last chunk.
    """
    context = ssl.create_default_context(cafile=str(api.ca_path))
    port = int(api.url.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api.token}\r\n\r\n".encode())
        body = tls.makefile("rb")
        head = [line for line in iter(body.readline, b"\r\n")]
        assert head[0] == b"HTTP/1.1 200 OK\r\n"
        assert b"Transfer-Encoding: chunked\r\n" in head
        chunks: list[bytes] = []
        while size := int(body.readline(), 16):
            chunks.append(body.read(size))
            assert body.read(2) == b"\r\n"
            if b"".join(chunks).count(b"\n") == until_lines:
                then()
        assert body.readline() == b"\r\n"
        return chunks


def test_watch_events_are_lines_in_chunks_cut_as_gos_http_server_cuts_them(api):
    start = api.resource_version
    for index in range(6):
        api.add_pod(make_pod(f"web-{index}", node_name=NODE))

    def one_more_event_then_the_end() -> None:
        api.add_pod(make_pod("late-0", node_name=NODE))
        api.drop_watches()

    chunks = read_chunked_watch(
        api, f"/api/v1/pods?watch=1&resourceVersion={start}&timeoutSeconds=5", 6, one_more_event_then_the_end
    )

    lines = b"".join(chunks).splitlines(keepends=True)
    names = [json.loads(line)["object"]["metadata"]["name"] for line in lines]
    assert names == [f"web-{index}" for index in range(6)] + ["late-0"]
    *burst, live = chunks
    assert [len(chunk) for chunk in burst[:-1]] == [2048] * (len(burst) - 1)  # a burst fills 2 KiB chunks
    assert any(not chunk.endswith(b"\n") for chunk in burst)  # so events straddle chunks
    assert live == lines[-1]  # a lone event is one chunk holding one line


def test_bodies_are_compact_json_as_go_encodes_it(api):
    api.add_pod(make_pod("web-0", node_name=NODE, annotations={"note": "<b>&"}))
    with http_client(api) as client:
        listed = client.get("/api/v1/pods", params={"fieldSelector": ON_NODE})
        with client.stream("GET", "/api/v1/pods", params={"watch": "1", "resourceVersion": "0"}) as watched:
            watch_headers = watched.headers
            line = next(watched.iter_lines())

    body = listed.json()
    assert list(body) == ["kind", "apiVersion", "metadata", "items"]
    assert (body["kind"], body["apiVersion"]) == ("PodList", "v1")
    assert body["metadata"] == {"resourceVersion": api.resource_version}
    assert "kind" not in body["items"][0] and "apiVersion" not in body["items"][0]  # list items carry no type
    assert b'"note":"\\u003cb\\u003e\\u0026"' in listed.content
    assert listed.content.endswith(b"}\n")
    assert (watch_headers["content-type"], watch_headers["transfer-encoding"]) == ("application/json", "chunked")
    event = json.loads(line)
    assert list(event) == ["type", "object"]
    assert (event["type"], event["object"]["kind"], event["object"]["apiVersion"]) == ("ADDED", "Pod", "v1")


# Faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "reason"), [(500, "InternalError"), (503, "ServiceUnavailable")])
def test_an_injected_server_error_fails_the_next_list_only(api, core, status, reason):
    api.fail_next_request(status)

    with pytest.raises(ApiException) as failed:
        core.list_pod_for_all_namespaces()
    recovered = core.list_pod_for_all_namespaces()

    assert failed.value.status == status
    assert json.loads(failed.value.body)["reason"] == reason
    assert recovered.metadata.resource_version == api.resource_version


def test_an_injected_429_is_plain_text_with_retry_after_as_priority_and_fairness_sends_it(api):
    api.fail_next_request(429, retry_after=7)
    api.fail_next_request(503, retry_after=3)
    with http_client(api) as client:
        throttled = client.get("/api/v1/pods")
        unavailable = client.get("/api/v1/pods")
        recovered = client.get("/api/v1/pods")

    assert (throttled.status_code, throttled.headers["retry-after"]) == (429, "7")
    assert throttled.headers["content-type"] == "text/plain; charset=utf-8"
    assert throttled.content == b"Too many requests, please try again later.\n"
    assert (unavailable.status_code, unavailable.headers["retry-after"]) == (503, "3")
    assert unavailable.json()["reason"] == "ServiceUnavailable"
    assert recovered.status_code == 200


def test_the_official_client_waits_out_the_retry_after_of_a_429(api, core):
    api.fail_next_request(429)  # Retry-After: 1

    core.list_pod_for_all_namespaces()  # urllib3's default Retry honours Retry-After on a GET

    first, second = api.requests
    assert second.received_at - first.received_at >= 1.0


def test_a_stalled_list_times_out_in_the_client_and_its_retry_is_answered(api, core):
    api.add_pod(make_pod("web-0"))
    api.stall_next_request(3.0, verb="list")

    pods = core.list_pod_for_all_namespaces(_request_timeout=0.3)  # urllib3 retries the read timeout

    assert [pod.metadata.name for pod in pods.items] == ["web-0"]
    first, second = api.requests
    assert second.received_at - first.received_at >= 0.25  # the client's 0.3 s also covered connecting


def test_forgetting_history_expires_every_resource_version_handed_out(api, core):
    api.add_pod(make_pod("web-0"))
    api.add_pod(make_pod("web-1"))
    page = core.list_pod_for_all_namespaces(limit=1)
    api.add_pod(make_pod("web-2"))
    api.forget_history()

    with pytest.raises(ApiException) as watch_expired:
        for _ in Watch().stream(
            core.list_pod_for_all_namespaces, resource_version=page.metadata.resource_version, timeout_seconds=5,
            _request_timeout=REQUEST_TIMEOUT,
        ):
            pytest.fail("an expired watch delivered an event")
    with pytest.raises(ApiException) as continue_expired:
        core.list_pod_for_all_namespaces(limit=1, _continue=page.metadata._continue)

    assert (watch_expired.value.status, continue_expired.value.status) == (410, 410)


def test_wait_for_watches_counts_open_watches_per_resource(api):
    with http_client(api) as client, client.stream("GET", "/api/v1/namespaces", params={"watch": "1"}) as response:
        api.wait_for_watches(1, resource="namespaces", timeout=1)
        with pytest.raises(TimeoutError):
            api.wait_for_watches(1, timeout=0.1)
        assert response.status_code == 200


def test_faults_apply_to_their_verb_and_resource_only(api, core):
    api.fail_next_request(503, verb="watch")
    api.fail_next_request(503, resource="namespaces")

    core.list_pod_for_all_namespaces()
    with pytest.raises(ApiException) as namespaces_failed:
        core.list_namespace()
    with pytest.raises(ApiException) as watch_failed:
        for _ in Watch().stream(core.list_pod_for_all_namespaces, timeout_seconds=1, _request_timeout=REQUEST_TIMEOUT):
            pytest.fail("a failed watch delivered an event")

    assert (namespaces_failed.value.status, watch_failed.value.status) == (503, 503)


# Namespaces and the test API -------------------------------------------------------------------


def test_namespaces_are_listed_and_watched_with_their_labels(api, core):
    api.add_namespace("shop", labels={"team": "checkout"})
    api.add_pod(make_pod("web-0", "web"))  # creates its namespace too
    start = core.list_namespace().metadata.resource_version
    relabelled = api.modify_namespace("shop", {"metadata": {"labels": {"team": "payments"}}})

    namespaces = core.list_namespace(label_selector="team")
    watch = Watch()
    for event in watch.stream(core.list_namespace, resource_version=start, _request_timeout=REQUEST_TIMEOUT):
        watch.stop()

    assert [namespace.metadata.name for namespace in namespaces.items] == ["shop"]
    assert summary(event) == ("MODIFIED", "shop", relabelled["metadata"]["resourceVersion"])
    assert event["object"].metadata.labels == {"team": "payments", "kubernetes.io/metadata.name": "shop"}
    assert core.read_namespace("web").status.phase == "Active"


def test_the_test_api_keeps_the_rules_of_a_real_server(api):
    pod = api.add_pod(make_pod("web-0", node_name=NODE))

    unchanged = api.modify_pod("default", "web-0", {"metadata": {"labels": {}}})
    with pytest.raises(ValueError, match="nodeName"):
        api.modify_pod("default", "web-0", {"spec": {"nodeName": "node-b"}})
    with pytest.raises(ValueError, match="already exists"):
        api.add_pod(make_pod("web-0"))
    with pytest.raises(ValueError, match="still has pods"):
        api.delete_namespace("default")

    assert unchanged == pod  # a no-op update takes no resource version
    assert api.resource_version == pod["metadata"]["resourceVersion"]
    assert api.pod("default", "web-0") == pod


def test_unknown_paths_and_methods_get_the_statuses_of_the_real_server(api):
    with http_client(api) as client:
        unknown = client.get("/api/v1/configmaps")
        posted = client.post("/api/v1/namespaces/default/pods", json=make_pod("web-0"))

    assert (unknown.status_code, unknown.json()["reason"]) == (404, "NotFound")
    assert (posted.status_code, posted.json()["reason"]) == (405, "MethodNotAllowed")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fieldSelector": "spec.hostname=x"}, "field label not supported: spec.hostname"),
        ({"labelSelector": "app in (web)"}, "set-based label selectors"),
        ({"resourceVersionMatch": "NotOlderThan"}, "query parameter(s): resourceVersionMatch"),
        ({"watch": "yes"}, "invalid value for watch"),
        ({"continue": "bm90LWEtdG9rZW4"}, "invalid continue token"),
    ],
)
def test_what_the_fake_does_not_implement_is_refused_not_ignored(api, params, message):
    with http_client(api) as client:
        response = client.get("/api/v1/pods", params=params)

    assert (response.status_code, response.json()["reason"]) == (400, "BadRequest")
    assert message in response.json()["message"]


# As a program ----------------------------------------------------------------------------------


def test_the_program_serves_a_kubectl_pod_list_until_sigterm(tmp_path):
    pod_list = {
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": [{"apiVersion": "v1", "kind": "Pod", **make_pod("web-0", "shop", node_name=NODE)}],
    }
    pods_file = tmp_path / "pods.json"
    pods_file.write_text(json.dumps(pod_list))
    program = subprocess.Popen(
        [sys.executable, "-m", "tests.receivers.kube_api", "--port", "0", "--pods", str(pods_file)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        printed = dict(program.stdout.readline().rstrip("\n").split(": ", 1) for _ in range(4))
        client = kubernetes.config.new_client_from_config(config_file=printed["kubeconfig"])
        with client:
            pods = CoreV1Api(client).list_pod_for_all_namespaces(field_selector=ON_NODE)
        with httpx.Client(verify=ssl.create_default_context(cafile=printed["ca"])) as raw:
            authorization = {"Authorization": f"Bearer {printed['token']}"}
            listed = raw.get(f"{printed['url']}/api/v1/namespaces", headers=authorization)
    finally:
        program.send_signal(signal.SIGTERM)
        returncode = program.wait(timeout=5)

    assert [(pod.metadata.namespace, pod.metadata.name) for pod in pods.items] == [("shop", "web-0")]
    assert [item["metadata"]["name"] for item in listed.json()["items"]] == ["shop"]
    assert returncode == 0
