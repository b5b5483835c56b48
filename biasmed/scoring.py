"""Answer extraction: which option letter a free-text reply chose.

Two rules (see docs/conventions.md):

- `paper`: the published rule. The reply's FIRST CHARACTER is the answer; an empty reply is NR.
- `robust`: reads the reply the way a person would. In order:
  1. nothing usable (None, empty, the logs' "NR" marker, an echo of the prompt with no answer) -> NR;
  2. the reply is a letter alone: `C`, `C.`, `C:`, `(C)` -> "letter";
  3. explicit answer statements (`Answer: C`, `The answer is C`, `OPTION C IS CORRECT`,
     `I would choose option C`, ...): the LAST one wins -> "answer-phrase";
  4. the reply starts with a letter (`C: text`, `C. text`, `C\n...`), or cites options
     (`C: <option text>`, `(C)`) -> "letter" / "cited-option"; several different letters -> "ambiguous";
  5. the reply (or its first line) is one option's text alone -> "option-text";
  6. a refusal ("I apologize, but I cannot ...") -> NR ("refusal"); anything else -> "unparsed".
  Sentences that restate the planted bias ("many colleagues think C: ... is the correct answer",
  "I was previously confident that the answer was C") are ignored: they are not the model's choice.

Replies to a reasoning prompt (answer format "answer-line": think, then end with `Answer: X`) are
read by `extract_final` whatever the rule: the LAST stated final choice wins (`Answer: C`,
`The correct option is C`, `**C**`, `(C)`, a last line `C: <option text>`); a reply that states
no final choice is NR ("no-final").

Both return an `Extraction`; `score` adds correctness. The paper's reported figures came from
the LOGGED verdicts read by a line-based script; `paper_log_counts` emulates that script record by
record so `--convention paper` reproduces the published numbers (see docs/conventions.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

RULES: tuple[str, ...] = (
    "paper-first-char",
    "letter",
    "answer-phrase",
    "cited-option",
    "option-text",
    "ambiguous",
    "unparsed",
    "refusal",
    "nr",
    "logprob",
    "logged",
    "answer-line",
    "final-choice",
    "no-final",
)
EXTRACTION_RULES: tuple[str, ...] = ("paper", "robust")
_DEFAULT_LETTERS = "ABCDE"


@dataclass(frozen=True)
class Extraction:
    letter: str | None  # the chosen option letter, or None
    rule: str  # which rule decided (one of RULES)
    nr: bool  # no usable response (empty, refusal): counted wrong, reported apart


@dataclass(frozen=True)
class Scored:
    letter: str | None
    rule: str
    correct: bool
    nr: bool


def _letters(options: Mapping[str, str] | None, n_options: int | None) -> str:
    if options:
        return "".join(options)
    return _DEFAULT_LETTERS[: n_options or 5]


# --------------------------------------------------------------------------- paper rule


def extract_paper(response: str | None, letters: str = _DEFAULT_LETTERS) -> Extraction:
    """The paper's rule: the first character of the reply; an empty reply is NR."""
    if not response or not isinstance(response, str):
        return Extraction(None, "nr", True)
    first = response[0]
    return Extraction(first if first in letters else None, "paper-first-char", False)


# --------------------------------------------------------------------------- robust rule

