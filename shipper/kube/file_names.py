"""Pod, namespace, container and container id from a container log file's path.

Two layouts exist on a node (PROTOCOLS.md section 3):
- ``/var/log/containers/<pod>_<namespace>_<container>-<64 hex id>.log`` (symlinks)
- ``/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`` (the files)
Pod and namespace names cannot contain ``_`` (DNS-1123), which makes both unambiguous.
"""

import os
import re

_CONTAINERS = re.compile(
    r"^(?P<pod_name>[^_]+)_(?P<namespace_name>[^_]+)_(?P<container_name>.+)-(?P<container_id>[0-9a-f]{64})\.log$"
)
_PODS_DIR = re.compile(r"^(?P<namespace_name>[^_]+)_(?P<pod_name>[^_]+)_(?P<pod_id>[0-9a-f-]+)$")


def kubernetes_from_path(path: str) -> dict:
    """The ``kubernetes`` fields the path tells; empty when it follows neither layout."""
    name = os.path.basename(path)
    match = _CONTAINERS.match(name)
    if match:
        fields = match.groupdict()
        fields["docker_id"] = fields["container_id"]  # Fluent Bit's name for the same id
        return fields
    container_dir = os.path.dirname(path)
    pod_dir = _PODS_DIR.match(os.path.basename(os.path.dirname(container_dir)))
    if pod_dir and re.fullmatch(r"\d+\.log(\.\d{8}-\d{6})?", name):
        return {**pod_dir.groupdict(), "container_name": os.path.basename(container_dir)}
    return {}
