"""The paper's published raw logs (BiasMedQA, Schmidgall et al. 2024) read back as biasmed samples.

One log file per (model, condition): `[ae_]bias_output[_{bias}][{mitigation}]_{model}.txt`, where the
mitigation part is `-mitigated` (education, 2023 runs), `_education` (2024 runs), `_one-shot` or
`_few-shot`, and `ae_` marks a copy whose IS_CORRECT was re-judged by a second model. Each record:

    ~~~~...~~~~ (100 tildes)
    PROMPT:
    {prompt}                      (ends with "### Answer: ", a trailing space)

    CORRECT ANSWER: {letter}: {text}
    RESPONSE: {reply}             (free text: empty, one letter, or many lines)
    IS_CORRECT: True|False|NR     (ae_ files: the judge's free text)

Each record is matched back to its MedQA question (the logs hold no ids): the planted bias sentence
is found and removed, and the remaining text looked up in MedQA, whitespace-normalised (the
confirmation split re-joins sentences with one space). The 2023 runs wrote some questions as raw
JSON text (literal `\\n`, `\\"`), so a JSON-unescaped form is tried next, then a nearly identical
text among questions with the same options or near the expected position (the logs follow MedQA's
order). Records still unmatched keep `question_id` None and are reported. Meditron's two flat
files are unbiased runs on the first 500 test questions, with their own prompt frame.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from biasmed.dataset.biases import load_templates
from biasmed.records import NONE, Question, Sample, sha256_text
from biasmed.results import RUN_JSON, SAMPLES, new_run_meta, read_run_json, write_json_atomic
from biasmed.scoring import verdict

TILDES = "~" * 100
# A record starts at a line of exactly 100 tildes followed by "PROMPT:" (tildes inside a prompt or
# a reply do not start a record).
_HEAD = "\n" + TILDES + "\nPROMPT:\n"
_NAME = re.compile(r"^(?P<ae>ae_)?bias_output(?P<rest>_[\w.+-]+)?\.txt$")
_OPTION_LETTERS = "ABCDE"

# Template versions told apart by the instruction's first line (the 2024 code misspelt "purposes").
_INSTRUCTION_VERSIONS = (
    ("for research puposes only", "paper-2024"),
    ("for research purposes only", "paper-2023"),
)
# Meditron's runs used a shorter instruction and blank lines between the blocks: no biasmed
# template renders it, so its samples carry this version name.
MEDITRON_VERSION = "paper-meditron"
_BIAS_ALIASES = {"cultural_bias": "cultural"}
_MITIGATION_SUFFIXES = (
    ("-mitigated", "education"),
    ("_education", "education"),
    ("_one-shot", "one-shot"),
    ("_few-shot", "few-shot"),
)
PAPER_RULE = "paper-first-char"
AE_RULE = "paper-ae-judge"


class LogFormatError(ValueError):
    """A log file that is not in the published format: one line naming file, record and field."""

    def __init__(self, source: str, record: int, line: int, field: str, problem: str):
        self.source, self.record, self.line = source, record, line
        super().__init__(f"{source}:{line}: {field}: {problem} (record {record})")


@dataclass(frozen=True)
class LogName:
    """What a log file's name says: model, condition, and whether it was re-judged."""

    model: str
    bias: str  # canonical biasmed name, "none" for the baseline
    mitigation: str  # "none" | "education" | "one-shot" | "few-shot"
    ae: bool


def parse_log_name(name: str, known_biases: Iterable[str] | None = None) -> LogName:
    """`[ae_]bias_output[_{bias}][{mitigation}]_{model}.txt` -> LogName (ValueError if not a log)."""
    base = os.path.basename(name)
    m = _NAME.match(base)
    if not m or not m.group("rest"):
        raise ValueError(f"{name}: not a BiasMedQA log file name ([ae_]bias_output[_bias][_mitigation]_model.txt)")
    # model names carry '-' and '.', never '_'; bias names carry '_'
    condition, _, model = m.group("rest")[1:].rpartition("_")
    if not model:
        raise ValueError(f"{name}: no model name in the file name")
    mitigation = "none"
    for suffix, mit in _MITIGATION_SUFFIXES:
        if condition.endswith(suffix) or condition == suffix[1:]:
            mitigation = mit
            condition = condition[: -len(suffix)] if condition.endswith(suffix) else ""
            break
    bias = _BIAS_ALIASES.get(condition, condition) or NONE
    known = set(known_biases) if known_biases is not None else _known_biases()
    if bias != NONE and bias not in known:
        raise ValueError(f"{name}: unknown bias {condition!r} in the file name")
    return LogName(model, bias, mitigation, bool(m.group("ae")))


