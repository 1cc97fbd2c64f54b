"""The Dockerfile (docker is not available here): what it copies is in the build context, and the
process it starts reads the configuration the DaemonSet mounts and serves the port it probes."""

import fnmatch
import json
import os

import pytest

from tests.deploy_manifests import OVERLAYS, REPO, built, container


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped, continuation lines joined."""
    with open(os.path.join(REPO, "Dockerfile"), encoding="utf-8") as handle:
        text = handle.read().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, arguments = line.partition(" ")
            found.append((name.upper(), arguments.strip()))
    return found


def arguments(name: str) -> list[str]:
    return [args for instruction, args in instructions() if instruction == name]


def ignored(path: str) -> bool:
    """Whether .dockerignore leaves ``path`` (relative to the repository) out of the build context."""
    with open(os.path.join(REPO, ".dockerignore"), encoding="utf-8") as handle:
        patterns = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
               for pattern in patterns for prefix in prefixes)


def test_the_image_is_python_311_slim_with_the_package_installed_from_the_repository():
    assert all(image.split()[0] == "python:3.11-slim" for image in arguments("FROM"))
    assert any("pip install" in command and command.endswith(" .") for command in arguments("RUN"))


def test_what_the_image_copies_is_in_the_build_context_and_nothing_else_is_needed():
    sources = [source for args in arguments("COPY") if not args.startswith("--from")
               for source in args.split()[:-1]]
    assert sorted(sources) == ["README.md", "pyproject.toml", "shipper"]
    for source in sources:
        assert os.path.exists(os.path.join(REPO, source)), source
        assert not ignored(source), f".dockerignore leaves out {source}, which the image copies"
    for left_out in ("tests/receivers/loki.py", ".venv/bin/python", "shipper/__pycache__/cli.cpython-311.pyc"):
        assert ignored(left_out), left_out


def test_the_image_runs_as_a_non_root_user_by_default():
    (user,) = arguments("USER")
    assert user.split(":")[0] not in ("0", "root")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_entrypoint_reads_the_mounted_config_map_and_serves_the_probed_port(overlay):
    (entrypoint,) = arguments("ENTRYPOINT")
    command = json.loads(entrypoint)  # exec form: the shipper is PID 1 and gets SIGTERM itself
    assert command[:3] == ["shipper", "run", "--config"]
    daemonset, config_map = built(overlay, "DaemonSet"), built(overlay, "ConfigMap")
    shipper = container(daemonset)
    assert "command" not in shipper and "args" not in shipper
    (volume,) = [v for v in daemonset["spec"]["template"]["spec"]["volumes"]
                 if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]]
    (mount,) = [m for m in shipper["volumeMounts"] if m["name"] == volume["name"]]
    assert command[3] in [os.path.join(mount["mountPath"], key) for key in config_map["data"]]
    (exposed,) = arguments("EXPOSE")
    assert [int(exposed)] == [p["containerPort"] for p in shipper["ports"] if p["name"] == "metrics"]
