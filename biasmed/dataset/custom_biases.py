"""User-authored biases from YAML files (`--bias-file`), validated with one-line errors.

Schema (version 1), documented in the README:

    biases:
      - name: anchoring_lab            # [a-z][a-z0-9_]*, not a built-in bias name
        text: "An initial lab panel pointed towards {X}."   # exactly one {X}
        placement: append              # append | after_first_sentence   (default: append)
        education: "Interpret each value in context ..."    # optional, for --mitigations education
        demo_header: "### Example: ... anchoring.\\n"        # optional one-/few-shot header
        description: "Anchoring on an earlier lab value"    # optional
        placebo: "One of the options is {X}."               # optional placebo control sentence
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from biasmed.dataset.biases import PLACEMENTS, BiasTemplate
from biasmed.dataset.medqa import DataError
from biasmed.records import BIASES, NONE, V2_BIASES

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_FIELDS = {"name", "text", "placement", "education", "demo_header", "description", "placebo"}
_RESERVED = set(BIASES) | set(V2_BIASES) | {NONE, "default", "all", "placebo", "custom"}


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(path: str, key: yaml.Node, value: yaml.Node, where: str) -> str:
    if not isinstance(value, yaml.ScalarNode) or value.tag != "tag:yaml.org,2002:str":
        raise DataError(path, _line(value), where, "must be a string")
    return str(value.value)


def _parse_entry(path: str, node: yaml.Node, index: int, seen: dict[str, int]) -> list[BiasTemplate]:
    where = f"biases[{index}]"
    if not isinstance(node, yaml.MappingNode):
        raise DataError(path, _line(node), where, "must be a mapping with name and text")
    fields: dict[str, tuple[str, int]] = {}
    for k, v in node.value:
        key = str(k.value)
        if key not in _FIELDS:
            raise DataError(path, _line(k), f"{where}.{key}", f"unknown field (known: {', '.join(sorted(_FIELDS))})")
        if key in fields:
            raise DataError(path, _line(k), f"{where}.{key}", "given twice")
        fields[key] = (_scalar(path, k, v, f"{where}.{key}"), _line(v))
    for req in ("name", "text"):
        if req not in fields:
            raise DataError(path, _line(node), f"{where}.{req}", "missing")
    name, nline = fields["name"]
    if not _NAME.match(name):
        raise DataError(path, nline, f"{where}.name", f"{name!r} must match [a-z][a-z0-9_]*")
    if name in _RESERVED or name.startswith("placebo_"):
        raise DataError(path, nline, f"{where}.name", f"{name!r} is reserved (a built-in bias or keyword)")
    if name in seen:
        raise DataError(path, nline, f"{where}.name", f"{name!r} already defined at line {seen[name]}")
    seen[name] = nline
    text, tline = fields["text"]
    if text.count("{X}") != 1:
        raise DataError(path, tline, f"{where}.text", "must contain {X} exactly once (the planted option)")
    placement, pline = fields.get("placement", ("append", nline))
    if placement not in PLACEMENTS:
        raise DataError(path, pline, f"{where}.placement", f"{placement!r} is not one of {', '.join(PLACEMENTS)}")
    desc = fields.get("description", ("", 0))[0]
    out = [BiasTemplate(name, placement, text.strip(), fields.get("education", ("", 0))[0].strip(),
                        f"user: {desc}".rstrip(), fields.get("demo_header", ("", 0))[0])]
    if "placebo" in fields:
        ptext, pl = fields["placebo"]
        if ptext.count("{X}") != 1:
            raise DataError(path, pl, f"{where}.placebo", "must contain {X} exactly once")
        out.append(BiasTemplate(f"placebo_{name}", placement, ptext.strip(), out[0].education,
                                f"placebo control for {name}", "", name, name))
    return out


def load_bias_file(path: str | Path) -> dict[str, BiasTemplate]:
    """Parse and validate one bias YAML file; raise DataError (`path:line: field: problem`)."""
    p = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except FileNotFoundError:
        raise DataError(p, 0, "file", "does not exist") from None
    except UnicodeDecodeError:
        raise DataError(p, 1, "file", "not UTF-8 text") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise DataError(p, line, "yaml", str(getattr(e, "problem", None) or "not valid YAML")) from None
    if root is None:
        raise DataError(p, 1, "file", "empty: expected a mapping with a 'biases' list")
    if not isinstance(root, yaml.MappingNode):
        raise DataError(p, _line(root), "file", "expected a mapping with a 'biases' list")
    top = {str(k.value): (k, v) for k, v in root.value}
    for key, (knode, _) in top.items():
        if key not in ("biases", "schema"):
            raise DataError(p, _line(knode), key, "unknown top-level field (expected 'biases', optional 'schema')")
    if "schema" in top and str(top["schema"][1].value) != "1":
        raise DataError(p, _line(top["schema"][1]), "schema", "only schema 1 is supported")
    if "biases" not in top:
        raise DataError(p, 1, "biases", "missing")
    lst = top["biases"][1]
    if not isinstance(lst, yaml.SequenceNode) or not lst.value:
        raise DataError(p, _line(lst), "biases", "must be a non-empty list")
    seen: dict[str, int] = {}
    out: dict[str, BiasTemplate] = {}
    for i, node in enumerate(lst.value):
        for b in _parse_entry(p, node, i, seen):
            out[b.name] = b
    return out


def load_bias_files(paths: Sequence[str | Path]) -> dict[str, BiasTemplate]:
    out: dict[str, BiasTemplate] = {}
    for path in paths:
        for name, b in load_bias_file(path).items():
            if name in out:
                raise DataError(str(path), 0, "name", f"{name!r} is also defined in an earlier --bias-file")
            out[name] = b
    return out
