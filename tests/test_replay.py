"""`replay:` returns a recorded answer only for the same question, condition and planted letter."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from biasmed.dataset.biases import load_templates, make_item
from biasmed.dataset.medqa import load_demo
from biasmed.models.base import GenParams
from biasmed.models.replay import make_replay
from biasmed.dataset.prompts import Renderer


def _write_run(folder: Path, records: list[dict]) -> None:
    folder.mkdir()
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _record(prompt, response: str, target: str | None, sha: str) -> dict:
    it = prompt.item
    return {"sample_id": prompt.sample_id, "question_id": it.question.id, "bias": it.bias,
            "mitigation": prompt.mitigation, "template_version": it.template_version,
            "answer_idx": it.question.answer_idx, "bias_target": target, "prompt_sha256": sha,
            "model": "paper", "response": response}


def test_replay_matches_by_text_then_by_same_planted_letter(tmp_path: Path) -> None:
    t = load_templates()
    q = load_demo().questions[0]
    r = Renderer(t)
    ours = r.render(make_item(q, "recency", t, seed=0))
    other_letter = next(x for x in q.wrong_letters if x != ours.item.target)
    theirs = r.render(make_item(q, "recency", t, target=other_letter))
    unbiased = r.render(make_item(q, "none", t))
    _write_run(tmp_path / "run", [
        _record(theirs, "X-other-target", other_letter, theirs.sha256),   # same sample_id, other letter
        _record(unbiased, "Y-escaped", None, "0" * 64),                  # same question, other text hash
    ])
    model = make_replay(str(tmp_path / "run"))
    a_ours, a_unbiased, a_theirs = asyncio.run(model.answer([ours, unbiased, theirs], GenParams()))
    assert a_ours.error is not None and "no answer" in a_ours.error and a_ours.text is None
    assert a_unbiased.text == "Y-escaped"       # accepted: same condition and (no) planted letter
    assert a_theirs.text == "X-other-target"    # exact text match
