"""Configuration: YAML with ``${VAR}`` / ``${VAR:-default}`` expansion, validated into dataclasses.

Every error names the file, the key path and what is wrong, in one line (``ConfigError``);
unknown keys get a suggestion. Expansion happens on the text before YAML parsing, as Vector
and Promtail's ``-config.expand-env`` do, so a variable can stand for a number or a list; a
literal ``${`` is written ``$${``.
"""

import difflib
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from shipper.config_reader import ConfigError, ConfigReader, describe
from shipper.decode.multiline import PRESETS, MultilineRule
from shipper.kube.options import KubeOptions, read_kube_options
from shipper.parse.records import RESERVED_KEYS, JsonOptions, SecurityOptions
from shipper.sinks.elasticsearch_options import read_elasticsearch_options
from shipper.sinks.file_options import read_file_options
from shipper.sinks.loki_options import read_loki_options


def _no_options(reader: ConfigReader, spec: dict, path: str, default_dead_letter_path: str) -> None:
    reader.mapping(spec, path, ("type",))


# Each sink type reads its own options; the reader gets the sink's spec and key path.
SINK_OPTION_READERS = {
    "stdout": _no_options,
    "file": read_file_options,
    "elasticsearch": read_elasticsearch_options,
    "loki": read_loki_options,
}
SINK_TYPES = tuple(SINK_OPTION_READERS)

FORMATS = ("auto", "cri", "docker")
JSON_MODES = ("top", "key", "off")


@dataclass(frozen=True)
class FilterRule:
    action: str  # "keep": only matching records pass; "drop": matching records are dropped
    field: str  # dotted path into the record, e.g. kubernetes.namespace_name
    regex: re.Pattern

    @property
    def name(self) -> str:
        return f"{self.action}:{self.field}"


@dataclass(frozen=True)
class InputConfig:
    name: str
    paths: tuple[str, ...]
    sinks: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    format: str = "auto"
    json: JsonOptions = JsonOptions()
    security: SecurityOptions = SecurityOptions()
    filters: tuple[FilterRule, ...] = ()
    multiline: tuple[MultilineRule, ...] = ()


@dataclass(frozen=True)
class SinkConfig:
    name: str
    type: str
    options: Any = None  # the type's options dataclass (e.g. ElasticsearchOptions)


@dataclass(frozen=True)
class Config:
    source: str
    inputs: tuple[InputConfig, ...]
    sinks: dict[str, SinkConfig]
    node_name: str = ""
    positions_path: str = "/var/lib/shipper/positions.json"
    checkpoint_interval_secs: float = 5.0
    read_from: str = "head"
    read_chunk_bytes: int = 256 << 10
    max_record_bytes: int = 1 << 20
    rescan_interval_secs: float = 5.0
    poll_interval_secs: float = 0.25
    inotify: bool = True
    max_open_files: int = 1024
    rotate_wait_secs: float = 5.0
    max_deleted_hold_secs: float = 300.0
    partial_flush_secs: float = 5.0
    max_in_flight_bytes: int = 8 << 20
    metrics_listen: str | None = "0.0.0.0:2020"
    shutdown_grace_secs: float = 25.0
    kube: KubeOptions = KubeOptions()


