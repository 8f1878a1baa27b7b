"""`ddb params --describe`: each params key with its composed value, its comment in
conf/config.yaml and the dvc.yaml stages that list it (so re-run when it changes)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from ddb.dvcfile import Stage, covers, stages_listing

SECTION = object()  # flatten's value of a key that holds other keys
# a block-mapping key line: indent, key, the rest (value and comment)
KEY_LINE = re.compile(r"^( *)([A-Za-z_][\w]*):(.*)$")
COMMENT = re.compile(r"(?:^|\s)#\s?(.*)$")


def key_comments(text: str) -> dict[str, str]:
    """The comment of each dotted key in a YAML file laid out as conf/config.yaml is:
    a comment on the key's line, the comment lines below it indented past the key (its
    continuation), and a comment block right above it at its own indent (a lead-in)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the keys enclosing the current line
    last: tuple[int, str] | None = None  # (indent, dotted key) whose comment may continue
    lead: list[str] = []  # comment lines waiting for the key below them
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if stripped.startswith("#"):
            words = stripped.lstrip("#").strip()
            if last and indent > last[0] and last[1] in comments:
                comments[last[1]] += f" {words}"
            else:
                last = None
                lead.append(words)
            continue
        match = KEY_LINE.match(line)
        if not match:  # a blank line, a list item, a flow mapping's next line
            last, lead = None, []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        key = ".".join(name for _, name in stack)
        own = COMMENT.search(_after_quoted(match.group(3)))
        parts = [*lead, *([own.group(1).strip()] if own else [])]
        if parts:
            comments[key] = " ".join(parts)
        last, lead = (indent, key), []
    return comments


def flatten(params: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Every dotted key, sections before their keys (a section's value is SECTION)."""
    keys: list[tuple[str, Any]] = []
    for name, value in params.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            keys.append((key, SECTION))
            keys.extend(flatten(value, f"{key}."))
        else:
            keys.append((key, value))
    return keys


def describe(
    params: dict, comments: dict[str, str], stages: dict[str, Stage], selected: list[str]
) -> str:
    """The text `ddb params --describe` prints: for each key (those under `selected`, or
    all), `key: value`, then its comment and the stages listing it, indented."""
    blocks = []
    for key, value in flatten(params):
        if selected and not any(covers(s, key) for s in selected):
            continue
        head = f"{key}:" if value is SECTION else f"{key}: {_flow(value)}"
        listing = stages_listing(key, stages)
        lines = [head]
        if key in comments:
            lines.append(f"    # {comments[key]}")
        lines.append(f"    stages: {', '.join(listing) if listing else '(none lists it)'}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def _flow(value: Any) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10**6)
        .strip()
        .removesuffix("...")
        .strip()
    )


def _after_quoted(rest: str) -> str:
    """A key line's rest from past its quoted value, if any: a '#' in quotes is no comment
    (and an apostrophe in the comment no quote)."""
    value = rest.lstrip()
    if value[:1] in ("'", '"'):
        end = value.find(value[0], 1)
        return value[end + 1 :] if end > 0 else ""
    return rest
