"""Plain records that flow through biasmed: Question -> Item -> Prompt -> Answer -> Sample.

Each is a dataclass that serializes to one JSON object (one line of a JSONL file). They are the
shared vocabulary of every stage (dataset, models, run, analysis, report), so this module imports
nothing of biasmed's.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
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
MITIGATIONS: tuple[str, ...] = ("none", "education", "one-shot", "few-shot", "reasoning", "debias", "reflect")
PAPER_MITIGATIONS: tuple[str, ...] = MITIGATIONS[:4]
# how a reply is read: the paper's single letter, or free reasoning ending with `Answer: X`
ANSWER_FORMATS: tuple[str, ...] = ("letter", "answer-line")
MITIGATION_KINDS: tuple[str, ...] = ("instruction", "demos", "chain")
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
    kind: str = "instruction"  # the mitigation's kind (MITIGATION_KINDS)
    # how each turn's reply is read (ANSWER_FORMATS): one per turn; the last one is the answer
    formats: tuple[str, ...] = ("letter",)
    follow_ups: tuple[str, ...] = ()  # a chain's user turns after the first reply
    # the conversation after the first message, for a chain's later turns: (role, content) pairs
    history: tuple[tuple[str, str], ...] = ()

    @property
    def sample_id(self) -> str:
        q, it = self.item.question, self.item
        base = f"{q.id}|{it.bias}|{self.mitigation}"
        return base if it.draw == 0 else f"{base}|d{it.draw}"

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)

    @property
    def choices(self) -> tuple[str, ...]:
        """The option letters the model chooses among (what a model adapter may read)."""
        return self.item.question.letters

    @property
    def question_id(self) -> str:
        return self.item.question.id

    @property
    def answer_format(self) -> str:
        return self.formats[-1]

    @property
    def turns(self) -> int:
        return 1 + len(self.follow_ups)

    def at_turn(self, replies: tuple[str, ...]) -> Prompt:
        """This chain's prompt for the turn after `replies` (the model's earlier replies): the
        first message, then each reply and the follow-up that came after it."""
        hist: list[tuple[str, str]] = []
        for reply, follow in zip(replies, self.follow_ups, strict=False):  # replies so far
            hist += [("assistant", reply), ("user", follow)]
        return replace(self, history=tuple(hist))

    def messages(self, role: str | None = None) -> list[dict[str, str]]:
        first = [{"role": role or self.role, "content": self.text}]
        return first + [{"role": r, "content": c} for r, c in self.history]

    def transcript(self) -> str:
        """The conversation as one text, for models without a chat template: a reply continues the
        text it answers; a follow-up starts a new paragraph."""
        out = self.text
        for r, c in self.history:
            out += c if r == "assistant" else f"\n\n{c}\n"
        return out


MODES: tuple[str, ...] = ("generate", "logprob")


@dataclass(frozen=True)
class GenParams:
    """Generation parameters: part of every cache key and of a run folder's identity."""

    mode: str = "generate"  # "generate": the model writes a reply; "logprob": letter log-probs
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    role: str = "system"  # the paper's one system message; "user" is the alternative

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ErrorKind(str, Enum):
    """Why one sample has no usable answer; shared by API and local adapters (and the runner)."""

    CONTEXT_LENGTH = "context_length"  # the prompt does not fit the model's context
    BAD_REQUEST = "bad_request"  # the server refused this request (400/422)
    CONTENT_FILTER = "content_filter"  # a provider's safety filter blocked prompt or reply
    NOT_FOUND = "not_found"  # replay: no answer recorded for this sample
    FAILED = "failed"  # still failing after every retry (errors.jsonl, not written as a sample)
    OTHER = "other"


@dataclass
class Answer:
    """What a model said for one prompt (or why it said nothing: `error` and `error_kind`)."""

    text: str | None = None
    logprobs: dict[str, float] | None = None  # option letter -> log-prob (logprob mode)
    usage: dict[str, int] = field(default_factory=dict)  # input_tokens, output_tokens
    error: str | None = None  # a failure of THIS sample, with the reason
    error_kind: ErrorKind | None = None
    finish_reason: str | None = None
    refusal: str | None = None
    cached: bool = False
    latency_s: float | None = None
    truncated_chars: int | None = None  # characters cut off a reply over --max-response-chars

    @classmethod
    def failure(cls, kind: ErrorKind, message: str, **kw: Any) -> Answer:
        return cls(error=f"{kind.value}: {message}", error_kind=kind, **kw)

    def to_cache(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cached", None)
        d.pop("latency_s", None)
        d["error_kind"] = None if self.error_kind is None else self.error_kind.value
        return d

    @classmethod
    def from_cache(cls, d: dict[str, Any]) -> Answer:
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("error_kind") is not None:
            kw["error_kind"] = ErrorKind(kw["error_kind"])
        return cls(**kw, cached=True)


SAMPLE_SCHEMA = 2  # 1: biasmed 0.1.0 (no choices/options/text/error_kind); 2: 0.2.0


@dataclass
class Sample:
    """One answered prompt: a line of `results/<run>/samples.jsonl`, the one record every stage
    after the run reads (the runner and the paper-log importer write it; analysis and reports read
    it). It carries the choices, so scoring needs nothing else, and the question text as shown, so
    a report needs no dataset.
    """

    sample_id: str
    question_id: str | None  # None: a paper-log record not matched to MedQA
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
    # schema 2 (0.2.0): what scoring and reports need, carried by the sample itself
    choices: list[str] | None = None  # option letters, in order
    options: dict[str, str] | None = None  # letter -> option text
    text: str | None = None  # the question as shown to the model (biased where a bias applies)
    error_kind: str | None = None  # an ErrorKind value
    schema: int = SAMPLE_SCHEMA

    @property
    def letters(self) -> str:
        """The option letters: recorded (schema 2), else A.. by n_options (0.1.0 folders)."""
        return "".join(self.choices) if self.choices else "ABCDE"[: self.n_options or 5]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        kw.setdefault("schema", 1)  # a line without `schema` was written by 0.1.0
        return cls(**kw)
