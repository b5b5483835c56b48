"""Plain records that flow through biasmed: Question -> Item -> Prompt -> Sample.

Each is a frozen dataclass that serializes to one JSON object (one line of a JSONL file).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

BIASES: tuple[str, ...] = (
    "self_diagnosis",
    "recency",
    "confirmation",
    "frequency",
    "cultural",
    "status_quo",
    "false_consensus",
)
V2_BIASES: tuple[str, ...] = ("confirmation_v2", "false_consensus_v2")
NONE = "none"
MITIGATIONS: tuple[str, ...] = ("none", "education", "one-shot", "few-shot")
TEMPLATE_VERSIONS: tuple[str, ...] = ("paper-2024", "paper-2023")
DEFAULT_TEMPLATE_VERSION = "paper-2024"
TARGET_MODES: tuple[str, ...] = ("incorrect", "correct", "random")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Question:
    """One multiple-choice question, as loaded and validated from MedQA (or the demo set)."""

    id: str  # "<split>-<0-based line number>", e.g. "test-0042"
    question: str
    options: dict[str, str]  # letters from "A", in order
    answer_idx: str
    answer: str
    meta_info: str = ""
    split: str = "test"

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(self.options)

    @property
    def wrong_letters(self) -> tuple[str, ...]:
        return tuple(letter for letter in self.options if letter != self.answer_idx)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Item:
    """A question under one bias condition; the unbiased twin is `question` itself."""

    question: Question
    bias: str  # "none" for the unbiased twin
    text: str  # the (possibly biased) question text
    target: str | None = None  # the planted letter; None when unbiased
    target_mode: str = "incorrect"
    template_version: str = DEFAULT_TEMPLATE_VERSION
    draw: int = 0  # which re-draw of targets (0 = the default draw)

    @property
    def id(self) -> str:
        base = f"{self.question.id}|{self.bias}"
        return base if self.draw == 0 else f"{base}|d{self.draw}"

    @property
    def target_text(self) -> str | None:
        return None if self.target is None else self.question.options[self.target]


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: exact text plus the chat-message form sent to chat models."""

    item: Item
    mitigation: str
    text: str
    role: str = "system"  # the paper sent the whole prompt as one system message
    demo_ids: tuple[str, ...] = ()

    @property
    def sample_id(self) -> str:
        q, it = self.item.question, self.item
        base = f"{q.id}|{it.bias}|{self.mitigation}"
        return base if it.draw == 0 else f"{base}|d{it.draw}"

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)

    def messages(self, role: str | None = None) -> list[dict[str, str]]:
        return [{"role": role or self.role, "content": self.text}]


@dataclass
class Sample:
    """One answered prompt: a line of `results/<run>/samples.jsonl`."""

    sample_id: str
    question_id: str
    bias: str
    mitigation: str
    template_version: str
    answer_idx: str
    bias_target: str | None
    prompt_sha256: str
    model: str
    response: str | None = None
    extracted: str | None = None
    rule: str | None = None
    correct: bool | None = None
    nr: bool | None = None
    error: str | None = None
    target_mode: str = "incorrect"
    draw: int = 0
    n_options: int = 5
    mode: str = "generate"
    logprobs: dict[str, float] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    cached: bool = False
    latency_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sample":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})
