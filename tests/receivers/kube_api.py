"""A strict fake Kubernetes API server for pods and namespaces: list, get and watch.

Test equipment for the per-node pod metadata cache. It speaks kube-apiserver's wire protocol
closely enough that the official Python client works against it unchanged (PROTOCOLS.md §6),
and it is strict where a lenient fake would hide bugs:

- HTTPS only, with a private CA, and bearer-token authentication (401 Status otherwise).
- One global, monotonically increasing resource version (RV), as etcd's revision: a pod watch
  sees gaps where namespaces changed. RVs are served as strings.
- Watches filter the way the watch cache does: a pod that starts matching the selector arrives
  as ADDED, one that stops matching leaves as DELETED (with the RV of the change).
- A bounded event history: a watch from an RV older than it gets HTTP 200 and then an ERROR
  event carrying the 410 Expired Status; a `continue` token older than it gets HTTP 410.
- Watch bodies are chunked the way Go's net/http chunks them, so a burst of events may share a
  chunk or split across chunks; only the line framing is guaranteed, as with the real server.
- Query parameters, field labels and selector forms it does not implement are refused with 400
  instead of being silently ignored.

Use from tests::

    with FakeKubeApi() as api:
        api.add_pod(make_pod("web-0", node_name="node-a"))
        client = kubernetes.config.new_client_from_config(str(api.write_kubeconfig()))

Run as a program (prints the URL, CA path, token and a kubeconfig path, serves until SIGTERM)::

    python -m tests.receivers.kube_api --port 0 --pods pods.json
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import dataclasses
import hashlib
import http.server
import json
import random
import secrets
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import trustme
import yaml

# Any start will do (RVs are opaque); a large one keeps RVs from looking like list indexes.
_FIRST_RESOURCE_VERSION = 1000
# kube-apiserver --min-request-timeout: a watch without timeoutSeconds lasts 1x to 2x this.
_MIN_REQUEST_TIMEOUT_SECONDS = 1800
# The watch cache sends a last bookmark this long before a watch's deadline.
_BOOKMARK_BEFORE_DEADLINE_SECONDS = 2.0
# net/http buffers this much of a response body before it writes a chunk.
_GO_CHUNK_BUFFER_BYTES = 2048
_NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

_TRUE_WORDS = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # Go's strconv.ParseBool
_FALSE_WORDS = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_COLLECTION_PARAMETERS = frozenset(
    {
        "watch",
        "resourceVersion",
        "timeoutSeconds",
        "limit",
        "continue",
        "fieldSelector",
        "labelSelector",
        "allowWatchBookmarks",
    }
)
_OBJECT_PARAMETERS = frozenset({"resourceVersion"})
# Go's encoding/json escapes these even inside strings; consumers must decode, not grep.
_GO_JSON_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_OWNER_API_VERSIONS = {
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "Node": "v1",
}
# The messages kube-apiserver's etcd3 storage uses for a compacted continue token.
_INCONSISTENT_CONTINUE_MESSAGE = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter, or use the continue token in "
    "this response to retrieve the remainder of the results. Continuing with the provided "
    "token results in an inconsistent list - objects that were created, modified, or deleted "
    "between the time the first chunk was returned and now may show up in the list."
)
_TOO_MANY_REQUESTS_BODY = b"Too many requests, please try again later.\n"


@dataclasses.dataclass(frozen=True)
class _Kind:
    resource: str
    kind: str
    namespaced: bool
    field_labels: frozenset[str]
    # What the zero value of the Go type serializes to besides metadata; bookmarks carry it.
    empty_body: dict


_PODS = _Kind(
    "pods",
    "Pod",
    True,
    frozenset(
        {
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    {"spec": {"containers": None}, "status": {}},
)
_NAMESPACES = _Kind(
    "namespaces",
    "Namespace",
    False,
    frozenset({"metadata.name", "status.phase"}),
    {"spec": {}, "status": {}},
)
_KINDS = {kind.resource: kind for kind in (_PODS, _NAMESPACES)}


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it, authorized or not."""

    method: str
    path: str
    query: dict[str, str]
    authorized: bool
    received_at: float  # time.monotonic()