def _known_biases() -> set[str]:
    names: set[str] = set()
    for version in ("paper-2023", "paper-2024"):
        names.update(load_templates(version).biases)
    return names


@dataclass(frozen=True)
class RawRecord:
    """One record of a log file, split into its fields and nothing more."""

    index: int  # 0-based position in the file
    line: int  # 1-based line of its "PROMPT:" line
    prompt: str
    answer_idx: str
    answer_text: str
    response: str
    is_correct: str  # as logged ("True", "False", "NR"; a judge's free text in ae_ files)


def parse_log_text(text: str, source: str, ae: bool = False) -> list[RawRecord]:
    """Split a log file's text into records (LogFormatError on anything off-format)."""
    # str.find, not a regex: this runs over half a gigabyte when importing every archive
    starts: list[int] = []  # offsets just after each "PROMPT:\n"
    marks: list[int] = []  # offsets of each record's tilde line
    if text.startswith(_HEAD[1:]):
        marks.append(0)
        starts.append(len(_HEAD) - 1)
    pos = 0
    while (k := text.find(_HEAD, pos)) >= 0:
        marks.append(k + 1)
        starts.append(k + len(_HEAD))
        pos = k + len(_HEAD)
    if not starts:
        if text.strip():
            raise LogFormatError(source, 0, 1, "PROMPT", "no record start (a line of 100 tildes, then PROMPT:)")
        return []
    if text[: marks[0]].strip():
        raise LogFormatError(source, 0, 1, "file", "text before the first record")
    out: list[RawRecord] = []
    line, pos = 1, 0
    for i, start in enumerate(starts):
        line += text.count("\n", pos, start - 1)  # the "PROMPT:" line, 1-based
        pos = start - 1
        end = marks[i + 1] - 1 if i + 1 < len(starts) else len(text)
        try:
            out.append(_parse_record(text[start:end], i, line, ae))
        except _FieldError as e:
            raise LogFormatError(source, i, line, e.field, e.problem) from None
    return out


class _FieldError(ValueError):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


_ANSWER_MARK = "\n\nCORRECT ANSWER: "
_RESPONSE_MARK = "\nRESPONSE: "
_VERDICT_MARK = "\nIS_CORRECT: "


def _parse_record(body: str, index: int, line: int, ae: bool) -> RawRecord:
    a = body.find(_ANSWER_MARK)
    if a < 0:
        raise _FieldError("CORRECT ANSWER", "missing")
    r = body.find(_RESPONSE_MARK, a)
    if r < 0:
        raise _FieldError("RESPONSE", "missing")
    # the verdict is the record's last line, except in ae_ files where a judge's text follows it
    v = body.find(_VERDICT_MARK, r) if ae else body.rfind(_VERDICT_MARK)
    if v < r:
        raise _FieldError("IS_CORRECT", "missing")
    prompt = body[:a]
    if not prompt.endswith("### Answer: "):
        raise _FieldError("PROMPT", "does not end with '### Answer: '")
    answer = body[a + len(_ANSWER_MARK) : r]
    letter, sep, answer_text = answer.partition(": ")
    if not sep or len(letter) != 1 or letter not in _OPTION_LETTERS:
        raise _FieldError("CORRECT ANSWER", f"expected '<letter>: <text>', got {answer[:40]!r}")
    response = body[r + len(_RESPONSE_MARK) : v]
    verdict = body[v + len(_VERDICT_MARK) :].rstrip("\n")
    return RawRecord(index, line, prompt, letter, answer_text, response, verdict)


# ---------------------------------------------------------------------------------------------
# The target question inside a prompt


@dataclass(frozen=True)
class PromptParts:
    instruction: str  # the first line, without "### Instruction: "
    question: str  # the target question's text as logged (bias sentence included)
    options: str  # the options line as logged: "A: ..., B: ..., ..."
    block_start: int  # offset of the target's "### Question: " in the prompt


