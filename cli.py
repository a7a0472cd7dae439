"""The command line of every entry point: one line per bad flag, and flags made from dataclasses.

train.py's flags are the fields of TrainConfig, build.ModelConfig and data.WorldConfig, each typed like
its field and helped by the comment after it; a bad value stops with one line naming the flag (never
argparse's whole usage, never a traceback), and every entry point (train, sample, bench, data, reward,
build) parses with `OneLineParser`.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re

class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line and where to look, not the whole usage; under torchrun only
    rank 0 says it (every rank stops, N copies of one line help nobody)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def exit(self, status=0, message=None):
        super().exit(status, message if os.environ.get("RANK", "0") == "0" else None)


def parse_bool(s: str) -> bool:
    """true/false and their usual spellings; anything else is an error (a typo must not read as false)."""
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def out_dir_problems(out: str, flag: str = "--out_dir") -> list[str]:
    """An output folder must be a folder (or creatable) and writable; checked before any work, not after it."""
    problems = []
    if os.path.exists(out) and not os.path.isdir(out):
        problems.append(f"{flag} {out} is a file; give a folder")
    else:
        parent = out if os.path.isdir(out) else os.path.dirname(os.path.abspath(out))
        while not os.path.exists(parent):  # the nearest folder that exists is where it will be created
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            problems.append(f"{flag} {out}: {parent} is a file, so no folder can be made under it; give a folder")
        elif not os.access(parent, os.W_OK):
            problems.append(f"{flag} {out}: {parent} is not writable; give a folder you can write to")
    return problems


def field_help(cls) -> dict:
    """{field: its trailing comment} read from the dataclass's source (and its bases': build.ModelConfig is
    composed of each paper's config), so `--help` says what each flag does."""
    found = {}
    for base in reversed(cls.__mro__):  # bases first: a field redefined in a subclass takes the subclass's comment
        if dataclasses.is_dataclass(base) and base is not object:
            for line in inspect.getsource(base).splitlines():
                m = re.match(r"\s+(\w+): [^#]*#\s*(.+)$", line)           # "    name: type = default  # help"
                if m:
                    found[m.group(1)] = m.group(2).strip()
    return found


def add_dataclass_flags(parser, cls, defaults_none: bool = False):
    """One flag per field of `cls`, typed like the field, with the field's comment as its help."""
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        # annotations are strings under `from __future__ import annotations`; bool needs parse_bool (bool("false") is True)
        kind = parse_bool if f.type in (bool, "bool") else {"int": int, "float": float}.get(str(f.type), None)
        kind = kind or (type(f.default) if f.default is not None else str)
        # defaults_none: the flag overrides a preset, so "not given" must stay distinguishable from the default
        default = "the preset's" if defaults_none else f.default
        parser.add_argument(f"--{f.name}", type=kind, default=None if defaults_none else f.default,
                            help=f"{helps.get(f.name, '')} (default: {default})".replace("%", "%%"))