_VARIABLE = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, source: str, environ: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; ``$${`` stays a literal ``${``."""
    environ = os.environ if environ is None else environ

    def replace(match: re.Match) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                line = text.count("\n", 0, match.start()) + 1
                raise ConfigError(
                    source, "", f"line {line}: environment variable {name} is not set (write ${{{name}:-default}})"
                )
            return default
        return value

    return _VARIABLE.sub(replace, text)


def load_config(path: str, environ: dict[str, str] | None = None) -> Config:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(path, "", f"not UTF-8 text ({error.reason} at byte {error.start})") from error
    return parse_config(text, path, environ)


def parse_config(text: str, source: str, environ: dict[str, str] | None = None) -> Config:
    text = expand_env(text, source, environ)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(source, "", f"invalid YAML: {where}{problem}") from None
    return _Reader(source).config(data if data is not None else {})


class _Reader(ConfigReader):
    """Reads the shipper's own sections; sink options are read by their sink's module."""

    def config(self, data: Any) -> Config:
        top = self.mapping(
            data, "", ("node_name", "positions", "read", "buffer", "metrics", "shutdown", "kube", "inputs", "sinks")
        )
        settings: dict[str, Any] = {}
        if top.get("node_name") is not None:  # `${NODE_NAME:-}` leaves it empty: unknown node
            settings["node_name"] = self.string(top["node_name"], "node_name")
        positions = self.mapping(top.get("positions", {}), "positions", ("path", "checkpoint_interval_secs"))
        if "path" in positions:
            settings["positions_path"] = self.string(positions["path"], "positions.path")
        if "checkpoint_interval_secs" in positions:
            settings["checkpoint_interval_secs"] = self.number(
                positions["checkpoint_interval_secs"], "positions.checkpoint_interval_secs", float, 0.01
            )
        read_keys = {
            "chunk_bytes": ("read_chunk_bytes", int, 4096),
            "max_record_bytes": ("max_record_bytes", int, 1024),
            "rescan_interval_secs": ("rescan_interval_secs", float, 0.01),
            "poll_interval_secs": ("poll_interval_secs", float, 0.001),
            "partial_flush_secs": ("partial_flush_secs", float, 0.01),
            "max_open_files": ("max_open_files", int, 1),
            "rotate_wait_secs": ("rotate_wait_secs", float, 0),
            "max_deleted_hold_secs": ("max_deleted_hold_secs", float, 0),
        }
        read = self.mapping(top.get("read", {}), "read", ("from", "inotify", *read_keys))
        if "from" in read:
            settings["read_from"] = self.string(read["from"], "read.from", ("head", "tail"))
        if "inotify" in read:
            settings["inotify"] = self.boolean(read["inotify"], "read.inotify")
        for key, (attribute, kind, minimum) in read_keys.items():
            if key in read:
                settings[attribute] = self.number(read[key], f"read.{key}", kind, minimum)
        buffer = self.mapping(top.get("buffer", {}), "buffer", ("max_in_flight_bytes",))
        if "max_in_flight_bytes" in buffer:
            settings["max_in_flight_bytes"] = self.number(
                buffer["max_in_flight_bytes"], "buffer.max_in_flight_bytes", int, 65536
            )
        metrics = self.mapping(top.get("metrics", {}), "metrics", ("listen",))
        if "listen" in metrics:
            listen = metrics["listen"]
            settings["metrics_listen"] = None if listen is None else self.listen_address(listen, "metrics.listen")
        shutdown = self.mapping(top.get("shutdown", {}), "shutdown", ("grace_secs",))
        if "grace_secs" in shutdown:
            settings["shutdown_grace_secs"] = self.number(shutdown["grace_secs"], "shutdown.grace_secs", float, 0)
        settings["kube"] = read_kube_options(self, top.get("kube", {}), settings.get("node_name", ""))

        dead_letter_dir = os.path.dirname(settings.get("positions_path", Config.positions_path)) or "."
        sinks = self.sinks(top.get("sinks"), dead_letter_dir)
        inputs = self.inputs(top.get("inputs"), sinks)
        return Config(source=self.source, inputs=inputs, sinks=sinks, **settings)

    def listen_address(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise self.fail(path, f"must be HOST:PORT, got '{text}'")
        return text

    def sinks(self, value: Any, dead_letter_dir: str) -> dict[str, SinkConfig]:
        if value is None:
            raise self.fail("sinks", "is required: name at least one sink")
        if not isinstance(value, dict) or not value:
            raise self.fail("sinks", f"must be a non-empty mapping of sink names, got {describe(value)}")
        sinks = {}
        for name, spec in value.items():
            path = f"sinks.{name}"
            if not isinstance(spec, dict):
                raise self.fail(path, f"must be a mapping, got {describe(spec)}")
            if "type" not in spec:
                raise self.fail(path, f"type is required (one of {', '.join(SINK_TYPES)})")
            sink_type = self.string(spec["type"], f"{path}.type", SINK_TYPES)
            # Rejected documents of every sink go next to the positions file unless told otherwise.
            dead_letter_path = os.path.join(dead_letter_dir, f"dead-letter-{name}.ndjson")
            options = SINK_OPTION_READERS[sink_type](self, spec, path, dead_letter_path)
            sinks[name] = SinkConfig(name=name, type=sink_type, options=options)
        return sinks

    def inputs(self, value: Any, sinks: dict[str, SinkConfig]) -> tuple[InputConfig, ...]:
        if value is None:
            raise self.fail("inputs", "is required: name at least one input")
        if not isinstance(value, dict) or not value:
            raise self.fail("inputs", f"must be a non-empty mapping of input names, got {describe(value)}")
        inputs = []
        for name, spec in value.items():
            path = f"inputs.{name}"
            spec = self.mapping(spec, path, ("paths", "exclude", "format", "json", "security", "filters",
                                                    "multiline", "sinks"))
            for required in ("paths", "sinks"):
                if required not in spec:
                    raise self.fail(f"{path}.{required}", "is required")
            sink_names = self.strings(spec["sinks"], f"{path}.sinks", non_empty=True)
            for i, sink in enumerate(sink_names):
                if sink not in sinks:
                    close = difflib.get_close_matches(sink, list(sinks), n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else f" (defined: {', '.join(sinks)})"
                    raise self.fail(f"{path}.sinks[{i}]", f"no sink named '{sink}'" + hint)
            inputs.append(
                InputConfig(
                    name=name,
                    paths=self.strings(spec["paths"], f"{path}.paths", non_empty=True),
                    sinks=sink_names,
                    exclude=self.strings(spec.get("exclude", []), f"{path}.exclude"),
                    format=self.string(spec.get("format", "auto"), f"{path}.format", FORMATS),
                    json=self.json(spec.get("json", {}), f"{path}.json"),
                    security=self.security(spec.get("security", {}), f"{path}.security"),
                    filters=self.filters(spec.get("filters", []), f"{path}.filters"),
                    multiline=self.multiline(spec.get("multiline", []), f"{path}.multiline"),
                )
            )
        return tuple(inputs)

    def json(self, value: Any, path: str) -> JsonOptions:
        spec = self.mapping(value, path, ("mode", "key", "keep_raw", "max_depth", "max_fields"))
        options = JsonOptions()
        mode = self.string(spec.get("mode", options.mode), f"{path}.mode", JSON_MODES)
        key = self.string(spec.get("key", options.key), f"{path}.key")
        if key in RESERVED_KEYS or not key:
            raise self.fail(f"{path}.key", f"'{key}' is one of the shipper's own keys ({', '.join(RESERVED_KEYS)})")
        keep_raw = self.boolean(spec.get("keep_raw", options.keep_raw), f"{path}.keep_raw")
        return JsonOptions(
            mode=mode, key=key, keep_raw=keep_raw,
            max_depth=self.number(spec.get("max_depth", options.max_depth), f"{path}.max_depth", int, 1),
            max_fields=self.number(spec.get("max_fields", options.max_fields), f"{path}.max_fields", int, 1),
        )

    def security(self, value: Any, path: str) -> SecurityOptions:
        spec = self.mapping(value, path, ("enabled", "event_time", "kubearmor_containers", "falco_containers"))
        defaults = SecurityOptions()
        return SecurityOptions(
            enabled=self.boolean(spec.get("enabled", defaults.enabled), f"{path}.enabled"),
            event_time=self.boolean(spec.get("event_time", defaults.event_time), f"{path}.event_time"),
            kubearmor_containers=self.strings(spec.get("kubearmor_containers", list(defaults.kubearmor_containers)),
                                              f"{path}.kubearmor_containers"),
            falco_containers=self.strings(spec.get("falco_containers", list(defaults.falco_containers)),
                                          f"{path}.falco_containers"),
        )

    def multiline(self, value: Any, path: str) -> tuple[MultilineRule, ...]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of rules, got {describe(value)}")
        rules = []
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            spec = self.mapping(item, item_path, ("containers", "preset", "start", "continue", "max_lines", "max_bytes"))
            if "containers" not in spec:
                raise self.fail(f"{item_path}.containers", "is required: the container names (globs) it applies to")
            kinds = [key for key in ("preset", "start", "continue") if key in spec]
            if len(kinds) != 1:
                raise self.fail(item_path, "needs exactly one of preset, start or continue")
            (kind,) = kinds
            if kind == "preset":
                pattern = PRESETS[self.string(spec["preset"], f"{item_path}.preset", tuple(PRESETS))]
            else:
                pattern = self.string(spec[kind], f"{item_path}.{kind}")
                try:
                    re.compile(pattern)
                except re.error as error:
                    raise self.fail(f"{item_path}.{kind}", f"invalid regular expression: {error}") from None
            defaults = MultilineRule((), "", False)
            rules.append(MultilineRule(
                containers=self.strings(spec["containers"], f"{item_path}.containers", non_empty=True),
                pattern=pattern,
                starts=kind == "start",
                max_lines=self.number(spec.get("max_lines", defaults.max_lines), f"{item_path}.max_lines", int, 2),
                max_bytes=self.number(spec.get("max_bytes", defaults.max_bytes), f"{item_path}.max_bytes", int, 1024),
            ))
        return tuple(rules)

    def filters(self, value: Any, path: str) -> tuple[FilterRule, ...]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of keep/drop rules, got {describe(value)}")
        rules = []
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            rule = self.mapping(item, item_path, ("keep", "drop"))
            if len(rule) != 1:
                raise self.fail(item_path, "must have exactly one of keep or drop")
            (action, spec), = rule.items()
            spec_path = f"{item_path}.{action}"
            spec = self.mapping(spec, spec_path, ("field", "regex"))
            for required in ("field", "regex"):
                if required not in spec:
                    raise self.fail(f"{spec_path}.{required}", "is required")
            pattern = self.string(spec["regex"], f"{spec_path}.regex")
            try:
                regex = re.compile(pattern)
            except re.error as error:
                raise self.fail(f"{spec_path}.regex", f"invalid regular expression: {error}") from None
            rules.append(FilterRule(action=action, field=self.string(spec["field"], f"{spec_path}.field"), regex=regex))
        return tuple(rules)