def split_prompt(prompt: str) -> PromptParts:
    """The target question block: the last `### Question: ` of the prompt (demos come before it).

    Meditron's frame puts a blank line between the blocks; the others a single newline.
    """
    start = prompt.rfind("### Question: ")
    if start < 0:
        raise _FieldError("PROMPT", "no '### Question: ' block")
    q0 = start + len("### Question: ")
    o = prompt.find("\n### Options: ", q0)
    a = prompt.rfind("\n### Answer: ")
    if o < 0 or a < o or not prompt.endswith("### Answer: "):
        raise _FieldError("PROMPT", "target block is not '### Question: ... ### Options: ... ### Answer: '")
    question = prompt[q0:o].rstrip("\n")
    options = prompt[o + len("\n### Options: ") : a].rstrip("\n")
    first = prompt.split("\n", 1)[0]
    return PromptParts(first.removeprefix("### Instruction: "), question, options, start)


def template_version_of(instruction: str) -> str | None:
    for marker, version in _INSTRUCTION_VERSIONS:
        if marker in instruction:
            return version
    if instruction.startswith("You are a medical GPT model tasked with making clinical decisions."):
        return MEDITRON_VERSION
    return None


_OPTION_PATTERNS = tuple(
    (
        n,
        re.compile(
            "^A: (.*?)"
            + "".join(f", {L}: (.*?)" for L in _OPTION_LETTERS[1 : n - 1])
            + f", {_OPTION_LETTERS[n - 1]}: (.*)$",
            re.S,
        ),
    )
    for n in (5, 4)
)


def parse_options(options: str) -> dict[str, str] | None:
    """'A: x, B: y, ...' -> {letter: text}, 5 or 4 options; None when it does not parse."""
    for n, pattern in _OPTION_PATTERNS:
        m = pattern.match(options)
        if m:
            return dict(zip(_OPTION_LETTERS[:n], m.groups()))
    return None


# ---------------------------------------------------------------------------------------------
# Bias sentences: which one is planted, on which letter


@dataclass(frozen=True)
class _SentenceForm:
    prefix: str  # text before "{X}"
    suffix: str  # text after "{X}"
    placement: str
    pattern: re.Pattern[str]  # the prefix followed by "<letter>: "


@cache
def _sentence_forms(bias: str) -> tuple[_SentenceForm, ...]:
    """Every published wording of `bias` (2023 and 2024 differ for frequency)."""
    forms: list[_SentenceForm] = []
    for version in ("paper-2024", "paper-2023"):
        tpl = load_templates(version).biases.get(bias)
        if tpl is None:
            continue
        pre, _, suf = tpl.text.partition("{X}")
        if all(f.prefix != pre or f.suffix != suf for f in forms):
            forms.append(_SentenceForm(pre, suf, tpl.placement, re.compile(re.escape(pre) + r"([A-E]): ")))
    return tuple(forms)


@dataclass(frozen=True)
class Planted:
    target: str  # the planted letter
    sentence: str  # the sentence as it appears in the logged question
    start: int  # its offset in the logged question (the leading space excluded)


def find_planted(question: str, options: Mapping[str, str] | None, bias: str) -> Planted | None:
    """The bias sentence in a logged question: its letter, exact text and position."""
    for form in _sentence_forms(bias):
        for m in form.pattern.finditer(question):
            letter = m.group(1)
            if options and letter in options:
                sentence = f"{form.prefix}{letter}: {options[letter]}{form.suffix}"
                if question.startswith(sentence, m.start()):
                    return Planted(letter, sentence, m.start())
            # options that did not parse: take the sentence up to its fixed ending
            end = question.find(form.suffix, m.end())
            if end >= 0:
                return Planted(letter, question[m.start() : end + len(form.suffix)], m.start())
    return None


def remove_planted(question: str, planted: Planted) -> str:
    """The question without its bias sentence (whitespace as logged; compare normalised)."""
    before = question[: planted.start]
    after = question[planted.start + len(planted.sentence) :]
    return before.rstrip(" ") + (" " + after.lstrip(" ") if after.strip() else "")


# ---------------------------------------------------------------------------------------------
# Matching logged questions back to MedQA


def _norm(text: str) -> str:
    return " ".join(text.split())


