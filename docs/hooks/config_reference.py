"""MkDocs hook: the configuration reference, generated from conf/ at build time.

A page holding the line ``<!-- conf-reference -->`` gets, in its place, for each command's
config (conf/<name>.yaml) its description and top-level keys with their defaults and comments,
and for each config group (conf/<group>/) its options with their descriptions. The text comes
from the YAML files' own comments, so the reference cannot drift from the configs.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parents[2] / "conf"
MARKER = "<!-- conf-reference -->"
TOP_KEY = re.compile(r"^(?P<key>[A-Za-z_][\w.]*):\s*(?P<value>[^#]*?)\s*(?:#\s*(?P<comment>.*))?$")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").strip()


def _header(path: Path) -> str:
    """The file's leading comment block, as one paragraph."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.lstrip("#").strip().startswith("@package"):  # Hydra's directive, not prose
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def _keys(path: Path) -> list[tuple[str, str, str]]:
    """Top-level keys other than `defaults`: (key, default as written or a nested block, comment)."""
    rows, current = [], None
    for line in path.read_text().splitlines():
        match = TOP_KEY.match(line)
        if match and match["key"] != "defaults":
            value = match["value"] or "(a block: see the file)"
            current = [match["key"], value, match["comment"] or ""]
            rows.append(current)
        elif current is not None and re.match(r"^\s{20,}#", line) and not match:
            current[2] += " " + line.strip().lstrip("#").strip()  # a comment continued below
        elif line and not line.startswith((" ", "#")):
            current = None
    return [tuple(row) for row in rows]


def _defaults(path: Path) -> dict[str, str]:
    data = yaml.safe_load(path.read_text()) or {}
    chosen = {}
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                chosen[str(group)] = str(option)
    return chosen


def reference() -> str:
    commands = sorted(CONF.glob("*.yaml"))
    out = ["## Commands", ""]
    for path in commands:
        name = path.stem
        out += [f"### `{name}` (`conf/{path.name}`)", "", _header(path), ""]
        chosen = _defaults(path)
        groups = {group: option for group, option in chosen.items() if (CONF / group.split("@")[0]).is_dir()
                  and group != "hydra"}
        if groups:
            out += ["Config groups: " + ", ".join(f"`{group}={option}`" for group, option in groups.items()), ""]
        rows = _keys(path)
        if rows:
            out += ["| key | default | meaning |", "|---|---|---|"]
            out += [f"| `{key}` | `{_cell(value)}` | {_cell(comment)} |" for key, value, comment in rows]
            out.append("")
    out += ["## Config groups", "",
            "Pick an option with `<group>=<option>` on the command line (e.g. `model=small`); "
            "override one of its keys with `<group>.<key>=<value>`.", ""]
    for folder in sorted(item for item in CONF.iterdir() if item.is_dir() and item.name != "hydra"):
        users = [path.stem for path in commands if folder.name in _defaults(path)]
        out += [f"### `{folder.name}/`", ""]
        if users:
            out += ["Default " + ", ".join(f"`{_defaults(CONF / f'{user}.yaml')[folder.name]}` in `{user}`"
                                           for user in users) + ".", ""]
        out += ["| option | what it is |", "|---|---|"]
        for option in sorted(folder.glob("*.yaml")):
            out.append(f"| `{option.stem}` | {_cell(_header(option))} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
