"""Configuration: env expansion, validation, and errors that name the file and the key."""

import glob
import os
import subprocess
import sys

import pytest

from shipper.config import ConfigError, expand_env, load_config, parse_config

MINIMAL = """
inputs:
  app: {paths: [/var/log/containers/*.log], sinks: [out]}
sinks:
  out: {type: stdout}
"""


def test_minimal_config_gets_documented_defaults():
    config = parse_config(MINIMAL, "c.yaml")
    (inp,) = config.inputs
    assert inp.name == "app" and inp.sinks == ("out",) and inp.format == "auto" and inp.json.mode == "top"
    assert config.read_from == "head" and config.max_record_bytes == 1 << 20


def test_parsing_keys_have_defaults_and_are_read():
    (inp,) = parse_config(MINIMAL, "c.yaml").inputs
    assert (inp.json.max_depth, inp.json.max_fields) == (20, 1000)
    assert (inp.security.enabled, inp.security.event_time) == (True, False)
    assert (inp.security.kubearmor_containers, inp.security.falco_containers) == (("kubearmor*",), ("falco*",))
    (inp,) = parse_config(MINIMAL.replace("sinks: [out]}", "sinks: [out], json: {max_depth: 5, max_fields: 50},"
                                          " security: {event_time: true, kubearmor_containers: [relay*],"
                                          " falco_containers: []}}"), "c.yaml").inputs
    assert (inp.json.max_depth, inp.json.max_fields) == (5, 50)
    assert inp.security.event_time and inp.security.kubearmor_containers == ("relay*",)
    assert inp.security.falco_containers == ()


def test_tailing_keys_have_defaults_and_are_read():
    config = parse_config(MINIMAL, "c.yaml")
    assert (config.inotify, config.max_open_files, config.rotate_wait_secs, config.max_deleted_hold_secs) == (
        True, 1024, 5.0, 300.0)
    config = parse_config(MINIMAL + "read: {inotify: false, max_open_files: 100, rotate_wait_secs: 1,"
                                    " max_deleted_hold_secs: 60}\n", "c.yaml")
    assert (config.inotify, config.max_open_files, config.rotate_wait_secs, config.max_deleted_hold_secs) == (
        False, 100, 1.0, 60.0)


def test_kube_is_off_by_default_and_its_section_is_read():
    assert parse_config(MINIMAL, "c.yaml").kube.enabled is False
    text = MINIMAL + """
node_name: node-a
kube:
  enabled: true
  kubeconfig: /root/.kube/config
  labels: false
  annotations: {allow: ["prometheus.io/*"], deny: [prometheus.io/port]}
  namespace_labels: true
  de_dot: false
  deleted_pod_grace_secs: 120
"""
    kube = parse_config(text, "c.yaml").kube

    assert (kube.enabled, kube.kubeconfig) == (True, "/root/.kube/config")
    metadata = kube.metadata
    assert (metadata.labels, metadata.namespace_labels, metadata.de_dot) == (False, True, False)
    assert (metadata.annotations_allow, metadata.annotations_deny) == (("prometheus.io/*",), ("prometheus.io/port",))
    assert metadata.deleted_pod_grace_secs == 120.0


def test_env_expansion_with_defaults_and_escapes():
    env = {"NODE": "node-1", "EMPTY": ""}
    text = "a: ${NODE}\nb: ${MISSING:-fallback}\nc: ${EMPTY:-used}\nd: $${NODE}"
    assert expand_env(text, "c.yaml", env) == "a: node-1\nb: fallback\nc: used\nd: ${NODE}"


