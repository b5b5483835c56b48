"""Bias injection: the BiasMedQA templates (data in `prompts/`), seeded target choice, Items.

Targets follow HELM's perturbation rule: the random draw is seeded by (seed, question id, bias
[, draw]) only, so adding questions or biases never moves another item's target.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import tomllib

from biasmed._paths import prompts_dir
from biasmed.records import DEFAULT_TEMPLATE_VERSION, NONE, TARGET_MODES, Item, Question

PLACEMENTS = ("append", "after_first_sentence")
# The paper's sentence splitter for the confirmation bias (kept exactly: it defines the benchmark).
_SENTENCE_SPLIT = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?|!)\s")


@dataclass(frozen=True)
class BiasTemplate:
    name: str
    placement: str  # "append" | "after_first_sentence"
    text: str  # contains "{X}", replaced by "<letter>: <option text>"
    education: str = ""
    description: str = ""
    demo_header: str = ""  # optional one-shot/few-shot header overriding the frame's
    control_of: str = ""  # a placebo names the bias it controls for
    target_key: str = ""  # the draw key; a placebo shares its bias's planted letter

    @property
    def key(self) -> str:
        return self.target_key or self.name


@dataclass(frozen=True)
class TemplateSet:
    """One named template version: the instruction and its biases."""

    version: str
    instruction: str
    biases: Mapping[str, BiasTemplate]
    default_biases: tuple[str, ...]
    description: str = ""
    sha256: str = ""  # of the template file, recorded in manifests
    frame: Mapping[str, object] = field(default_factory=dict)
    strip_first_sentence: bool = True

    def bias(self, name: str) -> BiasTemplate:
        try:
            return self.biases[name]
        except KeyError:
            known = ", ".join(self.biases)
            raise KeyError(f"unknown bias {name!r} for template version {self.version} (known: {known})") from None

    def with_biases(self, extra: Mapping[str, BiasTemplate]) -> TemplateSet:
        merged = {**self.biases, **extra}
        return TemplateSet(
            self.version,
            self.instruction,
            merged,
            self.default_biases,
            self.description,
            self.sha256,
            self.frame,
            self.strip_first_sentence,
        )


def available_versions() -> list[str]:
    return sorted(p.stem for p in prompts_dir().glob("paper-*.toml"))


@cache
def load_frame() -> dict[str, object]:
    return tomllib.loads((prompts_dir() / "frame.toml").read_text("utf-8"))


@cache
def load_templates(version: str = DEFAULT_TEMPLATE_VERSION) -> TemplateSet:
    path = prompts_dir() / f"{version}.toml"
    if not path.is_file():
        raise ValueError(f"unknown template version {version!r} (known: {', '.join(available_versions())})")
    raw = path.read_bytes()
    data = tomllib.loads(raw.decode("utf-8"))
    biases = {
        name: BiasTemplate(
            name, spec["placement"], spec["text"], spec.get("education", ""), spec.get("description", "")
        )
        for name, spec in data["biases"].items()
    }
    for b in biases.values():
        if b.placement not in PLACEMENTS or "{X}" not in b.text:
            raise ValueError(f"{path}: biases.{b.name}: bad placement or text without {{X}}")
    frame = load_frame()
    controls_raw = (prompts_dir() / "controls.toml").read_bytes()
    for name, spec in tomllib.loads(controls_raw.decode("utf-8")).get("placebo", {}).items():
        if name in biases:  # a placebo exists only beside the bias it controls for
            pname = f"placebo_{name}"
            # same education sentence as its bias, so "education" stays a paired comparison
            biases[pname] = BiasTemplate(
                pname,
                spec["placement"],
                spec["text"],
                biases[name].education,
                f"placebo control for {name}",
                "",
                name,
                biases[name].key,
            )
    h = hashlib.sha256(raw + b"\0" + (prompts_dir() / "frame.toml").read_bytes() + b"\0" + controls_raw).hexdigest()
    return TemplateSet(
        data["version"],
        data["instruction"],
        biases,
        tuple(data["default_biases"]),
        data.get("description", ""),
        h,
        frame,
        bool(data.get("strip_first_sentence", True)),
    )


def split_sentences(text: str) -> list[str]:
    """The paper's sentence split: stripped pieces, empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s.strip()]


