"""Loading and validating MedQA-format questions: a local JSONL file or folder, the Hugging Face
hub (through `datasets`), or biasmed's embedded demo set.

Every problem in an input file is reported as ONE line, `path:line: field: problem`, through
`DataError`; the CLI prints it and exits with code 2 before writing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biasmed import _json
from biasmed._paths import demo_dir
from biasmed.errors import DataError
from biasmed.records import Question

MEDQA_ENV = "BIASMED_MEDQA_DIR"
MAX_LINE_BYTES = 1 << 20  # a MedQA line is ~1-3 kB; anything near a MiB is not a question
SPLITS = ("test", "dev")
# Default hub datasets for users without a local copy (see README, "Where MedQA comes from").
HUB_DEFAULTS = {4: "GBaker/MedQA-USMLE-4-options"}


@dataclass(frozen=True)
class QuestionSet:
    """Questions of one split, with where they came from."""

    questions: tuple[Question, ...]
    source: str  # a path, "hub:<id>[:<config>]" or "demo"
    sha256: str  # of the source bytes (local) or of the canonical JSON of the records (hub)
    split: str
    n_options: int
    is_demo: bool = False

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self):
        return iter(self.questions)

    def manifest(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "split": self.split,
            "n_options": self.n_options,
            "n_questions": len(self.questions),
            "is_demo": self.is_demo,
            **({"note": DEMO_NOTE} if self.is_demo else {}),
        }


DEMO_NOTE = "DEMO SET: biasmed's own illustrative vignettes, not MedQA; figures from it are not BiasMedQA results"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen[k] = v
    return seen


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def validate_record(obj: Any, path: str, line: int, split: str, index: int) -> Question:
    """Check one MedQA record and turn it into a Question (or raise DataError)."""
    if not isinstance(obj, Mapping):
        raise DataError(path, line, "record", f"expected a JSON object, got {type(obj).__name__}")
    q = obj.get("question")
    if "question" not in obj:
        raise DataError(path, line, "question", "missing")
    if not isinstance(q, str) or not q.strip():
        raise DataError(path, line, "question", "must be a non-empty string")
    if "options" not in obj:
        raise DataError(path, line, "options", "missing")
    options = obj["options"]
    if not isinstance(options, Mapping):
        raise DataError(path, line, "options", "must be an object of letter: text")
    letters = list(options)
    if len(letters) not in (4, 5):
        raise DataError(path, line, "options", f"has {len(letters)} options; expected 4 or 5")
    expected = [chr(ord("A") + i) for i in range(len(letters))]
    if letters != expected:
        raise DataError(
            path,
            line,
            "options",
            f"letters are {','.join(map(str, letters))}; expected consecutive {','.join(expected)}",
        )
    for letter, text in options.items():
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, line, f"options.{letter}", "must be a non-empty string")
    if "answer_idx" not in obj:
        raise DataError(path, line, "answer_idx", "missing")
    idx = obj["answer_idx"]
    if not isinstance(idx, str):
        raise DataError(path, line, "answer_idx", f"must be a letter string, got {type(idx).__name__}")
    if idx not in options:
        raise DataError(path, line, "answer_idx", f"{idx!r} is not one of the options {','.join(letters)}")
    if "answer" not in obj:
        raise DataError(path, line, "answer", "missing")
    if not isinstance(obj["answer"], str):
        raise DataError(path, line, "answer", f"must be a string, got {type(obj['answer']).__name__}")
    if obj["answer"] != options[idx]:
        raise DataError(path, line, "answer", f"does not equal the text of option {idx}")
    meta = obj.get("meta_info", "")
    return Question(
        id=f"{split}-{index:04d}",
        question=q,
        options=dict(options),
        answer_idx=idx,
        answer=obj["answer"],
        meta_info=meta if isinstance(meta, str) else str(meta),
        split=split,
    )


def parse_jsonl(data: bytes, path: str, split: str) -> tuple[Question, ...]:
    """Validate the bytes of a MedQA JSONL file. Accepts CRLF and trailing blank lines."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise DataError(path, 1, "file", "starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM")
    raw_lines = data.split(b"\n")
    # trailing blank lines are a harmless oddity; a blank line inside the file would shift ids
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()
    if not raw_lines:
        raise DataError(path, 1, "file", "no questions")
    out: list[Question] = []
    for i, raw in enumerate(raw_lines):
        line = i + 1
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(path, line, "line", f"{len(raw)} bytes, over the {MAX_LINE_BYTES}-byte limit")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw.strip():
            raise DataError(path, line, "line", "empty line inside the file")
        try:
            # not UTF-8, not JSON, nested too deep, a lone surrogate: each one DataError
            obj = _json.loads(raw, path, line, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as e:
            raise DataError(path, line, e.key if len(e.key) > 1 else f"options.{e.key}", "duplicate key") from None
        out.append(validate_record(obj, path, line, split, i))
    return tuple(out)


def _check_same_option_count(qs: tuple[Question, ...], source: str) -> None:
    # one set, one option count: the prompt and the chance level depend on it
    n = len(qs[0].options)
    for i, q in enumerate(qs):
        if len(q.options) != n:
            raise DataError(source, i + 1, "options", f"has {len(q.options)} options; line 1 has {n}")


def _resolve_file(path: Path, split: str, n_options: int) -> Path:
    if path.is_file():
        return path
    if not path.exists():
        raise DataError(path, 0, "path", "does not exist")
    sub = Path("4_options") if n_options == 4 else Path()
    for base in (path, path / "US", path / "data_clean" / "questions" / "US"):
        candidate = base / sub / f"{split}.jsonl"
        if candidate.is_file():
            return candidate
    raise DataError(path, 0, "path", f"no {sub / f'{split}.jsonl'} in this folder")


def _split_of(file: Path, default: str) -> str:
    stem = file.stem
    return stem if stem in SPLITS else default


def load_medqa(
    path: str | os.PathLike[str] | None = None,
    split: str = "test",
    n_options: int = 5,
) -> QuestionSet:
    """Load MedQA from a JSONL file or a folder (`US/`, `US/4_options/`).

    Without a path, `$BIASMED_MEDQA_DIR` is used. A folder is searched for `<split>.jsonl`
    (`4_options/<split>.jsonl` when n_options is 4).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if n_options not in (4, 5):
        raise ValueError("n_options must be 4 or 5")
    if path is None:
        env = os.environ.get(MEDQA_ENV)
        if not env:
            raise DataError(MEDQA_ENV, 0, "path", "no MedQA path given: pass --medqa PATH or set BIASMED_MEDQA_DIR")
        path = env
    file = _resolve_file(Path(path), split, n_options)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise DataError(file, 0, "file", f"cannot read ({e.strerror})") from None
    qs = parse_jsonl(data, str(file), _split_of(file, split))
    _check_same_option_count(qs, str(file))
    # absolute, so a report run from another folder can find the options again
    return QuestionSet(
        qs, os.path.abspath(file), hashlib.sha256(data).hexdigest(), _split_of(file, split), len(qs[0].options)
    )


def load_demo(split: str = "test") -> QuestionSet:
    """biasmed's embedded demo set: original vignettes for offline smoke runs, NOT the benchmark."""
    file = demo_dir() / f"demo-{split}.jsonl"
    data = file.read_bytes()
    qs = parse_jsonl(data, str(file), split)
    return QuestionSet(qs, "demo", hashlib.sha256(data).hexdigest(), split, 5, is_demo=True)


def _hub_options(row: Mapping[str, Any]) -> Any:
    # bigbio-style sources give options as [{"key": "A", "value": "..."}]; MedQA copies as a dict
    opts = row.get("options")
    if isinstance(opts, list) and all(isinstance(o, Mapping) and "key" in o for o in opts):
        return {o["key"]: o["value"] for o in opts}
    return opts


def records_to_questionset(rows: Iterable[Mapping[str, Any]], source: str, split: str) -> QuestionSet:
    """Validate rows from `datasets` (hub or local json) exactly as the JSONL loader does."""
    qs: list[Question] = []
    canon = hashlib.sha256()
    for i, row in enumerate(rows):
        rec = {k: row.get(k) for k in ("question", "answer", "meta_info", "answer_idx") if k in row}
        opts = _hub_options(row)
        if isinstance(opts, Mapping):
            # Arrow fills missing keys of a struct with None: drop them (4-option rows in a 5 schema)
            opts = {k: v for k, v in opts.items() if v is not None}
        rec["options"] = opts
        qs.append(validate_record(rec, source, i + 1, split, i))
        canon.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    if not qs:
        raise DataError(source, 1, "dataset", "no questions")
    _check_same_option_count(tuple(qs), source)
    return QuestionSet(tuple(qs), source, canon.hexdigest(), split, len(qs[0].options))


def load_hub(
    dataset_id: str | None = None,
    split: str = "test",
    n_options: int = 4,
    config: str | None = None,
    revision: str | None = None,
) -> QuestionSet:
    """Load MedQA from the Hugging Face hub with `datasets` (needs network; real users only).

    `dataset_id` may also be "json" with `config` naming local files (used by the tests).
    """
    from datasets import load_dataset  # heavy; only when the hub is asked for

    dataset_id = dataset_id or HUB_DEFAULTS.get(n_options)
    if not dataset_id:
        raise DataError("hub", 0, "dataset", f"no default hub dataset for {n_options} options; pass one")
    if dataset_id == "json":
        ds = load_dataset("json", data_files={split: config}, split=split)
        source = f"json:{config}"
    else:
        ds = load_dataset(dataset_id, config, split=split, revision=revision)
        source = f"hub:{dataset_id}" + (f":{config}" if config else "")
    return records_to_questionset(ds, source, split)


def load_questions(medqa: str | None = None, split: str = "test", n_options: int = 5) -> QuestionSet:
    """The CLI's one entry point: `hub:<id>[:config]`, `demo`, a path, or $BIASMED_MEDQA_DIR.

    With none of these, the embedded demo set is used (and says so).
    """
    if medqa == "demo" or (medqa is None and not os.environ.get(MEDQA_ENV)):
        return load_demo(split)
    if medqa and medqa.startswith("hub:"):
        _, _, rest = medqa.partition(":")
        ds_id, _, cfg = rest.partition(":")
        return load_hub(ds_id or None, split, n_options, cfg or None)
    return load_medqa(medqa, split, n_options)