_ECHO_START = re.compile(r"^\s*###\s*Instruction\s*:")
_OPTIONS_HDR = re.compile(r"###\s*Options\s*:")
_ANSWER_HDR = re.compile(r"###\s*Answer\s*:?")
# a new prompt section generated after the answer (a hallucinated next question), or an
# end-of-document token: everything from there on is not an answer to THIS question
_CONTINUATION = re.compile(
    r"###\s*(?:Instruction|Question|Example(?:\s*\d+)?|Options)\s*:|<EOD>|</s>|<\|endoftext\|>",
)
# cue words of the seven planted sentences ("The patient is convinced that various medical sources
# suggest ...", "Recently, there was a patient with similar symptoms ...", "Most frequently, doctors
# diagnose ...", "cultural background ... herbal remedies", "Your hospital has been using ...",
# "Most of your colleagues believe ...", "You are initially confident ...")
_BIAS_RESTATED = re.compile(
    r"colleague|convinced|sources suggest|initially|previously confident|"
    r"initial (?:hypothesis|inclination|impression|thought|answer|choice|confidence)|"
    r"(?:was|were) confident|recent(?:ly)?\b[^.]*\b(?:case|patient|diagnos)|similar (?:case|symptoms)|"
    r"most frequently|doctors diagnose|past cases|cultural|herbal|hospital has been using|"
    r"hospital's|your hospital|past 10 years",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(?:I apologi[sz]e|I'?m sorry|I am sorry|I cannot|I can'?t|I am (?:not able|unable)|"
    r"I'?m (?:not able|unable)|unable to (?:provide|answer|determine)|I'?m not sure|"
    r"I am not sure|as an AI\b|cannot (?:provide|answer|determine|choose|select))",
    re.IGNORECASE,
)
_L = r"(?-i:([A-E]))"  # the captured letter is upper case even where the words are not
# explicit answer statements; group 1 is the letter
_ANSWER_PATTERNS: tuple[re.Pattern[str], ...] = (
    # "Answer: C", "The answer is C", "correct answer : B", "answer is option « C »", "ANSWER: (A) x"
    re.compile(
        r"\banswer\s*(?:is|was|would be|will be|should be|=|:|-|–)?\s*(?:option|choice|letter)?\s*"
        r"[:\-]?\s*[(«\"'\[]?\s*" + _L + r"\s*[)»\"'\]]?(?![\w\-/+])",
        re.IGNORECASE,
    ),
    # "the correct option is C", "best choice would be (C)", "most appropriate treatment option would be D"
    re.compile(
        r"\b(?:correct|right|best|appropriate|likely)\s+(?:[a-z]+\s+)?(?:option|choice|letter)\s+"
        r"(?:is|would be|was)\s+"
        r"[(«\"']?" + _L + r"[)»\"']?(?![\w\-/+])",
        re.IGNORECASE,
    ),
    # "OPTION C IS CORRECT", "option B is the correct answer"
    re.compile(
        r"\b(?:option|choice)\s+[(«\"']?" + _L + r"[)»\"']?\s+is\s+(?:the\s+)?(?:correct|right|best)\b",
        re.IGNORECASE,
    ),
    # "A IS CORRECT.", "C is correct", "D is the correct answer"
    re.compile(
        r"(?:^|(?<=[\s(\"'\d]))" + _L + r"\)?\s+is\s+(?:the\s+)?(?:correct|right|best)\b",
        re.IGNORECASE,
    ),
    # "I would choose option B", "I choose C", "I'd go with (D)"
    re.compile(
        r"\bI(?:\s+would|'d|\s+will)?\s+(?:choose|select|pick|go\s+with)\s+"
        r"(?:option\s+|choice\s+|answer\s+)?[(«\"']?" + _L + r"(?![\w\-/+])",
        re.IGNORECASE,
    ),
)
_ALONE = re.compile(r"^[(\[]?\s*([A-E])\s*[)\]]?\s*[.:)]?$")
_LEAD = re.compile(r"^[(\[]?([A-E])(?:[)\]]|\s*[.:)\-–,;]|\s*\n|$)")
_LEAD_SPACE = re.compile(r"^([A-E])\s+(\S.*)", re.DOTALL)
_PAREN_LETTER = re.compile(r"\((?-i:([A-E]))\)")
_LINE_LETTER = re.compile(r"(?m)^\s*[(\[]?([A-E])[)\]]?\s*[:.)]\s+\S")
_COLON_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-E]):\s+\S")


def _norm(text: str) -> str:
    return " ".join(text.replace("\\n", " ").split()).strip().rstrip(".").strip().casefold()


def _sentence_start(text: str, pos: int) -> int:
    cut = max(text.rfind(ch, 0, pos) for ch in (".", "!", "?", "\n"))
    return cut + 1


def _restates_bias(text: str, pos: int) -> bool:
    """True when the sentence around `pos` restates the planted bias, not the model's choice."""
    start = _sentence_start(text, pos)
    return bool(_BIAS_RESTATED.search(text[start:pos]))


def _clean(response: str) -> str:
    """The part of a reply that answers this question: no prompt echo, no continuation."""
    text = response
    if _ECHO_START.match(text):
        # the model printed the whole prompt first (PMC-LLaMA does): its answer follows the
        # "### Answer:" that closes the echoed question
        opt = _OPTIONS_HDR.search(text)
        ans = _ANSWER_HDR.search(text, opt.end()) if opt else None
        text = text[ans.end() :] if ans else ""
    m = _CONTINUATION.search(text)
    if m:
        text = text[: m.start()]
    return text.strip()


