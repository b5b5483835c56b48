"""Exports of a built benchmark to other tools' formats.

- `save_hf_dataset`: a `datasets.Dataset` saved to disk (`biasmed build --format hf`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from biasmed.results import iter_jsonl


def _manifest_path(jsonl_path: Path) -> Path:
    return jsonl_path.with_name(jsonl_path.name.removesuffix(".jsonl") + ".manifest.json")


def _hf_row(rec: dict[str, Any]) -> dict[str, Any]:
    # Arrow cannot store a struct without fields: records built without demo mitigations carry
    # an empty `demo_ids` object, stored as null instead
    row = dict(rec)
    if not row.get("demo_ids"):
        row["demo_ids"] = None
    return row


def save_hf_dataset(jsonl_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Save the records of a `biasmed build` JSONL file as a `datasets.Dataset` in `out_dir`.

    One row per record, the same fields as the JSONL (nested `options`, `prompts` as structs).
    The build manifest, when present, is kept as the dataset's description (JSON), so a demo-set
    build still says DEMO. Read it back with `datasets.load_from_disk(out_dir)`.
    """
    from datasets import Dataset, DatasetInfo  # heavy; only for --format hf

    jsonl_path, out_dir = Path(jsonl_path), Path(out_dir)
    rows = [_hf_row(r) for r in iter_jsonl(jsonl_path)]
    if not rows:
        raise ValueError(f"{jsonl_path}: no records to export")
    manifest = _manifest_path(jsonl_path)
    description = manifest.read_text("utf-8") if manifest.is_file() else ""
    ds = Dataset.from_list(rows, info=DatasetInfo(description=description))
    ds.save_to_disk(str(out_dir))
    return out_dir


def read_hf_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The build manifest stored with a dataset saved by `save_hf_dataset` ({} when absent)."""
    from datasets import load_from_disk

    desc = load_from_disk(str(out_dir)).info.description or ""
    return json.loads(desc) if desc.strip() else {}