def make_pod(
    name: str,
    namespace: str = "default",
    *,
    node_name: str | None = "node-1",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: tuple[tuple[str, str], ...] = (("app", "docker.io/library/nginx:1.27"),),
    owner: tuple[str, str] | None = None,
) -> dict:
    """A pod as kube-apiserver stores it; ids are derived from the names so tests can predict them.

    `containers` holds (name, image) pairs and `owner` a (kind, name) controller reference.
    A pod without a node is Pending and unscheduled; bind it later by patching spec.nodeName.
    """
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    metadata: dict = {
        "name": name,
        "namespace": namespace,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pods/{namespace}/{name}")),
        "labels": dict(labels or {}),
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    if owner is not None:
        owner_kind, owner_name = owner
        metadata["ownerReferences"] = [
            {
                "apiVersion": _OWNER_API_VERSIONS[owner_kind],
                "kind": owner_kind,
                "name": owner_name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{owner_kind}/{namespace}/{owner_name}")),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    spec: dict = {
        "containers": [
            {"name": container, "image": image, "imagePullPolicy": "IfNotPresent"}
            for container, image in containers
        ],
        "restartPolicy": "Always",
        "serviceAccountName": "default",
        "schedulerName": "default-scheduler",
    }
    if node_name is None:
        return {"metadata": metadata, "spec": spec, "status": {"phase": "Pending"}}
    spec["nodeName"] = node_name
    pod_ip = f"10.244.{digest[0]}.{digest[1]}"
    started_at = "2026-01-01T00:00:00Z"
    status = {
        "phase": "Running",
        "hostIP": f"192.168.0.{digest[2]}",
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": started_at,
        "containerStatuses": [
            {
                "name": container,
                "state": {"running": {"startedAt": started_at}},
                "ready": True,
                "restartCount": 0,
                "image": image,
                "imageID": f"{_image_repository(image)}@sha256:{hashlib.sha256(image.encode()).hexdigest()}",
                "containerID": "containerd://"
                + hashlib.sha256(f"{namespace}/{name}/{container}".encode()).hexdigest(),
                "started": True,
            }
            for container, image in containers
        ],
    }
    return {"metadata": metadata, "spec": spec, "status": status}


def _image_repository(image: str) -> str:
    repository, colon, tag = image.rpartition(":")
    return repository if colon and "/" not in tag else image


class FakeKubeApi:
    """A strict kube-apiserver stand-in for pods and namespaces; see the module docstring.

    State changes go through add_/modify_/delete_ methods, each taking the next resource version
    and producing the watch event the real server would. Faults are queued with fail_next_request,
    expire_next_watch and stall_next_request and consumed by the next matching request; open
    watches are driven with drop_watches and send_bookmark.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        token: str | None = None,
        history_size: int = 1000,
        bookmark_interval: float | None = 60.0,
        resource_version_wait: float = 3.0,
    ) -> None:
        """`history_size` events per resource stay watchable; older RVs are expired.

        `bookmark_interval` is how often a watch that allows bookmarks gets one (the watch
        cache sends about one a minute, plus one just before the watch's deadline); None sends
        bookmarks only when a test calls send_bookmark. `resource_version_wait` is how long a
        request for an RV the server has not reached yet waits for it (the watch cache waits 3 s)
        before it fails with "Too large resource version".
        """
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self.token = token or secrets.token_urlsafe(24)
        self._port = port
        self._history_size = history_size
        self._bookmark_interval = bookmark_interval
        self._resource_version_wait = resource_version_wait
        self._lock = threading.Condition()
        self._resource_version = _FIRST_RESOURCE_VERSION
        self._states = {resource: _ResourceState(_FIRST_RESOURCE_VERSION) for resource in _KINDS}
        self._stalls: list[_Fault] = []
        self._rejections: list[_Fault] = []
        self._expiries: list[_Fault] = []
        self._requests: list[RecordedRequest] = []
        self._closing = False
        self._httpd: _TLSServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._workdir: Path | None = None

    # Lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> FakeKubeApi:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1", "localhost")
        self._workdir = Path(tempfile.mkdtemp(prefix="fake-kube-api-"))
        ca.cert_pem.write_to_path(str(self.ca_path))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_cert.configure_cert(context)
        self._httpd = _TLSServer(("127.0.0.1", self._port), context, self)
        self._serve_thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() waits for the accept loop
            name="fake-kube-api",
            daemon=True,
        )
        self._serve_thread.start()

    def stop(self) -> None:
        """End open watches cleanly, as a shutting-down apiserver does, then close everything."""
        if self._httpd is None:
            return
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            self._lock.wait_for(lambda: not self._open_watch_count(), timeout=1.0)
        self._httpd.shutdown()
        self._httpd.cut_connections()
        self._httpd.server_close()
        self._serve_thread.join()
        shutil.rmtree(self._workdir, ignore_errors=True)
        self._httpd = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def ca_path(self) -> Path:
        return self._workdir / "ca.pem"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    def write_kubeconfig(self, path: Path | str | None = None, *, token: str | None = None) -> Path:
        """Write a kubeconfig for this server (CA file and bearer token) and return its path.

        `token` replaces the server's own token, to test a client holding a wrong one.
        """
        target = Path(path) if path is not None else self._workdir / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "fake", "cluster": {"server": self.url, "certificate-authority": str(self.ca_path)}}
            ],
            "users": [{"name": "fake", "user": {"token": token if token is not None else self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target

    # State -----------------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The newest RV the server has handed out, as the server would serve it."""
        with self._lock:
            return str(self._resource_version)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def pod(self, namespace: str, name: str) -> dict:
        return self._get(_PODS, f"{namespace}/{name}")

    def add_pod(self, pod: dict) -> dict:
        """Create a pod (creating its namespace first if needed) and return it as stored."""
        namespace = pod["metadata"]["namespace"]
        with self._lock:
            if namespace not in self._states[_NAMESPACES.resource].objects:
                self._create(_NAMESPACES, _namespace_object(namespace, None, None))
            return self._create(_PODS, pod)

    def modify_pod(self, namespace: str, name: str, patch: dict) -> dict:
        """Apply a JSON merge patch (RFC 7386, as `kubectl patch --type=merge`) to a pod.

        A patch that changes nothing takes no RV and sends no event, as on a real server.
        """
        with self._lock:
            return self._modify(_PODS, f"{namespace}/{name}", patch)

    def delete_pod(self, namespace: str, name: str) -> dict:
        """Remove a pod at once and return its last state, carrying the deletion's RV."""
        with self._lock:
            return self._delete(_PODS, f"{namespace}/{name}")

    def add_namespace(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict:
        with self._lock:
            return self._create(_NAMESPACES, _namespace_object(name, labels, annotations))

    def modify_namespace(self, name: str, patch: dict) -> dict:
        with self._lock:
            return self._modify(_NAMESPACES, name, patch)

    def delete_namespace(self, name: str) -> dict:
        with self._lock:
            if any(key.startswith(f"{name}/") for key in self._states[_PODS.resource].objects):
                raise ValueError(f"namespace {name!r} still has pods; delete them first")
            return self._delete(_NAMESPACES, name)

    def forget_history(self) -> None:
        """Make every RV handed out so far too old, for watches and continue tokens alike."""
        with self._lock:
            for state in self._states.values():
                state.history.clear()
                state.oldest_watchable = self._resource_version

    # Watches ---------------------------------------------------------------------------------

    def wait_for_watches(self, count: int, *, resource: str = "pods", timeout: float = 5.0) -> None:
        """Block until at least `count` watches of `resource` are open."""
        state = self._states[resource]
        with self._lock:
            if not self._lock.wait_for(lambda: len(state.watches) >= count, timeout):
                raise TimeoutError(f"{len(state.watches)} {resource} watches open, wanted {count}")

    def send_bookmark(self, *, resource: str = "pods") -> int:
        """Send a BOOKMARK at the current RV to every open watch that allows bookmarks.

        Returns how many watches it went to.
        """
        with self._lock:
            line = _bookmark_line(_KINDS[resource], self._resource_version)
            streams = [stream for stream in self._states[resource].watches if stream.bookmarks]
            for stream in streams:
                stream.pending.append(line)
            self._lock.notify_all()
            return len(streams)

    def drop_watches(self, *, resource: str = "pods", abort: bool = False) -> int:
        """End every open watch of `resource` after the events already queued for it.

        By default the response ends cleanly, as when the apiserver's watch timeout fires;
        with abort=True the connection is cut mid-body, as when the network or the apiserver
        dies. Returns how many watches were dropped.
        """
        with self._lock:
            streams = self._states[resource].watches
            for stream in streams:
                stream.pending.append(_ABORT if abort else _END)
            dropped = len(streams)
            streams.clear()
            self._lock.notify_all()
            return dropped

    # Faults ----------------------------------------------------------------------------------

    def fail_next_request(
        self,
        status: int,
        *,
        verb: str | None = "list",
        resource: str = "pods",
        times: int = 1,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next `times` matching requests with an error.

        `verb` is "list", "watch", "get" or None for any. 429 is answered as API Priority and
        Fairness answers it: plain text with Retry-After (default 1). 500 and 503 get a Status
        body, and a Retry-After header only when `retry_after` is given.
        """
        if status == 429:
            rejection = _Rejection(
                429,
                _TOO_MANY_REQUESTS_BODY,
                "text/plain; charset=utf-8",
                [
                    ("Retry-After", str(1 if retry_after is None else retry_after)),
                    ("X-Content-Type-Options", "nosniff"),
                ],
            )
        elif status in (500, 503):
            if status == 500:
                cause = "etcdserver: request timed out"
                details = {"causes": [{"message": cause}]}
                body = _status(500, "InternalError", f"Internal error occurred: {cause}", details)
            else:
                body = _status(503, "ServiceUnavailable", "the server is currently unable to handle the request")
            headers = [] if retry_after is None else [("Retry-After", str(retry_after))]
            rejection = _Rejection.of_status(body, headers)
        else:
            raise ValueError(f"fail_next_request supports 429, 500 and 503, not {status}")
        with self._lock:
            self._rejections.append(_Fault(verb, resource, times, rejection))

    def expire_next_watch(self, *, resource: str = "pods", times: int = 1) -> None:
        """Answer the next `times` watches with 200 and an ERROR event carrying 410 Expired."""
        with self._lock:
            self._expiries.append(_Fault("watch", resource, times, None))

    def stall_next_request(
        self, seconds: float, *, verb: str | None = None, resource: str = "pods", times: int = 1
    ) -> None:
        """Hold the next `times` matching requests for `seconds` before anything is answered."""
        with self._lock:
            self._stalls.append(_Fault(verb, resource, times, seconds))

    # Internals: state ------------------------------------------------------------------------

    def _create(self, kind: _Kind, obj: dict) -> dict:
        stored = _without_type(copy.deepcopy(obj))
        metadata = stored.get("metadata") or {}
        if not metadata.get("name"):
            raise ValueError(f"a {kind.kind} needs metadata.name")
        if kind.namespaced and not metadata.get("namespace"):
            raise ValueError(f"a {kind.kind} needs metadata.namespace")
        if kind is _PODS and not stored.get("spec", {}).get("containers"):
            raise ValueError("a Pod needs spec.containers")
        key = _key(kind, metadata)
        state = self._states[kind.resource]
        if key in state.objects:
            raise ValueError(f'{kind.resource} "{metadata["name"]}" already exists')
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        _apply_server_labels(kind, stored)
        return self._commit(kind, key, stored, None)

    def _modify(self, kind: _Kind, key: str, patch: dict) -> dict:
        state = self._states[kind.resource]
        old = state.objects.get(key)
        if old is None:
            raise KeyError(f'{kind.resource} "{key}" not found')
        new = _without_type(_merge_patch(copy.deepcopy(old), patch))
        for path in ("metadata.name", "metadata.namespace", "metadata.uid", "metadata.creationTimestamp"):
            if _field_value(new, path) != _field_value(old, path):
                raise ValueError(f"{path} is immutable")
        if kind is _PODS and _field_value(old, "spec.nodeName") not in ("", _field_value(new, "spec.nodeName")):
            raise ValueError("spec.nodeName cannot change once a pod is bound")
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        _apply_server_labels(kind, new)
        if new == old:
            return _typed(kind, copy.deepcopy(old))
        return self._commit(kind, key, new, old)

    def _delete(self, kind: _Kind, key: str) -> dict:
        old = self._states[kind.resource].objects.get(key)
        if old is None:
            raise KeyError(f'{kind.resource} "{key}" not found')
        return self._commit(kind, key, None, old)

    def _commit(self, kind: _Kind, key: str, new: dict | None, old: dict | None) -> dict:
        """Give a change the next RV, store it, keep it in history and offer it to open watches."""
        self._resource_version += 1
        event = _Event(self._resource_version, key, new, old)
        state = self._states[kind.resource]
        if new is None:
            del state.objects[key]
        else:
            new["metadata"]["resourceVersion"] = str(event.resource_version)
            state.objects[key] = new
        state.history.append(event)
        if len(state.history) > self._history_size:
            state.history.popleft()
            # As the watch cache: only RVs from just before the oldest kept event are servable.
            state.oldest_watchable = state.history[0].resource_version - 1
        for stream in state.watches:
            stream.offer(event)
        self._lock.notify_all()
        published = new if new is not None else _with_resource_version(old, event.resource_version)
        return _typed(kind, copy.deepcopy(published))

    def _get(self, kind: _Kind, key: str) -> dict:
        with self._lock:
            obj = self._states[kind.resource].objects.get(key)
            if obj is None:
                raise KeyError(f'{kind.resource} "{key}" not found')
            return _typed(kind, copy.deepcopy(obj))

    def _objects_at(self, state: _ResourceState, resource_version: int) -> dict[str, dict]:
        """The objects as they were at `resource_version`, by undoing the newer history."""
        objects = dict(state.objects)
        for event in reversed(state.history):
            if event.resource_version <= resource_version:
                break
            if event.old is None:
                del objects[event.key]
            else:
                objects[event.key] = event.old
        return objects

    def _open_watch_count(self) -> int:
        return sum(len(state.watches) for state in self._states.values())

    # Internals: serving (called from request threads) -----------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _is_closing(self) -> bool:
        with self._lock:
            return self._closing

    def _take_fault(self, faults: list[_Fault], verb: str, resource: str) -> _Fault | None:
        with self._lock:
            for fault in faults:
                if fault.resource == resource and fault.verb in (None, verb):
                    fault.remaining -= 1
                    if not fault.remaining:
                        faults.remove(fault)
                    return fault
            return None

    def _before_serving(self, verb: str, resource: str) -> None:
        """Apply the queued stall, then the queued rejection, that match this request."""
        stall = self._take_fault(self._stalls, verb, resource)
        if stall is not None:
            with self._lock:
                self._lock.wait_for(lambda: self._closing, timeout=stall.payload)
        rejection = self._take_fault(self._rejections, verb, resource)
        if rejection is not None:
            raise rejection.payload

    def _serve_get(self, route: _Route) -> dict:
        key = route.name if route.namespace is None else f"{route.namespace}/{route.name}"
        try:
            return self._get(route.kind, key)
        except KeyError:
            raise _Rejection.of_status(
                _status(404, "NotFound", f'{route.kind.resource} "{route.name}" not found',
                        {"name": route.name, "kind": route.kind.resource})
            ) from None

    def _serve_list(self, route: _Route, query: dict[str, str]) -> dict:
        selector = _Selector.parse(route, query)
        limit = max(_integer_parameter(query, "limit"), 0)
        token = query.get("continue", "")
        prefix = f"{route.namespace}/" if route.namespace is not None else ""
        with self._lock:
            state = self._states[route.kind.resource]
            if token:
                if query.get("resourceVersion", ""):
                    raise _bad_request("specifying resource version is not allowed when using continue")
                start, list_version = _decode_continue(token)
                if list_version == -1:  # the inconsistent continuation offered with a 410
                    list_version = self._resource_version
                elif list_version > self._resource_version:
                    raise _bad_request("invalid continue token: continue key is not valid")
                elif list_version < state.oldest_watchable:
                    status = _status(410, "Expired", _INCONSISTENT_CONTINUE_MESSAGE)
                    status["metadata"] = {"continue": _encode_continue(start, -1)}
                    raise _Rejection.of_status(status)
            else:
                wanted = _resource_version_parameter(query)
                if not self._wait_until_fresh(wanted):
                    raise _Rejection.of_status(self._too_large_status(wanted))
                start, list_version = "", self._resource_version
            objects = self._objects_at(state, list_version)
        keys = sorted(key for key in objects if key.startswith(prefix) and key >= prefix + start)
        items: list[dict] = []
        metadata: dict = {"resourceVersion": str(list_version)}
        for index, key in enumerate(keys):
            if limit and len(items) == limit:
                metadata["continue"] = _encode_continue(keys[index - 1][len(prefix):] + "\x00", list_version)
                if selector.is_empty:  # etcd can count the rest only when nothing is filtered
                    metadata["remainingItemCount"] = len(keys) - index
                break
            if selector.matches(objects[key]):
                items.append(objects[key])
        return {"kind": f"{route.kind.kind}List", "apiVersion": "v1", "metadata": metadata, "items": items}

    def _open_watch(self, route: _Route, query: dict[str, str]) -> _WatchStream:
        """Register a watch and queue what it must send first: history, initial state or an error."""
        selector = _Selector.parse(route, query)
        bookmarks = _bool_parameter(query, "allowWatchBookmarks")
        timeout = _integer_parameter(query, "timeoutSeconds")
        if timeout <= 0:
            timeout = _MIN_REQUEST_TIMEOUT_SECONDS * (1 + random.random())
        deadline = time.monotonic() + timeout
        wanted = _resource_version_parameter(query)
        kind = route.kind
        stream = _WatchStream(kind, selector, bookmarks, deadline)
        expire = self._take_fault(self._expiries, "watch", kind.resource) is not None
        with self._lock:
            state = self._states[kind.resource]
            if expire or (wanted and wanted < state.oldest_watchable):
                floor = self._resource_version if expire else state.oldest_watchable
                message = f"too old resource version: {wanted} ({floor})"
                stream.pending.extend([_event_line("ERROR", _status(410, "Expired", message)), _END])
                return stream
            if not self._wait_until_fresh(wanted):
                stream.pending.extend([_event_line("ERROR", self._too_large_status(wanted)), _END])
                return stream
            if not wanted:
                # "Start at most recent" still begins with the current state, as ADDED events.
                for key in sorted(state.objects):
                    if selector.matches(state.objects[key]):
                        stream.pending.append(_event_line("ADDED", _typed(kind, state.objects[key])))
            else:
                for event in state.history:
                    if event.resource_version > wanted:
                        stream.offer(event)
            if bookmarks and self._bookmark_interval is not None:
                stream.next_bookmark = self._next_bookmark_time(stream, time.monotonic())
            state.watches.add(stream)
            self._lock.notify_all()  # wakes wait_for_watches
            return stream

    def _next_watch_items(self, stream: _WatchStream) -> tuple[list[bytes | object], bool]:
        """Wait for something to send; return it and whether the watch ends after it."""
        with self._lock:
            while True:
                now = time.monotonic()
                if stream.pending or self._closing or now >= stream.deadline:
                    break
                if stream.next_bookmark is not None and now >= stream.next_bookmark:
                    stream.pending.append(_bookmark_line(stream.kind, self._resource_version))
                    stream.next_bookmark = self._next_bookmark_time(stream, now)
                    break
                wake = stream.deadline if stream.next_bookmark is None else min(stream.deadline, stream.next_bookmark)
                self._lock.wait(wake - now)
            items = list(stream.pending)
            stream.pending.clear()
            return items, self._closing or time.monotonic() >= stream.deadline

    def _close_watch(self, stream: _WatchStream) -> None:
        with self._lock:
            self._states[stream.kind.resource].watches.discard(stream)
            self._lock.notify_all()

    def _next_bookmark_time(self, stream: _WatchStream, now: float) -> float | None:
        # The watch cache's schedule: every interval, and a last one shortly before the deadline.
        next_time = min(now + self._bookmark_interval, stream.deadline - _BOOKMARK_BEFORE_DEADLINE_SECONDS)
        return next_time if next_time >= now else None

    def _wait_until_fresh(self, wanted: int) -> bool:
        """Wait (lock held) until the server has reached RV `wanted`; False if it never did."""
        return self._lock.wait_for(
            lambda: self._resource_version >= wanted or self._closing, self._resource_version_wait
        ) and self._resource_version >= wanted

    def _too_large_status(self, wanted: int) -> dict:
        return _status(
            504,
            "Timeout",
            f"Timeout: Too large resource version: {wanted}, current: {self._resource_version}",
            {
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            },
        )


@dataclasses.dataclass
class _Event:
    """One change: the object after it (None when deleted) and before it (None when created)."""

    resource_version: int
    key: str
    new: dict | None
    old: dict | None


@dataclasses.dataclass
class _ResourceState:
    oldest_watchable: int  # a watch from an RV below this is expired
    objects: dict[str, dict] = dataclasses.field(default_factory=dict)
    history: deque[_Event] = dataclasses.field(default_factory=deque)
    watches: set[_WatchStream] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class _Fault:
    verb: str | None
    resource: str
    remaining: int
    payload: object  # stall seconds, the _Rejection to answer with, or None for an expiry


# Marks in a watch's queue: end the response cleanly, or cut the connection mid-body.
_END = object()
_ABORT = object()


class _WatchStream:
    """One open watch: the encoded event lines and end marks waiting for its connection."""

    def __init__(self, kind: _Kind, selector: _Selector, bookmarks: bool, deadline: float) -> None:
        self.kind = kind
        self.selector = selector
        self.bookmarks = bookmarks
        self.deadline = deadline
        self.next_bookmark: float | None = None
        self.pending: deque[bytes | object] = deque()

    def offer(self, event: _Event) -> None:
        """Queue `event` as this watch's selector sees it, as the watch cache does.

        An object that starts matching arrives as ADDED, one that stops matching leaves as
        DELETED with its previous content and the change's RV.
        """
        matches_now = event.new is not None and self.selector.matches(event.new)
        matched_before = event.old is not None and self.selector.matches(event.old)
        if matches_now:
            self.pending.append(_event_line("MODIFIED" if matched_before else "ADDED", _typed(self.kind, event.new)))
        elif matched_before:
            gone = _with_resource_version(event.old, event.resource_version)
            self.pending.append(_event_line("DELETED", _typed(self.kind, gone)))


class _Selector:
    """A parsed fieldSelector and labelSelector, plus the namespace of a namespaced request."""

    def __init__(
        self,
        namespace: str | None,
        fields: list[tuple[str, str, bool]],
        labels: list[tuple[str, str, str]],
    ) -> None:
        self.namespace = namespace
        self.fields = fields
        self.labels = labels
        self.is_empty = not fields and not labels

    @classmethod
    def parse(cls, route: _Route, query: dict[str, str]) -> _Selector:
        return cls(
            route.namespace,
            _parse_field_selector(query.get("fieldSelector", ""), route.kind),
            _parse_label_selector(query.get("labelSelector", "")),
        )

    def matches(self, obj: dict) -> bool:
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        for path, value, equal in self.fields:
            if (_field_value(obj, path) == value) != equal:
                return False
        labels = obj["metadata"].get("labels") or {}
        for key, operator, value in self.labels:
            if operator == "exists" and key not in labels:
                return False
            if operator == "!exists" and key in labels:
                return False
            if operator == "=" and labels.get(key) != value:
                return False
            if operator == "!=" and labels.get(key) == value:
                return False
        return True


def _parse_field_selector(text: str, kind: _Kind) -> list[tuple[str, str, bool]]:
    terms = []
    for term in _selector_terms(text):
        for operator in ("!=", "==", "="):
            path, found, value = term.partition(operator)
            if found:
                break
        else:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        if path not in kind.field_labels:
            raise _bad_request(f"field label not supported: {path}")
        terms.append((path, value, operator != "!="))
    return terms


def _parse_label_selector(text: str) -> list[tuple[str, str, str]]:
    if "(" in text:
        raise _bad_request("fake kube API does not implement set-based label selectors (in, notin)")
    terms = []
    for term in _selector_terms(text):
        if term.startswith("!"):
            terms.append((term[1:].strip(), "!exists", ""))
            continue
        for operator in ("!=", "==", "="):
            key, found, value = term.partition(operator)
            if found:
                terms.append((key.strip(), "!=" if operator == "!=" else "=", value.strip()))
                break
        else:
            terms.append((term, "exists", ""))
    return terms


def _selector_terms(text: str) -> list[str]:
    if "\\" in text:
        raise _bad_request("fake kube API does not implement escaped selector values")
    if not text:
        return []
    terms = [term.strip() for term in text.split(",")]
    if not all(terms):
        raise _bad_request(f"invalid selector: '{text}': empty term")
    return terms


@dataclasses.dataclass(frozen=True)
class _Route:
    kind: _Kind
    namespace: str | None  # set for namespaced pod requests only
    name: str | None  # set for a single-object GET

    @classmethod
    def parse(cls, path: str) -> _Route:
        match path.strip("/").split("/"):
            case ["api", "v1", "pods"]:
                return cls(_PODS, None, None)
            case ["api", "v1", "namespaces", namespace, "pods"]:
                return cls(_PODS, namespace, None)
            case ["api", "v1", "namespaces", namespace, "pods", name]:
                return cls(_PODS, namespace, name)
            case ["api", "v1", "namespaces"]:
                return cls(_NAMESPACES, None, None)
            case ["api", "v1", "namespaces", name]:
                return cls(_NAMESPACES, None, name)
        raise _Rejection.of_status(_status(404, "NotFound", "the server could not find the requested resource", {}))

    def verb(self, query: dict[str, str]) -> str:
        if self.name is not None:
            if _bool_parameter(query, "watch"):
                raise _bad_request("fake kube API does not implement watching a single object by URL")
            return "get"
        return "watch" if _bool_parameter(query, "watch") else "list"


class _Rejection(Exception):
    """A complete error response."""

    def __init__(self, code: int, body: bytes, content_type: str = "application/json", headers=()) -> None:
        super().__init__(code)
        self.code = code
        self.body = body
        self.content_type = content_type
        self.headers = list(headers)

    @classmethod
    def of_status(cls, status: dict, headers=()) -> _Rejection:
        return cls(status["code"], _encode_json(status), headers=headers)


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    """A metav1.Status with its fields in Go's order."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        status["details"] = details
    status["code"] = code
    return status


def _bad_request(message: str) -> _Rejection:
    return _Rejection.of_status(_status(400, "BadRequest", message))


def _bool_parameter(query: dict[str, str], name: str) -> bool:
    value = query.get(name, "false")
    if value in _TRUE_WORDS:
        return True
    if value in _FALSE_WORDS:
        return False
    raise _bad_request(f'invalid value for {name}: strconv.ParseBool: parsing "{value}": invalid syntax')


def _integer_parameter(query: dict[str, str], name: str) -> int:
    value = query.get(name, "0")
    try:
        return int(value)
    except ValueError:
        raise _bad_request(f'invalid value for {name}: strconv.ParseInt: parsing "{value}": invalid syntax') from None


def _resource_version_parameter(query: dict[str, str]) -> int:
    """The requested RV as a number; unset and "0" are both 0 ("any")."""
    value = query.get("resourceVersion", "") or "0"
    if not value.isdigit():
        # Loud on purpose: RVs are opaque, so a client must only echo ones the server sent.
        raise _bad_request(f"invalid resource version: {value!r}")
    return int(value)


def _encode_continue(start: str, resource_version: int) -> str:
    token = json.dumps({"v": "meta.k8s.io/v1", "rv": resource_version, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[str, int]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        version, resource_version, start = decoded["v"], decoded["rv"], decoded["start"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise _bad_request("invalid continue token: continue key is not valid") from None
    if version != "meta.k8s.io/v1" or not isinstance(resource_version, int) or not resource_version or not start:
        raise _bad_request("invalid continue token: continue key is not valid")
    return start, resource_version


def _encode_json(value: object) -> bytes:
    """JSON as Go's encoder writes it: compact, raw UTF-8, HTML characters escaped, newline-ended."""
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")).translate(_GO_JSON_ESCAPES) + "\n").encode()


def _event_line(event_type: str, obj: dict) -> bytes:
    return _encode_json({"type": event_type, "object": obj})


def _bookmark_line(kind: _Kind, resource_version: int) -> bytes:
    # The watch cache sends an empty object of the watched type, with only its RV set.
    empty = {"kind": kind.kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(resource_version)}}
    return _event_line("BOOKMARK", empty | copy.deepcopy(kind.empty_body))


def _typed(kind: _Kind, obj: dict) -> dict:
    """An object as served alone or in a watch event; list items carry no kind or apiVersion."""
    return {"kind": kind.kind, "apiVersion": "v1"} | obj


def _without_type(obj: dict) -> dict:
    obj.pop("kind", None)
    obj.pop("apiVersion", None)
    return obj


def _with_resource_version(obj: dict, resource_version: int) -> dict:
    return obj | {"metadata": obj["metadata"] | {"resourceVersion": str(resource_version)}}


def _key(kind: _Kind, metadata: dict) -> str:
    return f"{metadata['namespace']}/{metadata['name']}" if kind.namespaced else metadata["name"]


def _field_value(obj: dict, path: str) -> str:
    value: object = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else value


def _merge_patch(target: object, patch: object) -> object:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged


def _namespace_object(name: str, labels: dict[str, str] | None, annotations: dict[str, str] | None) -> dict:
    metadata: dict = {"name": name, "labels": dict(labels or {})}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"metadata": metadata, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def _apply_server_labels(kind: _Kind, obj: dict) -> None:
    # kube-apiserver labels every namespace with its own name, on create and on update.
    if kind is _NAMESPACES:
        obj["metadata"]["labels"] = (obj["metadata"].get("labels") or {}) | {
            _NAMESPACE_NAME_LABEL: obj["metadata"]["name"]
        }


class _ChunkWriter:
    """Writes a chunked body in the chunks Go's net/http would produce.

    net/http collects body writes in a 2 KiB buffer and emits a chunk whenever it fills or the
    handler flushes; a write larger than the empty buffer goes out as a chunk of its own. The
    apiserver flushes when its queue of events is empty, so a lone event is one chunk while a
    burst shares chunks that can split events anywhere.
    """

    def __init__(self, wfile) -> None:
        self._wfile = wfile
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        while len(data) > _GO_CHUNK_BUFFER_BYTES - len(self._buffer):
            if not self._buffer:
                self._send_chunk(data)
                return
            room = _GO_CHUNK_BUFFER_BYTES - len(self._buffer)
            self._buffer += data[:room]
            data = data[room:]
            self.flush()
        self._buffer += data

    def flush(self) -> None:
        if self._buffer:
            self._send_chunk(bytes(self._buffer))
            self._buffer.clear()

    def close(self) -> None:
        self.flush()
        self._wfile.write(b"0\r\n\r\n")

    def _send_chunk(self, data: bytes) -> None:
        self._wfile.write(b"%x\r\n%b\r\n" % (len(data), data))


def _cut(connection: socket.socket) -> None:
    """Shut a connection down under whoever is using it (bypassing SSLSocket's own shutdown)."""
    try:
        socket.socket.shutdown(connection, socket.SHUT_RDWR)
    except OSError:
        pass


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the request threads, so nothing outlives stop()

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, api: FakeKubeApi) -> None:
        self.api = api
        self._context = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, object]:
        connection, address = self.socket.accept()
        # The handshake happens on the first read, in the request's thread, not in the accept loop.
        return self._context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address

    def process_request(self, request, client_address) -> None:
        # Registered here, in the accept loop, so that cut_connections() after shutdown() sees all.
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            _cut(connection)

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up are not errors
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer

    def _handle(self) -> None:
        api = self.server.api
        if api._is_closing():
            self.close_connection = True
            return
        if self.command != "GET":
            self.close_connection = True  # its body, if any, is left unread
        url = urlsplit(self.path)
        query = {name: values[0] for name, values in parse_qs(url.query, keep_blank_values=True).items()}
        authorized = self._authorized()
        api._record(RecordedRequest(self.command, url.path, query, authorized, time.monotonic()))
        try:
            if not authorized:
                raise _Rejection.of_status(_status(401, "Unauthorized", "Unauthorized"))
            if self.command != "GET":
                message = "the server does not allow this method on the requested resource"
                raise _Rejection.of_status(_status(405, "MethodNotAllowed", message, {}))
            route = _Route.parse(url.path)
            verb = route.verb(query)
            allowed = _OBJECT_PARAMETERS if verb == "get" else _COLLECTION_PARAMETERS
            unknown = sorted(set(query) - allowed)
            if unknown:
                raise _bad_request(f"fake kube API does not implement query parameter(s): {', '.join(unknown)}")
            api._before_serving(verb, route.kind.resource)
            if verb == "watch":
                self._serve_watch(api._open_watch(route, query))
            elif verb == "list":
                self._reply(200, _encode_json(api._serve_list(route, query)), "application/json")
            else:
                self._reply(200, _encode_json(api._serve_get(route)), "application/json")
        except _Rejection as rejection:
            self._reply(rejection.code, rejection.body, rejection.content_type, rejection.headers)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _authorized(self) -> bool:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip(), self.server.api.token)

    def _serve_watch(self, stream: _WatchStream) -> None:
        api = self.server.api
        try:
            self.send_response(200)
            self._send_common_headers("application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            writer = _ChunkWriter(self.wfile)
            while True:
                items, finished = api._next_watch_items(stream)
                for item in items:
                    if item is _ABORT:
                        writer.flush()
                        self.close_connection = True
                        _cut(self.connection)
                        return
                    if item is _END:
                        finished = True
                        break
                    writer.write(item)
                writer.flush()
                if finished:
                    writer.close()
                    return
        except OSError:
            self.close_connection = True
        finally:
            api._close_watch(stream)

    def _reply(self, code: int, body: bytes, content_type: str, headers=()) -> None:
        self.send_response(code)
        self._send_common_headers(content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_common_headers(self, content_type: str) -> None:
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", content_type)

    def send_response(self, code: int, message: str | None = None) -> None:
        # kube-apiserver sends a Date header but no Server header.
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def log_message(self, format: str, *args: object) -> None:
        """Silent: FakeKubeApi.requests records every request."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.receivers.kube_api",
        description="Serve a strict fake Kubernetes API (pods and namespaces) over HTTPS until SIGTERM.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--pods", type=Path, help="a `kubectl get pods -o json` List to serve")
    parser.add_argument("--token", help="bearer token to require (default: a random one)")
    parser.add_argument("--history-size", type=int, default=1000, help="watchable events kept per resource")
    parser.add_argument("--bookmark-interval", type=float, default=60.0, help="seconds between bookmarks")
    args = parser.parse_args(argv)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    with FakeKubeApi(
        port=args.port, token=args.token, history_size=args.history_size, bookmark_interval=args.bookmark_interval
    ) as api:
        if args.pods is not None:
            for pod in json.loads(args.pods.read_text())["items"]:
                api.add_pod(pod)
        kubeconfig = api.write_kubeconfig()
        print(f"url: {api.url}\nca: {api.ca_path}\ntoken: {api.token}\nkubeconfig: {kubeconfig}", flush=True)
        stopped.wait()


if __name__ == "__main__":
    main()