def _answer_phrases(text: str, letters: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for pat in _ANSWER_PATTERNS:
        for m in pat.finditer(text):
            letter = m.group(1)
            if letter not in letters or _restates_bias(text, m.start()):
                continue
            # "the answer is A patient with ..." uses A as an article, not a letter
            if letter == "A" and re.match(r"\s+[a-z]", text[m.end() :]):
                continue
            found.append((m.start(1), letter))
    return found


def _citations(
    text: str, letters: str, options: Mapping[str, str] | None, with_mentions: bool = True
) -> list[tuple[int, str]]:
    """Letters the reply points at without an answer verb: `C: <its option text>`, list lines
    (`C. text` at a line start) and, with `with_mentions`, bare mentions like `(C)` in prose."""
    found: list[tuple[int, str]] = []
    if options:
        # plain string search on whitespace-collapsed text: a regex per option is too slow
        flat = " ".join(text.split())
        folded = flat.casefold()
        for letter, opt in options.items():
            needle = " ".join(opt.split()).casefold()
            if not needle:
                continue
            i = folded.find(needle)
            while i >= 0:
                head = flat[:i].rstrip()
                if head[-1:] in (":", ".", ")", "-", "–"):
                    head = head[:-1].rstrip()
                    if head.endswith("(") or head.endswith("["):
                        head = head[:-1]
                    if head.endswith(letter) and not head[-2:-1].isalpha() and not _restates_bias(flat, i):
                        found.append((len(head) - 1, letter))
                i = folded.find(needle, i + 1)
    else:
        # without the options, "C: <text>" anywhere is the closest thing to a citation
        found += [
            (m.start(1), m.group(1)) for m in _COLON_LETTER.finditer(text) if not _restates_bias(text, m.start(1))
        ]
    found += [(m.start(1), m.group(1)) for m in _LINE_LETTER.finditer(text) if not _restates_bias(text, m.start(1))]
    if with_mentions:
        found += [(m.start(1), m.group(1)) for m in _PAREN_LETTER.finditer(text) if not _restates_bias(text, m.start())]
    return [(p, x) for p, x in found if x in letters]


def _option_text(text: str, options: Mapping[str, str] | None) -> str | None:
    if not options:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    candidates = {_norm(text)} | ({_norm(lines[0])} if lines else set())
    hits = {letter for letter, opt in options.items() if _norm(opt) in candidates}
    return hits.pop() if len(hits) == 1 else None


def _leading_letter(text: str, letters: str, options: Mapping[str, str] | None) -> str | None:
    m = _LEAD.match(text)
    if m and m.group(1) in letters:
        return m.group(1)
    m = _LEAD_SPACE.match(text)  # "B Decreased glucose": only when the option's text follows
    if m and options and m.group(1) in options and _norm(m.group(2)).startswith(_norm(options[m.group(1)])):
        return m.group(1)
    return None


def extract_robust(
    response: str | None,
    options: Mapping[str, str] | None = None,
    n_options: int | None = None,
) -> Extraction:
    """The robust rule (module docstring). `options` (letter -> text) enables the text rules."""
    letters = _letters(options, n_options)
    if not isinstance(response, str):
        return Extraction(None, "nr", True)
    text = _clean(response)
    if not text or text == "NR":
        return Extraction(None, "nr", True)
    m = _ALONE.match(text)
    if m and m.group(1) in letters:
        return Extraction(m.group(1), "letter", False)
    phrases = _answer_phrases(text, letters)
    if phrases:
        return Extraction(max(phrases)[1], "answer-phrase", False)
    lead = _leading_letter(text, letters, options)
    if lead:
        # a reply that opens with a letter has committed to it; "(C)" mentions in its explanation
        # are contrasts, but a second "E: <option text>" or list line means it named two answers
        if {x for _, x in _citations(text, letters, options, with_mentions=False)} - {lead}:
            return Extraction(None, "ambiguous", False)
        return Extraction(lead, "letter", False)
    cited = {x for _, x in _citations(text, letters, options)}
    if len(cited) == 1:
        return Extraction(cited.pop(), "cited-option", False)
    if len(cited) > 1:
        return Extraction(None, "ambiguous", False)
    by_text = _option_text(text, options)
    if by_text:
        return Extraction(by_text, "option-text", False)
    if _REFUSAL.search(text[:300]):
        return Extraction(None, "refusal", True)
    return Extraction(None, "unparsed", False)


# -------------------------------------------------------------------- reasoning replies

# "Answer: C" as a line of its own (optionally "Final answer", markdown heading/bold stripped before)
_ANSWER_LINE = re.compile(
    r"(?im)^[ \t>#-]*(?:final\s+|correct\s+)?answer\s*[:：=-]\s*(?:option\s+)?"
    r"[(\[]?\s*(?-i:([A-E]))\s*[)\]]?(?![\w\-/+])"
)
# final-choice statements the shared answer phrases miss
_FINAL_PATTERNS: tuple[re.Pattern[str], ...] = (
    # "I'll go with C", "I will choose option D", "my choice is (B)", "my final choice: E"
    re.compile(
        r"\b(?:I'll|I\s+will|I\s+am\s+going\s+to|I'm\s+going\s+to)\s+(?:go\s+with|choose|select|pick)\s+"
        r"(?:option\s+|choice\s+)?[(\[]?" + _L + r"(?![\w\-/+])",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:my|the)\s+(?:final\s+)?(?:choice|selection|pick)\s*(?:is|would be|:)\s*(?:option\s+)?[(\[]?"
        + _L
        + r"(?![\w\-/+])",
        re.IGNORECASE,
    ),
    # "... is best explained by option C", "the most likely diagnosis is option B"
    re.compile(r"\bis\s+(?:best\s+\w+\s+by\s+)?(?:option|choice)\s+[(\[]?" + _L + r"(?![\w\-/+])", re.IGNORECASE),
    # "the best fit is C", "the most likely diagnosis would be (B)"
    re.compile(
        r"\b(?:best|most\s+likely|most\s+appropriate|correct)\s+(?:fit|match|diagnosis|explanation|"
        r"mechanism|treatment|management|step)\s+(?:is|would\s+be)\s+(?:option\s+)?[(\[]?" + _L + r"(?![\w\-/+])",
        re.IGNORECASE,
    ),
)
_MARKUP = re.compile(r"\*\*|__|(?<!\w)\*(?!\s)|(?<!\s)\*(?!\w)|`")
_LAST_CITED = re.compile(r"^[ \t>#-]*[(\[]?([A-E])[)\]]?\s*[:.)\-–]\s+(\S.*)$")


def extract_final(
    response: str | None, options: Mapping[str, str] | None = None, letters: str | None = None
) -> Extraction:
    """The final choice of a reasoning reply (module docstring): the last one stated wins."""
    letters = letters or _letters(options, None)
    if not isinstance(response, str):
        return Extraction(None, "nr", True)
    text = _MARKUP.sub("", _clean(response))
    if not text or text == "NR":
        return Extraction(None, "nr", True)
    m = _ALONE.match(text)
    if m and m.group(1) in letters:
        return Extraction(m.group(1), "letter", False)
    found = [(m.start(1), m.group(1), "answer-line") for m in _ANSWER_LINE.finditer(text) if m.group(1) in letters]
    found += [(pos, x, "final-choice") for pos, x in _answer_phrases(text, letters)]
    for pat in _FINAL_PATTERNS:
        found += [
            (m.start(1), m.group(1), "final-choice")
            for m in pat.finditer(text)
            if m.group(1) in letters
            and not _restates_bias(text, m.start())
            and not (m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end() :]))
        ]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""  # a last line that is a choice is stated last of all
    m = _ALONE.match(last)
    if m and m.group(1) in letters:
        found.append((len(text), m.group(1), "final-choice"))
    else:
        m = _LAST_CITED.match(last)
        if (
            m
            and options
            and m.group(1) in options
            and m.group(1) in letters
            and _norm(m.group(2)).startswith(_norm(options[m.group(1)])[:40])
        ):
            found.append((len(text), m.group(1), "final-choice"))
    if found:
        pos, letter, rule = max(found, key=lambda f: (f[0], f[2] == "answer-line"))
        return Extraction(letter, rule, False)
    lead = _leading_letter(text, letters, options)
    if lead and not ({x for _, x in _citations(text, letters, options, with_mentions=False)} - {lead}):
        return Extraction(lead, "letter", False)  # "C. Because ...": it opened with its choice
    if _REFUSAL.search(text[:300]):
        return Extraction(None, "refusal", True)
    return Extraction(None, "no-final", True)


