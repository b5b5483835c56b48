"""`replay:<results dir>`: answers read back from an earlier or imported run (e.g. the paper's logs).

A prompt is matched by the sha256 of its text first. A sample_id match is accepted only when the
recorded sample asked the same thing: same planted letter, correct letter and template version
(the paper's 2023 logs carry some questions with raw JSON escapes, so their text hash differs
although the question is the same). Any other prompt becomes a sample with `error`
"replay: no answer ...": an answer to a prompt with another planted letter is never returned.
Nothing is cached (the source IS the record).
Re-running the replayed replies through biasmed's scoring makes imported runs comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biasmed.models.base import Answer, ErrorKind, GenParams, Model
from biasmed.records import Prompt
from biasmed.results import read_samples


class ReplayModel(Model):
    cacheable = False
    max_chunk = 4096

    def __init__(self, spec: str, run_dir: Path):
        self.spec = spec
        self.run_dir = run_dir
        self.modes = frozenset({"generate", "logprob"})
        self._by_id: dict[str, dict[str, Any]] | None = None
        self._by_sha: dict[str, dict[str, Any]] = {}

    def cache_identity(self) -> dict[str, Any]:
        return {"provider": "replay", "run_dir": str(self.run_dir.resolve())}

    def _load(self) -> None:

        self._by_id = {}
        for s in read_samples(self.run_dir):
            self._by_id[s["sample_id"]] = s
            if s.get("prompt_sha256"):
                self._by_sha.setdefault(s["prompt_sha256"], s)

    async def prepare(self) -> None:
        if self._by_id is None:
            self._load()

    async def answer(self, prompts: Sequence[Prompt], params: GenParams) -> list[Answer]:
        if self._by_id is None:
            self._load()
        assert self._by_id is not None
        out = []
        for p in prompts:
            s = self._by_sha.get(p.sha256) or _same_question(self._by_id.get(p.sample_id), p)
            if s is None:
                out.append(Answer.failure(ErrorKind.NOT_FOUND, f"no answer for {p.sample_id} in {self.run_dir}"))
                continue
            out.append(
                Answer(
                    text=s.get("response"),
                    logprobs=s.get("logprobs"),
                    usage=dict(s.get("usage") or {}),
                    error=s.get("error"),
                    finish_reason=(s.get("extra") or {}).get("finish_reason"),
                    refusal=(s.get("extra") or {}).get("refusal"),
                    latency_s=s.get("latency_s"),
                )
            )
        return out

    async def aclose(self) -> None:
        return None


def _same_question(s: dict[str, Any] | None, p: Prompt) -> dict[str, Any] | None:
    if s is None:
        return None
    same = (
        s.get("bias_target") == p.item.target
        and s.get("answer_idx") == p.item.question.answer_idx
        and s.get("template_version") == p.item.template_version
    )
    return s if same else None


def make_replay(rest: str, **options: Any) -> ReplayModel:
    if not rest:
        raise ValueError("replay needs a results folder: replay:<dir>")
    path = Path(rest).expanduser()
    if not (path / "samples.jsonl").is_file():
        raise ValueError(f"{path}: no samples.jsonl (replay:<dir> needs a biasmed results folder)")
    return ReplayModel(f"replay:{rest}", path)
