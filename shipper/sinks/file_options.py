"""The ``type: file`` sink's options."""

from dataclasses import dataclass

from shipper.config_reader import ConfigReader


@dataclass(frozen=True)
class FileSinkOptions:
    path: str


def read_file_options(reader: ConfigReader, spec: dict, path: str, default_dead_letter_path: str) -> FileSinkOptions:
    spec = reader.mapping(spec, path, ("type", "path"))
    if "path" not in spec:
        raise reader.fail(f"{path}.path", "is required: the file records are appended to")
    return FileSinkOptions(path=reader.string(spec["path"], f"{path}.path"))