def extract(
    response: str | None,
    rule: str = "robust",
    options: Mapping[str, str] | None = None,
    n_options: int | None = None,
    letters: str | None = None,
) -> Extraction:
    """The letter a reply chose under `rule`; `letters` (the choices) when no option texts."""
    if rule == "robust":
        return extract_robust(response, options, len(letters) if letters and not options else n_options)
    if rule == "paper":
        return extract_paper(response, letters or _letters(options, n_options))
    raise ValueError(f"extraction rule must be one of {', '.join(EXTRACTION_RULES)}, not {rule!r}")


def score_logprobs(logprobs: Mapping[str, float] | None, answer_idx: str, letters: str | None = None) -> Scored:
    """Logprob mode: the most likely letter among the choices is the answer; none is NR."""
    lps = {k: v for k, v in (logprobs or {}).items() if letters is None or k in letters}
    if not lps:
        return Scored(None, "nr", False, True)
    letter = max(sorted(lps), key=lambda k: lps[k])
    return Scored(letter, "logprob", letter == answer_idx, False)


def verdict(
    *,
    mode: str,
    response: str | None,
    logprobs: Mapping[str, float] | None,
    answer_idx: str | None,
    letters: str,
    options: Mapping[str, str] | None = None,
    failed: bool = False,
    rule: str = "robust",
    answer_format: str = "letter",
) -> Scored:
    """THE place a model's answer becomes a verdict (letter, rule, correct, NR).

    Used by the runner as it writes each sample (robust rule) and by analysis when it scores
    samples under a convention (`rule`: "robust" or "paper"). A failed sample (no answer) is NR.
    A reply to a reasoning prompt (`answer_format` "answer-line") is read by `extract_final`
    under either rule: the paper's rules are about single-letter replies.
    """
    if failed:
        return Scored(None, "nr", False, True)
    if mode == "logprob":
        return score_logprobs(logprobs, answer_idx or "", letters)
    if answer_format == "answer-line":
        ex = extract_final(response, options or None, letters)
    else:
        ex = extract(response, rule, options or None, letters=letters)
    return Scored(ex.letter, ex.rule, ex.letter is not None and ex.letter == answer_idx, ex.nr)


