"""``fedlab-run --help``, read straight from conf/ instead of composed by Hydra.

Hydra's application help builds a config repository once per group option to list them (126
times for fedlab's conf/: 2.7 s on the reference machine, issue #22) and then composes and
prints the whole default config. This help lists the same groups and options from the files
themselves, each group's default from ``conf/config.yaml``'s defaults list, and that file's own
keys with their defaults and comments; it imports neither Hydra nor anything a run needs.
``fedlab-run --cfg job`` still prints the composed config, ``--hydra-help`` Hydra's flags.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import yaml

from fedlab.config.errors import ConfigError

PROG = "fedlab-run"
HELP_FLAGS = frozenset({"--help", "-h"})
PRIMARY = "config.yaml"
#: Python's byte code beside conf/__init__.py: never a group (Hydra filters it too).
PYCACHE = "__pycache__"
#: conf/hydra/ holds Hydra's settings, not the application's groups (Hydra's help leaves them
#: out too), and the defaults list's ``override hydra/...`` entries select them.
HYDRA_GROUP = "hydra"
#: ``key: value  # comment`` in block YAML; the comment is only taken when the value holds no
#: quote, where a ``#`` may be part of the string.
_COMMENTED = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:'\"][^:]*?):(?P<rest>.*)$")


def wants_help(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for fedlab's help and for nothing that needs Hydra.

    Any other flag (``--hydra-help``, ``--cfg``, ``--info``, ``-m``, ``--config-dir``, an
    abbreviation Hydra's argparse accepts) sends the whole command line to Hydra, which
    answers as it always has. Overrides (``key=value``) stay here: this help composes nothing.
    """
    flags = [arg for arg in argv if arg.startswith("-")]
    return bool(flags) and all(flag in HELP_FLAGS for flag in flags)


def conf_root() -> Traversable:
    """conf/ where ``fedlab-run``'s Hydra search path (``pkg://fedlab.conf``) finds it: the
    checkout's folder in an editable install, the installed package's otherwise."""
    return resources.files("fedlab.conf")


def config_groups(root: Traversable) -> dict[str, list[str]]:
    """Each application config group (``devices/profiles`` for a nested folder), sorted, with
    its sorted options: as Hydra lists them, a folder is a group when it holds ``.yaml`` files,
    and those files are its options."""
    groups: dict[str, list[str]] = {}

    def visit(folder: Traversable, group: str) -> None:
        entries = [e for e in folder.iterdir() if e.name != PYCACHE]
        options = [e.name.removesuffix(".yaml") for e in entries
                   if e.is_file() and e.name.endswith(".yaml")]
        if options:
            groups[group] = sorted(options)
        for entry in entries:
            if entry.is_dir():
                visit(entry, f"{group}/{entry.name}")

    for entry in root.iterdir():
        if entry.is_dir() and entry.name not in (PYCACHE, HYDRA_GROUP):
            visit(entry, entry.name)
    return dict(sorted(groups.items()))


def load_primary(root: Traversable) -> tuple[dict[str, Any], str]:
    """``conf/config.yaml`` parsed, and its text (for the comments).

    :raises ConfigError: the file is not YAML or not a mapping with a defaults list; the
        message names the file and, for a syntax error, the line.
    """
    where = f"conf/{PRIMARY}"
    text = root.joinpath(PRIMARY).read_text(encoding="utf-8")
    try:
        primary = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(where, f"{line}not valid YAML ({problem})") from None
    if not isinstance(primary, dict):
        raise ConfigError(where, "expected a mapping of keys")
    if not isinstance(primary.get("defaults", []), list):
        raise ConfigError(f"{where}: defaults", "expected a list")
    return primary, text


