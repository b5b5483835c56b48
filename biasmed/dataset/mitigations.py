"""Mitigations as data: the built-ins of `prompts/mitigations.toml` and user YAML files.

A mitigation has a kind (instruction | demos | chain), a text added to the instruction, follow-up
turns (chains), and how its final answer is read ("letter" or "answer-line"). The paper's four
(none, education, one-shot, few-shot) are declared here with their kind; their wording stays in the
template files so they render byte-identically. User files (`--mitigation-file`), schema 1:

    mitigations:
      - name: consider_alternatives      # [a-z][a-z0-9_-]*, not a built-in name
        kind: instruction                # instruction | chain        (default: instruction)
        text: "Before you answer, ..."   # added to the instruction ({letters} is filled)
        answer: letter                   # letter | answer-line       (default: letter; chains: answer-line)
        follow_ups: ["Review ..."]       # chain only: the user turns after each reply
        description: "..."               # optional

Every problem is one DataError `path:line: field: problem`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
import yaml

from biasmed._json import has_surrogate
from biasmed._paths import prompts_dir
from biasmed.dataset.custom_biases import _key, _kind, _line, read_yaml_list
from biasmed.errors import DataError
from biasmed.records import ANSWER_FORMATS, MITIGATION_KINDS, PAPER_MITIGATIONS

MITIGATIONS_FILE = "mitigations.toml"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_RESERVED = {"baseline", "all", "default", "custom"}
_PLACEHOLDER = re.compile(r"\{[^{}\s]*\}")
_FILLED = ("{letters}",)


@dataclass(frozen=True)
class Mitigation:
    name: str
    kind: str  # MITIGATION_KINDS
    answer: str = "letter"  # how the final reply is read (ANSWER_FORMATS)
    text: str = ""  # added to the instruction after a space ({letters} filled)
    follow_ups: tuple[str, ...] = ()  # chains: one user turn after each reply
    first_answer: str = "letter"  # chains: how the first reply is read
    demos: int = 0
    paper: bool = False  # the paper's own: rendered from the template files
    description: str = ""
    source: str = "builtin"  # "builtin" or the user file it came from

    @property
    def formats(self) -> tuple[str, ...]:
        """How each turn's reply is read: the first, then one per follow-up (the last is the answer)."""
        if not self.follow_ups:
            return (self.answer,)
        return (self.first_answer, *(["answer-line"] * (len(self.follow_ups) - 1)), self.answer)


@dataclass(frozen=True)
class MitigationSet:
    version: str
    sha256: str
    drops: str  # the instruction's sentence an answer-line mitigation drops
    answer_line_max_tokens: int
    items: Mapping[str, Mitigation] = field(default_factory=dict)

    def get(self, name: str) -> Mitigation:
        try:
            return self.items[name]
        except KeyError:
            raise ValueError(f"unknown mitigation {name!r} (known: {', '.join(self.items)})") from None

    def with_user(self, extra: Mapping[str, Mitigation]) -> MitigationSet:
        return MitigationSet(
            self.version, self.sha256, self.drops, self.answer_line_max_tokens, {**self.items, **extra}
        )

    def manifest(self) -> dict[str, object]:
        user = {
            n: {
                "source": m.source,
                "kind": m.kind,
                "answer": m.answer,
                "text": m.text,
                "follow_ups": list(m.follow_ups),
            }
            for n, m in self.items.items()
            if m.source != "builtin"
        }
        return {"version": self.version, "sha256": self.sha256, **({"user": user} if user else {})}


def letters_phrase(letters: Sequence[str]) -> str:
    """ "A, B, C, D or E": how a mitigation's text names the choices."""
    ls = list(letters)
    return ls[0] if len(ls) == 1 else ", ".join(ls[:-1]) + " or " + ls[-1]


def load_mitigations(path: str | Path | None = None) -> MitigationSet:
    """The built-in mitigations (prompts/mitigations.toml)."""
    p = Path(path) if path else prompts_dir() / MITIGATIONS_FILE
    raw = p.read_bytes()
    data = tomllib.loads(raw.decode("utf-8"))
    al = data.get("answer-line", {})
    items: dict[str, Mitigation] = {}
    for name, d in data["mitigations"].items():
        m = Mitigation(
            name=name,
            kind=d["kind"],
            answer=d.get("answer", "letter"),
            text=d.get("text", ""),
            follow_ups=tuple(d.get("follow_ups", ())),
            first_answer=d.get("first_answer", "letter"),
            demos=int(d.get("demos", 0)),
            paper=bool(d.get("paper", False)),
            description=d.get("description", ""),
        )
        if m.kind not in MITIGATION_KINDS or m.answer not in ANSWER_FORMATS:
            raise ValueError(f"{p}: mitigations.{name}: bad kind or answer")
        items[name] = m
    missing = set(PAPER_MITIGATIONS) - {n for n, m in items.items() if m.paper}
    if missing:
        raise ValueError(f"{p}: the paper's mitigations must be declared (paper = true): {sorted(missing)}")
    return MitigationSet(
        str(data["version"]),
        hashlib.sha256(raw).hexdigest(),
        str(al.get("drops", "")),
        int(al.get("max_tokens", 512)),
        items,
    )