@pytest.mark.parametrize(
    "text, message",
    [
        (MINIMAL + "read: {chunk_byte: 10}\n", "c.yaml: read.chunk_byte: unknown key (did you mean 'chunk_bytes'?)"),
        (MINIMAL.replace("sinks: [out]}", "sinks: [out], fromat: cri}"),
         "c.yaml: inputs.app.fromat: unknown key (did you mean 'format'?)"),
        (MINIMAL.replace("sinks: [out]}", "sinks: [es]}"), "c.yaml: inputs.app.sinks[0]: no sink named 'es' (defined: out)"),
        (MINIMAL + "read: {from: middle}\n", "c.yaml: read.from: must be one of head, tail, got 'middle'"),
        (MINIMAL + "read: {chunk_bytes: lots}\n", "c.yaml: read.chunk_bytes: must be an integer, got a string"),
        (MINIMAL + "read: {max_open_files: 0}\n", "c.yaml: read.max_open_files: must be at least 1, got 0"),
        (MINIMAL + "read: {max_deleted_hold_secs: -1}\n",
         "c.yaml: read.max_deleted_hold_secs: must be at least 0, got -1"),
        (MINIMAL + "read: {rotate_wait_secs: soon}\n", "c.yaml: read.rotate_wait_secs: must be a number, got a string"),
        (MINIMAL + "read: {inotify: 'yes'}\n", "c.yaml: read.inotify: must be true or false, got a string"),
        (MINIMAL + "read: {max_open_file: 10}\n", "c.yaml: read.max_open_file: unknown key (did you mean 'max_open_files'?)"),
        (MINIMAL + "buffer: {max_in_flight_bytes: 10}\n", "c.yaml: buffer.max_in_flight_bytes: must be at least 65536, got 10"),
        (MINIMAL.replace("{type: stdout}", "{type: kafka}"), "c.yaml: sinks.out.type: must be one of stdout, file, elasticsearch, loki, got 'kafka'"),
        (MINIMAL.replace("{type: stdout}", "{}"), "c.yaml: sinks.out: type is required (one of stdout, file, elasticsearch, loki)"),
        (MINIMAL.replace("sinks: [out]}", "sinks: [out], filters: [{drop: {field: log, regex: '('}}]}"),
         "c.yaml: inputs.app.filters[0].drop.regex: invalid regular expression: missing ), unterminated subpattern"),
        (MINIMAL.replace("sinks: [out]}", "sinks: [out], json: {key: stream}}"),
         "c.yaml: inputs.app.json.key: 'stream' is one of the shipper's own keys"),
        (MINIMAL.replace("sinks: [out]}", "sinks: [out], json: {max_depth: 0}}"),
         "c.yaml: inputs.app.json.max_depth: must be at least 1, got 0"),
        (MINIMAL.replace("sinks: [out]}", "sinks: [out], security: {kubearmor_container: [relay*]}}"),
         "c.yaml: inputs.app.security.kubearmor_container: unknown key (did you mean 'kubearmor_containers'?)"),
        (MINIMAL.replace("sinks: [out]}", "sinks: [out], security: {event_time: 'on'}}"),
         "c.yaml: inputs.app.security.event_time: must be true or false, got a string"),
        (MINIMAL + "metrics: {listen: nowhere}\n", "c.yaml: metrics.listen: must be HOST:PORT, got 'nowhere'"),
        ("sinks:\n  out: {type: stdout}\n", "c.yaml: inputs: is required"),
        ("inputs: [\n", "c.yaml: invalid YAML: line 2, column 1"),
        ("node_name: ${NODE_NAME}\n" + MINIMAL, "c.yaml: line 1: environment variable NODE_NAME is not set"),
        ("- a list\n", "c.yaml: must be a mapping, got a list"),
        (MINIMAL + "kube: {enabled: true}\n", "c.yaml: kube.enabled: needs node_name"),
        (MINIMAL + "kube: {enable: true}\n", "c.yaml: kube.enable: unknown key (did you mean 'enabled'?)"),
        (MINIMAL + "kube: {annotations: {allow: yes}}\n", "c.yaml: kube.annotations.allow: must be a list of strings"),
        (MINIMAL + "kube: {deleted_pod_grace_secs: -1}\n", "c.yaml: kube.deleted_pod_grace_secs: must be at least 0"),
    ],
)
def test_errors_name_the_file_and_the_key(text, message):
    with pytest.raises(ConfigError) as error:
        parse_config(text, "c.yaml", environ={})
    assert str(error.value).startswith(message)


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read: No such file"):
        load_config(str(tmp_path / "missing.yaml"))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "config", "*.yaml"))))
def test_example_configs_are_valid(path):
    result = subprocess.run([sys.executable, "-m", "shipper", "check-config", path], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok")


def test_check_config_reports_one_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL + "positions: {paht: /tmp/x}\n")
    result = subprocess.run([sys.executable, "-m", "shipper", "check-config", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == f"config error: {bad}: positions.paht: unknown key (did you mean 'path'?)\n"
