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

Every problem is one `DataError` naming the line: a key given twice at any level, a placeholder
other than {X} (in text and placebo; none is filled in education or demo_header), a value of the
wrong type, nesting deeper than any bias file needs, text that is not valid Unicode.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from biasmed._json import has_surrogate
from biasmed.dataset.biases import PLACEMENTS, BiasTemplate
from biasmed.errors import DataError
from biasmed.records import BIASES, NONE, V2_BIASES

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_FIELDS = {"name", "text", "placement", "education", "demo_header", "description", "placebo"}
_RESERVED = set(BIASES) | set(V2_BIASES) | {NONE, "default", "all", "placebo", "custom"}
MAX_DEPTH = 8  # a bias file is three levels deep (file > biases > entry)
# a placeholder is {name}: the templates fill {X} (see prompts/*.toml) and nothing else
_PLACEHOLDER = re.compile(r"\{[^{}\s]*\}")
_FILLED = {"text": ("{X}",), "placebo": ("{X}",), "education": (), "demo_header": ()}


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(path: str, key: yaml.Node, value: yaml.Node, where: str) -> str:
    if not isinstance(value, yaml.ScalarNode) or value.tag != "tag:yaml.org,2002:str":
        raise DataError(path, _line(value), where, f"must be a string, not {_kind(value)}")
    text = str(value.value)
    if has_surrogate(text):
        raise DataError(
            path, _line(value), where, "a lone surrogate (an unpaired \\ud800-\\udfff escape): not valid text"
        )
    field = where.rsplit(".", 1)[-1]
    for ph in _PLACEHOLDER.findall(text):
        if ph not in _FILLED.get(field, ph):
            known = " and ".join(_FILLED[field]) or "none"
            raise DataError(path, _line(value), where, f"unknown placeholder {ph} (filled here: {known})")
    return text


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {
        "tag:yaml.org,2002:null": "null",
        "tag:yaml.org,2002:bool": "true/false",
        "tag:yaml.org,2002:int": "a number",
        "tag:yaml.org,2002:float": "a number",
    }.get(node.tag, node.tag)


def _key(path: str, node: yaml.Node, where: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise DataError(path, _line(node), where or "file", f"a key must be a plain name, not {_kind(node)}")
    return str(node.value)


def _check_depth(path: str, text: str) -> None:
    """Refuse deep nesting from the event stream (iterative), before composing (recursive)."""
    depth = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise DataError(
                    path, ev.start_mark.line + 1, "yaml", f"nested deeper than {MAX_DEPTH} levels (a bias file needs 3)"
                )
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1


def _check_duplicate_keys(path: str, root: yaml.Node) -> None:
    """A key given twice in any mapping, at any level: YAML would silently keep the last."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # aliases can make cycles
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in first:
                        raise DataError(path, _line(k), str(k.value), f"given twice (first at line {first[k.value]})")
                    first[k.value] = _line(k)
                stack.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _parse_entry(path: str, node: yaml.Node, index: int, seen: dict[str, int]) -> list[BiasTemplate]:
    where = f"biases[{index}]"
    if not isinstance(node, yaml.MappingNode):
        raise DataError(path, _line(node), where, "must be a mapping with name and text")
    fields: dict[str, tuple[str, int]] = {}
    for k, v in node.value:
        key = _key(path, k, where)
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
    out = [
        BiasTemplate(
            name,
            placement,
            text.strip(),
            fields.get("education", ("", 0))[0].strip(),
            f"user: {desc}".rstrip(),
            fields.get("demo_header", ("", 0))[0],
        )
    ]
    if "placebo" in fields:
        ptext, pl = fields["placebo"]
        if ptext.count("{X}") != 1:
            raise DataError(path, pl, f"{where}.placebo", "must contain {X} exactly once")
        out.append(
            BiasTemplate(
                f"placebo_{name}",
                placement,
                ptext.strip(),
                out[0].education,
                f"placebo control for {name}",
                "",
                name,
                name,
            )
        )
    return out


def read_yaml_list(path: str | Path, list_key: str) -> list[yaml.Node]:
    """The entries of `list_key` in a schema-1 YAML file (bias and mitigation files share this
    reading: encoding, depth, duplicate keys, top-level fields), as nodes that keep line numbers."""
    p = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(p, 0, "file", "does not exist") from None
    except OSError as e:
        raise DataError(p, 0, "file", f"cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(p, line, "file", f"not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    try:
        _check_depth(p, text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise DataError(p, line, "yaml", str(e.problem or e.context or "not valid YAML")) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (NUL, other controls)
        line = text.count("\n", 0, e.position) + 1
        raise DataError(
            p,
            line,
            "yaml",
            f"character #x{e.character:04x} is not allowed in YAML"
            if isinstance(e.character, int)
            else "not valid YAML text",
        ) from None
    except yaml.YAMLError as e:
        raise DataError(p, 1, "yaml", str(e).splitlines()[0] if str(e) else "not valid YAML") from None
    if root is None:
        raise DataError(p, 1, "file", f"empty: expected a mapping with a '{list_key}' list")
    if not isinstance(root, yaml.MappingNode):
        raise DataError(p, _line(root), "file", f"expected a mapping with a '{list_key}' list")
    _check_duplicate_keys(p, root)
    top = {_key(p, k, ""): (k, v) for k, v in root.value}
    for key, (knode, _) in top.items():
        if key not in (list_key, "schema"):
            raise DataError(p, _line(knode), key, f"unknown top-level field (expected '{list_key}', optional 'schema')")
    if "schema" in top and (not isinstance(top["schema"][1], yaml.ScalarNode) or str(top["schema"][1].value) != "1"):
        raise DataError(p, _line(top["schema"][1]), "schema", "only schema 1 is supported")
    if list_key not in top:
        raise DataError(p, 1, list_key, "missing")
    lst = top[list_key][1]
    if not isinstance(lst, yaml.SequenceNode) or not lst.value:
        raise DataError(p, _line(lst), list_key, "must be a non-empty list")
    return list(lst.value)


def load_bias_file(path: str | Path) -> dict[str, BiasTemplate]:
    """Parse and validate one bias YAML file; raise DataError (`path:line: field: problem`)."""
    p = str(path)
    nodes = read_yaml_list(path, "biases")
    seen: dict[str, int] = {}
    out: dict[str, BiasTemplate] = {}
    for i, node in enumerate(nodes):
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