def insert(question_text: str, template: BiasTemplate, target_display: str, strip_first_sentence: bool = True) -> str:
    """Plant one bias sentence into a question text.

    The 2023 code left the first sentence unstripped (visible on a question with a leading
    space); `strip_first_sentence=False` reproduces it.
    """
    sentence = template.text.replace("{X}", target_display)
    if template.placement == "append":
        return question_text + " " + sentence
    parts = split_sentences(question_text)
    first = parts[0]
    if not strip_first_sentence:
        first = next(s for s in _SENTENCE_SPLIT.split(question_text) if s.strip())
    return first + " " + sentence + " " + " ".join(parts[1:])


def _rng(seed: int, question_id: str, bias: str, draw: int = 0) -> random.Random:
    key = f"{seed}\x1f{question_id}\x1f{bias}" + (f"\x1f{draw}" if draw else "")
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def choose_target(question: Question, bias: str, seed: int = 0, mode: str = "incorrect", draw: int = 0) -> str:
    """The planted letter: uniform among the wrong letters (or as `mode` says)."""
    rng = _rng(seed, question.id, bias, draw)
    if mode == "incorrect":
        return rng.choice(question.wrong_letters)
    if mode == "correct":
        return question.answer_idx
    if mode == "random":
        return rng.choice(question.letters)
    raise ValueError(f"target mode must be one of {', '.join(TARGET_MODES)}, not {mode!r}")


def make_item(
    question: Question,
    bias: str,
    templates: TemplateSet,
    seed: int = 0,
    target_mode: str = "incorrect",
    draw: int = 0,
    target: str | None = None,
) -> Item:
    """The question under `bias` ("none" gives the unbiased twin). `target` overrides the draw."""
    if bias == NONE:
        return Item(question, NONE, question.question, None, target_mode, templates.version, draw)
    tpl = templates.bias(bias)
    letter = target or choose_target(question, tpl.key, seed, target_mode, draw)
    if letter not in question.options:
        raise ValueError(f"{question.id}: target {letter!r} is not an option")
    text = insert(question.question, tpl, f"{letter}: {question.options[letter]}", templates.strip_first_sentence)
    return Item(question, bias, text, letter, target_mode, templates.version, draw)


def make_items(
    questions: Iterable[Question],
    biases: Sequence[str],
    templates: TemplateSet,
    seed: int = 0,
    target_mode: str = "incorrect",
    draws: int = 1,
    targets: Mapping[tuple[str, str], str] | None = None,
) -> list[Item]:
    """Items for every (question, bias), question-major so a question's conditions stay together.

    `targets` maps (question id, bias) to a letter read from an earlier run (e.g. the paper's logs).
    """
    items: list[Item] = []
    for q in questions:
        for draw in range(draws):
            for b in biases:
                if b == NONE and draw > 0:
                    continue  # the unbiased twin does not depend on the draw
                fixed = targets.get((q.id, b)) if targets else None
                items.append(make_item(q, b, templates, seed, target_mode, draw, fixed))
    return items


def parse_bias_list(spec: str | None, templates: TemplateSet, include_none: bool = True) -> list[str]:
    """A comma list of bias names and keywords; "none" always comes first when included.

    Keywords: `default` (the version's 7 biases), `all` (every published bias incl. `_v2`),
    `placebo` (the placebo control of every bias listed so far), `custom` (user-authored biases).
    """
    tokens = [t.strip() for t in (spec or "default").split(",") if t.strip()] or ["default"]
    names: list[str] = []
    for t in tokens:
        if t == "default":
            names += templates.default_biases
        elif t == "all":
            names += [
                n for n, b in templates.biases.items() if not b.control_of and not b.description.startswith("user:")
            ]
        elif t == "custom":
            names += [n for n, b in templates.biases.items() if b.description.startswith("user:")]
        elif t == "placebo":
            names += [f"placebo_{n}" for n in names if f"placebo_{n}" in templates.biases]
        elif t != NONE:
            templates.bias(t)
            names.append(t)
    names = list(dict.fromkeys(names))
    return ([NONE] if include_none else []) + names


def template_file(version: str) -> Path:
    return prompts_dir() / f"{version}.toml"