def group_defaults(defaults: Sequence[Any]) -> dict[str, str]:
    """What the defaults list selects for each application group, as the help shows it.

    Entries are ``group: option`` with an optional ``optional``/``override`` keyword and
    ``@package``; plain names (``_self_``, the schema) select no group. ``null`` selects
    nothing (``none``); an optional entry applies only when the file exists, which for an
    interpolated name (``${dataset}``) only composing can tell.
    """
    chosen: dict[str, str] = {}
    for entry in defaults:
        if not isinstance(entry, dict) or len(entry) != 1:
            continue
        ((key, option),) = entry.items()
        words = str(key).split()
        group = words[-1].split("@")[0].strip("/")
        if group == HYDRA_GROUP or group.startswith(f"{HYDRA_GROUP}/"):
            continue
        shown = ("none" if option is None
                 else ", ".join(map(str, option)) if isinstance(option, list) else str(option))
        chosen[group] = f"{shown}, if that option exists" if "optional" in words[:-1] else shown
    return chosen


def _shown(value: Any) -> str:
    """A value as an override spells it (``null``, ``true``, ``[128]``, ``{}``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(_shown, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return str(value)


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Every leaf under ``node`` with its dotted key (an empty mapping is a leaf: ``{}``)."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}")
    else:
        yield prefix, node


def _inline_comments(text: str) -> dict[str, str]:
    """Dotted key -> the comment on its line, for block YAML as conf/config.yaml is written;
    a key this cannot follow (flow style, a quoted ``#``) simply shows no comment."""
    comments: dict[str, str] = {}
    path: list[tuple[int, str]] = []
    for line in text.splitlines():
        match = _COMMENTED.match(line)
        if match is None or line.lstrip().startswith("- "):
            continue
        indent = len(match["indent"])
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, match["key"].strip()))
        value, sep, comment = match["rest"].partition(" #")
        if sep and not {"'", '"'} & set(value):
            comments[".".join(key for _, key in path)] = comment.strip()
    return comments


def top_level_keys(primary: Mapping[str, Any], text: str) -> list[str]:
    """conf/config.yaml's own keys (not its defaults list or Hydra's settings), one line per
    leaf: ``dotted.key: default`` and the comment the file gives it."""
    comments = _inline_comments(text)
    lines = []
    for top, node in primary.items():
        if top in ("defaults", HYDRA_GROUP):
            continue
        for key, value in _leaves(node, str(top)):
            note = f"  # {comments[key]}" if key in comments else ""
            lines.append(f"{key}: {_shown(value)}{note}")
    return lines


def render_help(root: Traversable, overrides: Sequence[str] = ()) -> str:
    """The whole help text for conf/ at ``root``; ``overrides`` given beside ``--help`` get a
    note that they are not applied (``--cfg job`` composes them)."""
    primary, text = load_primary(root)
    defaults = group_defaults(primary.get("defaults", []))
    parts = [
        f"usage: {PROG} [GROUP=OPTION ...] [KEY=VALUE ...] [-m] [--cfg job] [--hydra-help]",
        "",
        "Runs one federated-learning experiment configured by conf/config.yaml and Hydra",
        "overrides (with -m, one run per combination of comma-separated values); its record",
        "goes to outputs/<date>/<time>, or to hydra.run.dir=DIR.",
    ]
    if overrides:
        command = shlex.join([PROG, *overrides, "--cfg", "job"])
        parts += ["", "Overrides are not applied to this help; this prints what they compose:",
                  f"  {command}"]
    parts += [
        "",
        "== Configuration groups ==",
        "Compose your configuration from those groups (group=option); each group is a folder",
        f"of {root}, each option a YAML file in it.",
        "",
    ]
    for group, options in config_groups(root).items():
        default = f"  (default: {defaults[group]})" if group in defaults else ""
        parts.append(f"{group}: {', '.join(options)}{default}")
    parts += [
        "",
        "== Config ==",
        "Override anything in the config (foo.bar=value). conf/config.yaml's own keys, with",
        "their defaults; each group adds its keys (strategy.fraction_train=0.5).",
        "",
        *top_level_keys(primary, text),
        "",
        "== More ==",
    ]
    pointers = {
        f"{PROG} [OVERRIDES] --cfg job": "the whole composed config: every key and its value",
        f"{PROG} --hydra-help": "Hydra's own flags (--multirun, --cfg, --info, ...)",
        "README.md": '"Using it" and "Configuration": what the options do',
    }
    width = max(map(len, pointers)) + 2
    parts += [f"{where.ljust(width)}{what}" for where, what in pointers.items()]
    return "\n".join(parts)
