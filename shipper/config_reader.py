"""Walking parsed YAML with errors that name the file, the key path and what is wrong."""

import difflib
from typing import Any


class ConfigError(Exception):
    """A configuration problem, already phrased for the user: ``FILE: key.path: what``."""

    def __init__(self, source: str, key_path: str, message: str) -> None:
        where = f"{source}: {key_path}: " if key_path else f"{source}: "
        super().__init__(where + message)


class ConfigReader:
    """Walks the parsed YAML, checking each key against what it may be."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> ConfigError:
        return ConfigError(self.source, path, message)

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {describe(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"key {key!r} must be a string")
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(allowed)})"
                raise self.fail(key_path(path, key), "unknown key" + hint)
        return value

    def number(self, value: Any, path: str, kind: type, minimum: float) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise self.fail(path, f"must be {'a number' if kind is float else 'an integer'}, got {describe(value)}")
        if value < minimum:
            raise self.fail(path, f"must be at least {minimum}, got {value}")
        return kind(value)

    def string(self, value: Any, path: str, choices: tuple[str, ...] = ()) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {describe(value)}")
        if choices and value not in choices:
            raise self.fail(path, f"must be one of {', '.join(choices)}, got '{value}'")
        return value

    def strings(self, value: Any, path: str, non_empty: bool = False) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of strings, got {describe(value)}")
        if non_empty and not value:
            raise self.fail(path, "must not be empty")
        return tuple(self.string(item, f"{path}[{i}]") for i, item in enumerate(value))

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {describe(value)}")
        return value


def key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