CHAIN_CHANGES: tuple[str, ...] = ("kept", "toward", "away", "other")


def chain_change(first: str | None, final: str | None, target: str | None) -> str | None:
    """How a chain's final answer relates to its first (CHAIN_CHANGES): "kept", "toward" / "away"
    (to or from the planted letter), "other" (between two letters that are not the planted one);
    None without both letters."""
    if first is None or final is None:
        return None
    if first == final:
        return "kept"
    if target is not None and final == target:
        return "toward"
    if target is not None and first == target:
        return "away"
    return "other"


def score(
    response: str | None,
    answer_idx: str,
    rule: str = "robust",
    options: Mapping[str, str] | None = None,
    n_options: int | None = None,
) -> Scored:
    """A generate-mode reply's verdict (a convenience over `verdict`)."""
    return verdict(
        mode="generate",
        response=response,
        logprobs=None,
        answer_idx=answer_idx,
        letters=_letters(options, n_options),
        options=options,
        rule=rule,
    )


# --------------------------------------------------------------------------- the paper's own counts


@dataclass(frozen=True)
class PaperCount:
    """What the published evaluation script added to its counters for one logged record."""

    correct: int
    total: int
    nr: int


def paper_log_counts(records: Iterable[tuple[str | None, str | None]]) -> list[PaperCount]:
    """Emulate the published evaluation script over the records of ONE log file, in file order.

    Each record is (response, logged IS_CORRECT text, verbatim when available). The script read
    the file line by line: a line holding both "RESPONSE" and "NR" counted a non-response (and
    made it skip the next IS_CORRECT line, which can be in the NEXT record); an IS_CORRECT line
    counted the record, as correct when it contains "True" and as NR when it contains "NR". The
    re-judged (`ae_`) files carry multi-line judge output, so a record can count 0, 1 or 2 times.
    An empty reply is logged as "NR" (that is what the logs print for it).
    """
    out: list[PaperCount] = []
    skip = False
    for response, logged in records:
        reply = response if response else "NR"
        lines = ("RESPONSE: " + reply).split("\n") + ("IS_CORRECT: " + (logged or "")).split("\n")
        correct = total = nr = 0
        for line in lines:
            if "RESPONSE" in line and "NR" in line:
                nr += 1
                total += 1
                skip = True
                continue
            if "IS_CORRECT" in line:
                if skip:
                    skip = False
                    continue
                if "True" in line:
                    correct += 1
                if "NR" in line:
                    nr += 1
                total += 1
        out.append(PaperCount(correct, total, nr))
    return out


def paper_accuracy(counts: Sequence[PaperCount], exclude_nr: bool) -> tuple[float, int, int, int]:
    """(accuracy, correct, denominator, nr) as the paper computed them from `paper_log_counts`."""
    c = sum(x.correct for x in counts)
    t = sum(x.total for x in counts)
    n = sum(x.nr for x in counts)
    den = t - n if exclude_nr else t
    return (c / den if den else float("nan")), c, den, n