def json_unescape(text: str) -> str:
    """Undo the raw-JSON escaping of the 2023 runs (`\\n`, `\\"`, `\\\\`, `\\uXXXX`)."""
    try:
        return json.loads('"' + text + '"')
    except ValueError:
        return text.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"').replace("\\\\", "\\")


def format_options(options: Mapping[str, str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in options.items())


MATCH_KINDS = ("exact", "unescaped", "options", "fuzzy")


@dataclass(frozen=True)
class Match:
    question: Question | None
    kind: str | None  # one of MATCH_KINDS, None when unmatched
    # True when the logged text is not MedQA's verbatim (raw JSON escapes): such prompts cannot
    # be re-rendered byte for byte, and fidelity checks count them apart
    escaped: bool = False


class QuestionIndex:
    """MedQA questions looked up by their normalised text, options, and position."""

    def __init__(self, questions: Sequence[Question]):
        self.questions = list(questions)
        self._by_text: dict[str, list[int]] = {}
        self._by_options: dict[str, list[int]] = {}
        self._options = [_norm(format_options(q.options)) for q in self.questions]
        for i, q in enumerate(self.questions):
            self._by_text.setdefault(_norm(q.question), []).append(i)
            self._by_options.setdefault(self._options[i], []).append(i)
        # the same question text recurs in every file of a model: remember unambiguous answers
        self._cache: dict[tuple[str, str], tuple[Match, int]] = {}

    def match(self, question: str, options: str, hint: int = 0) -> tuple[Match, int]:
        """(match, index) for a bias-free logged question; `hint` = the expected index."""
        key = (question, options)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        found = self._match(question, options, hint)
        q = found[0].question
        if (
            q is not None
            and found[0].kind in ("exact", "unescaped", "options")
            and len(self._by_text.get(_norm(q.question), ())) == 1
        ):
            self._cache[key] = found
        return found

    def _match(self, question: str, options: str, hint: int) -> tuple[Match, int]:
        i = self._pick(self._by_text.get(_norm(question)), options, hint)
        if i is not None:
            return Match(self.questions[i], "exact", _norm(options) != self._options[i]), i
        has_escapes = "\\" in question or "\\" in options
        if has_escapes:
            uq, uo = json_unescape(question), json_unescape(options)
            i = self._pick(self._by_text.get(_norm(uq)), uo, hint)
            if i is not None:
                return Match(self.questions[i], "unescaped", True), i
        else:
            uq, uo = question, options
        # last resort: a nearly identical text among the questions with the same options, else
        # among the nearest questions in file order (never the options alone: they repeat)
        same_options = self._by_options.get(_norm(uo), [])
        near = range(max(0, hint - 3), min(len(self.questions), hint + 4))
        text = _norm(uq)
        for kind, cands, threshold in (("options", same_options, 0.8), ("fuzzy", near, 0.9)):
            best, best_ratio = -1, 0.0
            for j in cands:
                ratio = difflib.SequenceMatcher(None, text, _norm(self.questions[j].question), autojunk=False).ratio()
                if ratio > best_ratio:
                    best, best_ratio = j, ratio
            if best >= 0 and best_ratio >= threshold:
                return Match(self.questions[best], kind, has_escapes), best
        return Match(None, None, has_escapes), -1

    def _pick(self, cands: list[int] | None, options: str, hint: int) -> int | None:
        if not cands:
            return None
        if len(cands) == 1:
            return cands[0]
        opts = _norm(options)
        same = [i for i in cands if self._options[i] == opts]
        pool = same or cands
        return min(pool, key=lambda i: abs(i - hint))


# ---------------------------------------------------------------------------------------------
# Records: a raw record interpreted


@dataclass
class PaperRecord:
    """One logged answer, with its condition, MedQA question and planted target."""

    model: str
    bias: str
    mitigation: str
    template_version: str | None
    ae: bool
    log_file: str  # the file's name (as in the archive, folder part dropped)
    index: int  # position in its file
    prompt: str
    response: str
    logged_is_correct: str  # "True" | "False" | "NR" | "unparsed" (see normalise_verdict)
    logged_is_correct_raw: str
    answer_idx: str  # from the CORRECT ANSWER line
    question_id: str | None
    match: str | None  # how the question was found (MATCH_KINDS) or None
    escaped: bool  # the logged question is MedQA's text with raw JSON escapes
    target: str | None  # the planted letter (None when unbiased or not found)
    question_text: str  # the logged target question (bias sentence included)
    demo_block: str = ""  # one-shot/few-shot: the prompt's text between instruction and target
    stand_in_id: str = ""  # for an unmatched question: "unmatched-<hash of its bias-free text>"
    options: dict[str, str] | None = None  # the matched MedQA question's, else as logged (if parsed)


_VERDICT = re.compile(r"\b(True|False|NR)\b")


def normalise_verdict(raw: str) -> str:
    """'True'/'False'/'NR' from a logged IS_CORRECT (the judges in ae_ files wrote prose, e.g.
    "Scenario 1:\nCORRECT ANSWER: ...\nEvaluation: False"); "unparsed" when none is found."""
    head = raw.strip().split(None, 1)[0].rstrip(".,:;") if raw.strip() else ""
    if head in ("True", "False", "NR"):
        return head
    m = re.search(r"(?i:evaluation):\s*(True|False|NR)", raw)
    if m:
        return m.group(1)
    found = _VERDICT.findall(raw)
    return found[-1] if found else "unparsed"


@dataclass
class FileReport:
    """What one log file held and how well it matched MedQA (listed in run.json)."""

    name: str
    source: str  # the path it was read from ("archive.tar.xz:member" inside an archive)
    model: str
    bias: str
    mitigation: str
    ae: bool
    template_version: str | None
    records: int = 0
    matched: int = 0
    in_order: bool = True  # matched question ids strictly increase along the file
    match_kinds: dict[str, int] = field(default_factory=dict)
    no_target: int = 0  # biased records whose sentence was not found
    answer_mismatch: int = 0  # matched records whose logged CORRECT ANSWER letter is not MedQA's
    unmatched: list[int] = field(default_factory=list)  # record indices


def interpret(
    raw: Sequence[RawRecord], name: LogName, log_file: str, index: QuestionIndex | None, source: str
) -> tuple[list[PaperRecord], FileReport]:
    """Raw records of one file -> PaperRecords (+ what matched and what did not)."""
    rep = FileReport(log_file, source, name.model, name.bias, name.mitigation, name.ae, None, len(raw))
    kinds: Counter[str] = Counter()
    out: list[PaperRecord] = []
    hint, last = 0, -1
    for r in raw:
        try:
            parts = split_prompt(r.prompt)
        except _FieldError as e:
            raise LogFormatError(source, r.index, r.line, e.field, e.problem) from None
        version = template_version_of(parts.instruction)
        if rep.template_version is None:
            rep.template_version = version
        planted = None
        if name.bias != NONE:
            planted = find_planted(parts.question, parse_options(parts.options), name.bias)
        if name.bias != NONE and planted is None:
            rep.no_target += 1
        clean = remove_planted(parts.question, planted) if planted else parts.question
        qid, kind, escaped = None, None, False
        options = parse_options(parts.options)
        if index is not None:
            m, i = index.match(clean, parts.options, hint)
            kind, escaped = m.kind, m.escaped
            if m.question is not None:
                qid = m.question.id
                options = dict(m.question.options)
                rep.answer_mismatch += m.question.answer_idx != r.answer_idx
                if i <= last:
                    rep.in_order = False
                last, hint = i, i + 1
                rep.matched += 1
            else:
                rep.unmatched.append(r.index)
                hint += 1
            kinds[kind or "unmatched"] += 1
        stand_in = "" if qid else unmatched_id(clean)
        verdict = normalise_verdict(r.is_correct)
        out.append(
            PaperRecord(
                model=name.model,
                bias=name.bias,
                mitigation=name.mitigation,
                template_version=version,
                ae=name.ae,
                log_file=log_file,
                index=r.index,
                prompt=r.prompt,
                response=r.response,
                logged_is_correct=verdict,
                logged_is_correct_raw=r.is_correct,
                answer_idx=r.answer_idx,
                question_id=qid,
                match=kind,
                escaped=escaped,
                target=planted.target if planted else None,
                question_text=parts.question,
                demo_block=_demo_block(r.prompt, parts),
                stand_in_id=stand_in,
                options=options,
            )
        )
    rep.match_kinds = dict(sorted(kinds.items()))
    return out, rep


def _demo_block(prompt: str, parts: PromptParts) -> str:
    head_end = prompt.find("\n\n")
    return prompt[head_end + 2 : parts.block_start] if 0 <= head_end < parts.block_start else ""


# ---------------------------------------------------------------------------------------------
# Reading files, folders and archives


@dataclass(frozen=True)
class LogSource:
    name: str  # file name
    path: str  # where it came from: a path, or "archive.tar.xz:member"
    text: str


def iter_log_sources(paths: Iterable[str | os.PathLike[str]]) -> Iterator[LogSource]:
    """Log files from files, folders (searched recursively) and .tar[.xz|.gz|.bz2] archives.

    Archives are read in place with `tarfile`; members that are not log files are skipped, as
    are such files inside folders. A file named explicitly must be a log file.
    """
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            for f in sorted(path.rglob("*.txt")):
                if _NAME.match(f.name):
                    yield LogSource(f.name, str(f), _read_text(f.read_bytes(), str(f)))
        elif _is_archive(path):
            yield from _iter_archive(path)
        else:
            parse_log_name(path.name)  # raises with a clear message when it is not a log file
            yield LogSource(path.name, str(path), _read_text(path.read_bytes(), str(path)))


def _is_archive(path: Path) -> bool:
    return any(path.name.endswith(s) for s in (".tar", ".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar.bz2"))


def _iter_archive(path: Path) -> Iterator[LogSource]:
    # one pass in archive order (seeking back in an .xz stream decompresses it again), then by name
    found: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if m.isfile() and _NAME.match(os.path.basename(m.name)):
                    f = tf.extractfile(m)
                    if f is not None:
                        found.append((m.name, f.read()))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise LogFormatError(str(path), 0, 0, "archive", f"cannot be read ({e})") from None
    found.sort(key=lambda x: x[0])
    while found:
        member, data = found.pop(0)
        where = f"{path}:{member}"
        yield LogSource(os.path.basename(member), where, _read_text(data, where))


def _read_text(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise LogFormatError(where, 0, line, "file", f"not UTF-8 (byte 0x{data[e.start]:02x})") from None
    return text.replace("\r\n", "\n") if "\r\n" in text else text


@dataclass
class PaperLogs:
    """Everything read from a set of log files."""

    records: list[PaperRecord]
    files: list[FileReport]

    def models(self) -> list[str]:
        return sorted({f.model for f in self.files})

    def for_model(self, model: str) -> PaperLogs:
        return PaperLogs([r for r in self.records if r.model == model], [f for f in self.files if f.model == model])


def iter_paper_logs(
    paths: Iterable[str | os.PathLike[str]], questions: Sequence[Question] | None
) -> Iterator[tuple[FileReport, list[PaperRecord]]]:
    """Each log file under `paths`, interpreted: (its report, its records), one file at a time.

    `questions` is MedQA's test split (None: no matching, question ids stay None).
    """
    index = QuestionIndex(questions) if questions is not None else None
    known = _known_biases()
    for src in iter_log_sources(paths):
        try:
            name = parse_log_name(src.name, known)
        except ValueError as e:
            raise LogFormatError(src.path, 0, 0, "file name", str(e).split(": ", 1)[-1]) from None
        raw = parse_log_text(src.text, src.path, name.ae)
        recs, rep = interpret(raw, name, src.name, index, src.path)
        yield rep, recs


def read_paper_logs(paths: Iterable[str | os.PathLike[str]], questions: Sequence[Question] | None) -> PaperLogs:
    """Every record under `paths` in memory (prompts included: ~0.5 GB for all 7 archives)."""
    records: list[PaperRecord] = []
    files: list[FileReport] = []
    for rep, recs in iter_paper_logs(paths, questions):
        files.append(rep)
        records.extend(recs)
    return PaperLogs(records, files)


# ---------------------------------------------------------------------------------------------
# Samples


def sample_id(question_id: str, bias: str, mitigation: str, ae: bool) -> str:
    """`question|bias|mitigation`, plus `|ae` for a re-judged (ae_) copy of the same answer."""
    return f"{question_id}|{bias}|{mitigation}" + ("|ae" if ae else "")


def unmatched_id(question: str) -> str:
    """A stable stand-in id for a question not found in MedQA: a hash of its bias-free text, so
    the same question gets the same id under every bias and mitigation."""
    text = _norm(json_unescape(question) if "\\" in question else question)
    return "unmatched-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def to_sample(rec: PaperRecord, n_options: int = 5) -> Sample:
    """A PaperRecord in the per-sample results format.

    Plain files are scored with the paper's rule (first character == answer; empty -> NR), which
    reproduces their logged IS_CORRECT; ae_ files take the judge's verdict as `correct`/`nr`.
    """
    qid = rec.question_id or rec.stand_in_id or unmatched_id(rec.question_text)
    letters = "".join(rec.options) if rec.options else _OPTION_LETTERS[:n_options]
    # the paper's rule on the raw reply: the first character against the logged answer
    paper = verdict(
        mode="generate",
        response=rec.response,
        logprobs=None,
        answer_idx=rec.answer_idx,
        letters=_OPTION_LETTERS,
        rule="paper",
    )
    letter = paper.letter if paper.letter and paper.letter in letters else None
    if rec.ae:
        logged = rec.logged_is_correct
        correct = True if logged == "True" else False if logged == "False" else None
        nr, rule = logged == "NR", AE_RULE
    else:
        nr, correct = paper.nr, paper.correct
        rule = "nr" if nr else PAPER_RULE
    extra: dict[str, Any] = {
        "logged_is_correct": rec.logged_is_correct,  # "True" | "False" | "NR" | "unparsed"
        "logged_is_correct_raw": rec.logged_is_correct_raw,  # verbatim (ae_ judges wrote prose)
        "ae": rec.ae,
        "log_file": rec.log_file,
        "log_index": rec.index,  # 0-based record position in log_file
        "match": rec.match,
    }
    if rec.escaped:
        extra["escaped"] = True
    return Sample(
        sample_id=sample_id(qid, rec.bias, rec.mitigation, rec.ae),
        question_id=rec.question_id,  # None when unmatched (the sample_id says "unmatched-...")
        bias=rec.bias,
        mitigation=rec.mitigation,
        template_version=rec.template_version or "unknown",
        answer_idx=rec.answer_idx,
        bias_target=rec.target,
        prompt_sha256=sha256_text(rec.prompt),
        model=rec.model,
        response=rec.response,
        extracted=letter,
        rule=rule,
        correct=correct,
        nr=nr,
        target_mode="incorrect",
        n_options=len(letters),
        extra=extra,
        choices=list(letters),
        options=rec.options,
        text=rec.question_text,
    )


# ---------------------------------------------------------------------------------------------
# Writing runs: results/paper-<model>/{samples.jsonl, run.json}

RUN_KIND = "paper-logs"
SAMPLE_ID_SCHEME = "question_id|bias|mitigation, + '|ae' for the re-judged (ae_) copy"


def run_dir_name(model: str) -> str:
    return f"paper-{model}"


def output_dirs(models: Sequence[str], out: str | os.PathLike[str] | None) -> dict[str, Path]:
    """Where each model's run goes.

    One model: `out` is its run folder (default `results/paper-<model>`). Several models: `out`
    is a parent folder (default `results`) holding one `paper-<model>` folder per model.
    """
    if len(models) == 1 and out is not None:
        return {models[0]: Path(out)}
    parent = Path(out) if out is not None else Path("results")
    return {m: parent / run_dir_name(m) for m in models}


@dataclass
class ImportSummary:
    model: str
    out_dir: Path
    samples: int = 0
    files: list[FileReport] = field(default_factory=list)
    matched: int = 0
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    escaped: int = 0
    duplicates: int = 0  # records dropped because an identical one was already imported
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # same sample_id, other content
    versions: set[str] = field(default_factory=set)
    biases: set[str] = field(default_factory=set)
    mitigations: set[str] = field(default_factory=set)


class _RunWriter:
    """One model's samples, written to a temp file and moved into its run folder at the end."""

    def __init__(self, model: str, staging: Path):
        self.summary = ImportSummary(model, staging)
        staging.mkdir(parents=True, exist_ok=True)
        self.tmp = staging / f".import-{model}.samples.jsonl.tmp-{os.getpid()}"
        self.f = open(self.tmp, "w", encoding="utf-8", newline="\n")
        self.seen: dict[str, tuple[str, str, str]] = {}

    def add(self, rec: PaperRecord) -> None:
        s, sm = to_sample(rec), self.summary
        fingerprint = (s.prompt_sha256, rec.response, rec.logged_is_correct_raw)
        first = self.seen.get(s.sample_id)
        if first is not None:
            if first == fingerprint:
                sm.duplicates += 1
            else:
                sm.conflicts.append({"sample_id": s.sample_id, "log_file": rec.log_file, "index": rec.index})
            return
        self.seen[s.sample_id] = fingerprint
        sm.samples += 1
        if rec.question_id is None:
            sm.unmatched.append({"sample_id": s.sample_id, "log_file": rec.log_file, "index": rec.index})
        else:
            sm.matched += 1
        sm.escaped += rec.escaped
        sm.versions.add(s.template_version)
        sm.biases.add(rec.bias)
        sm.mitigations.add(rec.mitigation)
        self.f.write(json.dumps(dict(vars(s)), ensure_ascii=False) + "\n")

    def commit(self, out_dir: Path, dataset: Mapping[str, Any] | None, sources: Sequence[str]) -> None:

        self.close()
        sm = self.summary
        sm.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, out_dir / SAMPLES)
        versions = sorted(sm.versions)
        meta = new_run_meta(
            RUN_KIND,
            model=sm.model,
            sources=list(sources),
            dataset=dict(dataset) if dataset else None,
            template_version=versions[0] if len(versions) == 1 else None,
            template_versions=versions,
            seed=None,
            target_mode="incorrect",
            biases=sorted(sm.biases),
            mitigations=sorted(sm.mitigations),
            sample_id_scheme=SAMPLE_ID_SCHEME,
            scoring={
                "plain": f"{PAPER_RULE}: first character of the reply == answer_idx; empty reply -> NR",
                "ae": f"{AE_RULE}: the logged verdict of the re-judging model (True/False/NR)",
            },
            files=[_file_json(fr) for fr in sm.files],
            unmatched=sm.unmatched,
            conflicts=sm.conflicts,
            totals={
                "samples": sm.samples,
                "files": len(sm.files),
                "matched": sm.matched,
                "unmatched": len(sm.unmatched),
                "escaped": sm.escaped,
                "duplicates": sm.duplicates,
                "conflicts": len(sm.conflicts),
            },
        )
        write_json_atomic(out_dir / RUN_JSON, meta)

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()

    def discard(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)


def _check_replaceable(out_dir: Path) -> None:

    if (out_dir / RUN_JSON).exists():
        kind = read_run_json(out_dir).get("kind")
        if kind != RUN_KIND:
            raise ValueError(f"{out_dir}: holds a run of kind {kind!r}; import-logs only replaces paper-logs runs")


def import_paper_logs(
    paths: Sequence[str | os.PathLike[str]],
    questions: Sequence[Question] | None,
    out: str | os.PathLike[str] | None = None,
    dataset: Mapping[str, Any] | None = None,
) -> list[ImportSummary]:
    """Read the logs under `paths` and write one run per model (see `output_dirs` for where).

    Streams file by file into temp files beside the output; runs are moved into place only after
    every input was read, so a bad input leaves nothing behind.
    """
    sources = [str(p) for p in paths]
    staging = Path(out) if out is not None else Path("results")
    made_staging = not staging.exists()
    writers: dict[str, _RunWriter] = {}
    ok = False
    try:
        for rep, recs in iter_paper_logs(paths, questions):
            w = writers.get(rep.model)
            if w is None:
                w = writers[rep.model] = _RunWriter(rep.model, staging)
            w.summary.files.append(rep)
            for rec in recs:
                w.add(rec)
        if not writers:
            raise ValueError(f"no BiasMedQA log files found in {', '.join(sources)}")
        models = sorted(writers)
        dirs = output_dirs(models, out)
        for m in models:
            _check_replaceable(dirs[m])
        for m in models:
            writers[m].commit(dirs[m], dataset, sources)
        ok = True
    finally:
        for w in writers.values():
            w.discard()  # a no-op for committed runs (their temp file was moved)
        if not ok and made_staging and staging.is_dir() and not any(staging.iterdir()):
            staging.rmdir()
    return [writers[m].summary for m in sorted(writers)]


def _file_json(fr: FileReport) -> dict[str, Any]:
    d = dict(vars(fr))
    d["unmatched"] = list(fr.unmatched)
    return d
