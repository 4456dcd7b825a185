"""YAML as people write it, for targets and training recipes.

PyYAML follows YAML 1.1, where `1e-2` and `1e308` are strings (a float there needs a dot and a
signed exponent); every other tool people use reads them as numbers, so this loader does too.
A file that is not UTF-8, or not YAML, is one line saying so.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from hyperclone.errors import UserError


class _Loader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) with YAML 1.2's float spellings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, what: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise UserError(f"{what} is not valid YAML: {' '.join(str(exc).split())}") from None


def read_yaml(path: Path, what: str):
    """The YAML document in `path` (None when empty), or one line naming what is wrong with the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a directory: give a YAML file") from None
    except OSError as exc:
        raise UserError(f"cannot read {what}: {exc.strerror or exc}") from None
    return parse_yaml(text, what)