# -- user files --------------------------------------------------------------------------------------

_FIELDS = {"name", "kind", "text", "answer", "follow_ups", "description"}


def _text(path: str, node: yaml.Node, where: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
        raise DataError(path, _line(node), where, f"must be a string, not {_kind(node)}")
    text = str(node.value)
    if has_surrogate(text):
        raise DataError(
            path, _line(node), where, "a lone surrogate (an unpaired \\ud800-\\udfff escape): not valid text"
        )
    for ph in _PLACEHOLDER.findall(text):
        if ph not in _FILLED:
            raise DataError(
                path, _line(node), where, f"unknown placeholder {ph} (filled here: {' and '.join(_FILLED)})"
            )
    return text


def _parse_entry(
    path: str, node: yaml.Node, index: int, seen: dict[str, int], builtin: Mapping[str, Mitigation]
) -> Mitigation:
    where = f"mitigations[{index}]"
    if not isinstance(node, yaml.MappingNode):
        raise DataError(path, _line(node), where, "must be a mapping with name and text")
    f: dict[str, tuple[yaml.Node, int]] = {}
    for k, v in node.value:
        key = _key(path, k, where)
        if key not in _FIELDS:
            raise DataError(path, _line(k), f"{where}.{key}", f"unknown field (known: {', '.join(sorted(_FIELDS))})")
        f[key] = (v, _line(v))

    def s(key: str, default: str = "") -> str:
        return _text(path, f[key][0], f"{where}.{key}").strip() if key in f else default

    if "name" not in f:
        raise DataError(path, _line(node), f"{where}.name", "missing")
    name, nline = s("name"), f["name"][1]
    if not _NAME.match(name):
        raise DataError(path, nline, f"{where}.name", f"{name!r} must match [a-z][a-z0-9_-]*")
    if name in builtin or name in _RESERVED:
        raise DataError(path, nline, f"{where}.name", f"{name!r} is reserved (a built-in mitigation or keyword)")
    if name in seen:
        raise DataError(path, nline, f"{where}.name", f"{name!r} already defined at line {seen[name]}")
    seen[name] = nline
    kind = s("kind", "instruction")
    if kind not in ("instruction", "chain"):
        where_k = f"{where}.kind"
        hint = " (demos are the paper's one-shot/few-shot only)" if kind == "demos" else ""
        raise DataError(path, f["kind"][1], where_k, f"{kind!r} is not one of instruction, chain{hint}")
    follow: list[str] = []
    if "follow_ups" in f:
        fnode, fline = f["follow_ups"]
        if kind != "chain":
            raise DataError(path, fline, f"{where}.follow_ups", "only a chain has follow-up turns")
        items = fnode.value if isinstance(fnode, yaml.SequenceNode) else [fnode]
        follow = [_text(path, n, f"{where}.follow_ups[{i}]").strip() for i, n in enumerate(items)]
        if not follow or not all(follow):
            raise DataError(path, fline, f"{where}.follow_ups", "must be one or more non-empty strings")
    if kind == "chain" and not follow:
        raise DataError(path, _line(node), f"{where}.follow_ups", "missing (a chain needs at least one follow-up turn)")
    text = s("text")
    if kind == "instruction" and not text:
        raise DataError(
            path,
            f["text"][1] if "text" in f else _line(node),
            f"{where}.text",
            "missing or empty (an instruction mitigation adds this text)",
        )
    answer = s("answer", "answer-line" if kind == "chain" else "letter")
    if answer not in ANSWER_FORMATS:
        raise DataError(
            path, f["answer"][1], f"{where}.answer", f"{answer!r} is not one of {', '.join(ANSWER_FORMATS)}"
        )
    return Mitigation(name, kind, answer, text, tuple(follow), "letter", 0, False, s("description"), path)


def load_mitigation_file(path: str | Path, builtin: Mapping[str, Mitigation] | None = None) -> dict[str, Mitigation]:
    """Parse and validate one user mitigation YAML file; DataError `path:line: field: problem`."""
    p = str(path)
    builtin = builtin if builtin is not None else load_mitigations().items
    seen: dict[str, int] = {}
    out: dict[str, Mitigation] = {}
    for i, node in enumerate(read_yaml_list(path, "mitigations")):
        m = _parse_entry(p, node, i, seen, builtin)
        out[m.name] = m
    return out


def load_mitigation_set(files: Sequence[str | Path] = ()) -> MitigationSet:
    """The built-ins plus the mitigations of `files` (a name defined twice is refused)."""
    ms = load_mitigations()
    extra: dict[str, Mitigation] = {}
    for path in files:
        for name, m in load_mitigation_file(path, ms.items).items():
            if name in extra:
                raise DataError(str(path), 0, "name", f"{name!r} is also defined in an earlier --mitigation-file")
            extra[name] = m
    return ms.with_user(extra)
