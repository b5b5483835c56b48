"""One run of one model into one run folder: the lifecycle `biasmed.evaluate()` and `biasmed run` share.

Settings are checked first (nothing is written for a bad one); then the folder's identity is
compared with run.json (a folder holds one configuration; biases, mitigations and --limit may
grow), finished samples are skipped, answered prompts come back from the response cache, and the
runner appends the rest. run.json ends in a final state. The outcome is returned; a stop that is
not "complete" is raised as one of biasmed.errors' kinds, carrying the outcome.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import math
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from biasmed.dataset.biases import available_versions
from biasmed.dataset.build import build_benchmark, read_benchmark_file
from biasmed.dataset.medqa import DEMO_NOTE, SPLITS
from biasmed.dataset.mitigations import MitigationSet, load_mitigation_set
from biasmed.dataset.prompts import parse_mitigations
from biasmed.dataset.sources import load_sources
from biasmed.errors import (
    BiasmedError,
    BudgetReached,
    EnvironmentFailure,
    FatalRunError,
    InputError,
    RunIncomplete,
    RunInterrupted,
)
from biasmed.models._apicommon import safe_url
from biasmed.models.base import Model
from biasmed.models.registry import parse_spec, resolve_model
from biasmed.records import MODES, TARGET_MODES, GenParams, Prompt
from biasmed.results import (
    RUN_JSON,
    SAMPLES,
    RunLock,
    SamplesWriter,
    iter_jsonl,
    new_run_meta,
    now_iso,
    read_run_json,
    read_samples,
    write_json_atomic,
)
from biasmed.run.cache import ResponseCache
from biasmed.run.pricing import Price, estimate_tokens, find_price, load_prices
from biasmed.run.runner import ERRORS_FILE, RunConfig, Runner, RunStats

log = logging.getLogger("biasmed")
DEFAULT_MAX_TOKENS = 16  # a single letter (the paper's replies); reasoning turns get more

# a run folder's identity: what must match for a resume to continue it
FINGERPRINT = (
    "model",
    "base_url",
    "params",
    "dataset_sha256",
    "split",
    "n_options",
    "template_version",
    "template_sha256",
    "seed",
    "target_mode",
)


@dataclass(frozen=True)
class RunSettings:
    """Every setting of a run (the `biasmed run` options), checked by `validate()`."""

    # what to ask: the dataset
    medqa: str | None = None  # MedQA file/folder, "hub:<id>", "demo"; None: $BIASMED_MEDQA_DIR or demo
    data: str | None = None  # a file written by `biasmed build` (instead of building on the fly)
    split: str = "test"
    options: int = 5
    biases: Sequence[str] | None = None  # None: the template version's biases; ["all"]
    mitigations: Sequence[str] = ("none",)
    template_version: str = "paper-2024"
    target_mode: str = "incorrect"
    seed: int = 0
    draws: int = 1
    limit: int | None = None
    bias_files: Sequence[str] = ()
    mitigation_files: Sequence[str] = ()  # user mitigation YAML (biasmed.dataset.mitigations)
    # how the model answers
    mode: str = "generate"
    role: str = "system"
    max_tokens: int | None = None  # per turn; None: 16, and 512 for turns read as `Answer: X`
    temperature: float = 0.0
    top_p: float | None = None
    # how requests are made
    concurrency: int = 8
    rpm: float | None = None
    tpm: float | None = None
    timeout: float = 120.0
    max_retries: int = 8
    max_retry_time: float = 600.0
    backoff: float = 1.0
    max_cost: float | None = None
    max_response_chars: int = 20_000  # a longer reply is cut (and marked) before it is stored
    prices: str | None = None
    cache: bool = True
    refresh_cache: bool = False
    cache_dir: str | None = None
    # provider options (model specs only)
    base_url: str | None = None
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None
    model_options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, **kw: Any) -> RunSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise InputError(f"unknown setting {unknown[0]!r} (settings: {', '.join(sorted(known))})")
        for name in ("biases", "mitigations"):
            if isinstance(kw.get(name), str):
                kw[name] = split_list(kw[name])
        return cls(**kw)

    def validate(self) -> None:
        """One InputError for the first bad setting; called before anything is written."""

        def bad(name: str, problem: str) -> InputError:
            return InputError(f"--{name.replace('_', '-')}: {problem}")

        if self.mode not in MODES:
            raise bad("mode", f"must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.role not in ("system", "user"):
            raise bad("role", f"must be system or user, not {self.role!r}")
        if self.options not in (4, 5):
            raise bad("options", "must be 4 or 5")
        if self.split not in SPLITS:
            raise bad("split", f"must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if self.target_mode not in TARGET_MODES:
            raise bad("target_mode", f"must be one of {', '.join(TARGET_MODES)}, not {self.target_mode!r}")
        if self.template_version not in available_versions():
            raise bad(
                "template_version", f"must be one of {', '.join(available_versions())}, not {self.template_version!r}"
            )
        for name in ("concurrency", "draws", "max_response_chars"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("limit", "batch_size", "max_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise bad(name, "must be at least 1")
        for name in ("temperature", "timeout", "max_retry_time", "backoff", "max_cost", "rpm", "tpm", "top_p"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise bad(name, f"must be a finite number, not {v}")
        if self.timeout <= 0:
            raise bad("timeout", "must be > 0")
        for name in ("rpm", "tpm"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise bad(name, "must be > 0")
        for name in ("max_retries", "max_retry_time", "backoff", "temperature", "max_cost"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise bad(name, "must be >= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if not self.cache and self.refresh_cache:
            raise InputError("--no-cache and --refresh-cache exclude each other")
        if self.biases is not None and not list(self.biases):
            raise bad("biases", "is empty (leave it out for the template version's biases)")
        if not list(self.mitigations):
            raise bad("mitigations", "is empty (leave it out for 'none')")
        ms = self.mitigation_set()  # a bad --mitigation-file is its own `path:line: field: problem`
        try:
            parse_mitigations(",".join(self.mitigations), ms)
        except ValueError as e:
            raise bad("mitigations", str(e)) from None

    def mitigation_set(self) -> MitigationSet:
        """The built-in mitigations plus those of --mitigation-file (DataError for a bad file)."""
        return load_mitigation_set(list(self.mitigation_files))

    def params(self) -> GenParams:
        return GenParams(
            mode=self.mode,
            max_tokens=self.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed if self.temperature > 0 else None,
            role=self.role,
        )

    def provider_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"timeout": self.timeout, "concurrency": self.concurrency}
        for k in ("base_url", "device", "dtype", "batch_size"):
            v = getattr(self, k)
            if v is not None:
                opts[k] = v
        for k, v in self.model_options.items():
            opts[str(k).strip().replace("-", "_")] = v
        return opts


def split_list(spec: str | None) -> list[str] | None:
    """A comma list as given on the command line (`a, b,` -> ["a", "b"])."""
    if spec is None:
        return None
    return [s.strip() for s in spec.split(",") if s.strip()]


def parse_model_options(pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (the CLI's --model-option) as a mapping."""
    out: dict[str, str] = {}
    for opt in pairs:
        key, eq, value = opt.partition("=")
        if not eq or not key.strip():
            raise InputError(f"--model-option {opt!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def check_out(out: Path) -> None:
    """An --out that can become a run folder, checked before anything is written: not a file, and
    inside a folder this user may write to."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a run folder; pick another --out")
    parent = out
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent != out and not parent.is_dir():
        raise InputError(f"--out {out}: {parent} is a file, not a folder; pick another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {parent} is not writable; pick another --out")


def default_out(spec: str, mode: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-.") or "run"
    return Path("results") / (slug + ("-logprob" if mode == "logprob" else ""))


# -- the prompts ---------------------------------------------------------------------------------


def load_prompts(s: RunSettings) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompts of this run and the manifest describing where they came from."""
    try:
        return _load_prompts(s)
    except BiasmedError:
        raise
    except (ValueError, KeyError) as e:  # an unknown bias, mitigation, template...: the user's input
        raise InputError(str(e.args[0] if e.args else e)) from None
    except OSError as e:
        raise InputError(f"{e.filename or 'input'}: {e.strerror or e}") from None


def _load_prompts(s: RunSettings) -> tuple[list[Prompt], dict[str, Any]]:
    ms = s.mitigation_set()
    mits = parse_mitigations(",".join(s.mitigations), ms)
    if s.data is not None:
        return _prompts_from_file(Path(s.data), s.biases, mits, s.limit)
    questions, pool, templates = load_sources(
        s.medqa, s.split, s.options, mits, s.template_version, [Path(f) for f in s.bias_files] or None
    )
    bench = build_benchmark(
        questions,
        ",".join(s.biases) if s.biases is not None else None,
        templates,
        s.seed,
        mits,
        pool,
        s.target_mode,
        limit=s.limit,
        role=s.role,
        draws=s.draws,
        mitigation_set=ms,
    )
    return bench.prompts(), bench.manifest()


def _prompts_from_file(
    data: Path, biases: Sequence[str] | None, mitigations: list[str], limit: int | None
) -> tuple[list[Prompt], dict[str, Any]]:
    if not data.is_file():
        raise InputError(f"{data}: no such file (--data takes a file written by `biasmed build`)")
    prompts = read_benchmark_file(data, mitigations)
    wanted = list(biases) if biases is not None else None
    if wanted and wanted != ["all"]:
        keep = set(wanted) | {"none"}
        prompts = [p for p in prompts if p.item.bias in keep]
    if limit:
        keep_q = set(list(dict.fromkeys(p.question_id for p in prompts))[:limit])
        prompts = [p for p in prompts if p.question_id in keep_q]
    # question-major order, as a fresh build gives (prefix sharing, resume order)
    order = {q: i for i, q in enumerate(dict.fromkeys(p.question_id for p in prompts))}
    prompts.sort(key=lambda p: order[p.question_id])
    man_path = data.with_name(data.name.removesuffix(".jsonl") + ".manifest.json")
    manifest: dict[str, Any] = json.loads(man_path.read_text("utf-8")) if man_path.is_file() else {}
    if "dataset" not in manifest:
        manifest["dataset"] = {
            "source": str(data),
            "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            "is_demo": None,
        }
    manifest["data_file"] = str(data)
    manifest.setdefault("template_version", prompts[0].item.template_version if prompts else None)
    manifest.setdefault("seed", None)
    manifest.setdefault("target_mode", None)
    manifest["biases"] = list(dict.fromkeys(p.item.bias for p in prompts))
    manifest["mitigations"] = list(dict.fromkeys(p.mitigation for p in prompts))
    return prompts, manifest


# -- the run -------------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """What a dry run found: nothing is sent."""

    spec: str
    mode: str
    role: str
    prompts: int
    questions: int
    already_done: int
    to_run: int
    cache_hits: int
    requests: int
    input_tokens: int
    output_tokens_max: int
    per_request_out: int  # the smallest per-request output limit (the paper's single letter: 16)
    price: Price | None
    cost_max: float | None
    per_request_out_max: int = 0  # the largest (512 for turns read as `Answer: X`)
    chain_turns: int = 0  # of `requests`: the chains' follow-up turns (each a request of its own)


@dataclass
class RunOutcome:
    """How one invocation on a run folder ended (run.json holds the same, on disk)."""

    path: Path
    status: str  # complete | incomplete | max-cost | fatal | interrupted | dry-run
    message: str | None
    meta: dict[str, Any]
    stats: RunStats
    plan: RunPlan | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, Any]:
        return dict(self.meta.get("totals") or {})


def _fingerprint(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k) for k in FINGERPRINT}


def _check_same_run(out: Path, new: Mapping[str, Any]) -> dict[str, Any]:
    try:
        old = read_run_json(out)
    except ValueError:
        raise InputError(f"{out / RUN_JSON}: not valid JSON; move the folder away or pick another --out") from None
    if not old:
        if (out / SAMPLES).exists():
            raise InputError(f"{out}: has {SAMPLES} but no {RUN_JSON}: not a biasmed run folder; pick another --out")
        return {}
    if old.get("kind") != "run":
        raise InputError(f"{out}: holds a {old.get('kind')!r} folder, not a `biasmed run`; pick another --out")
    diffs = [k for k in FINGERPRINT if _fingerprint(old).get(k) != new.get(k)]
    if diffs:
        k = diffs[0]
        raise InputError(
            f"{out}/{RUN_JSON}: {k}: this folder was run with {old.get(k)!r}, not {new.get(k)!r}; "
            f"use another --out (a run folder holds one configuration)"
        )
    return old


def _existing_samples(out: Path) -> list[dict[str, Any]]:
    path = out / SAMPLES
    return list(iter_jsonl(path)) if path.exists() else []


def folder_totals(out: Path, invocations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals of the whole folder: from samples.jsonl itself (exact even after kill -9)."""
    try:
        samples = read_samples(out)
    except FileNotFoundError:
        samples = []
    fresh = [s for s in samples if not s.get("cached")]
    return {
        "samples": len(samples),
        "errors": sum(1 for s in samples if s.get("error")),
        "nr": sum(1 for s in samples if s.get("nr")),
        "correct": sum(1 for s in samples if s.get("correct") is True),
        "cache_hits": len(samples) - len(fresh),
        "input_tokens": sum(int((s.get("usage") or {}).get("input_tokens") or 0) for s in fresh),
        "output_tokens": sum(int((s.get("usage") or {}).get("output_tokens") or 0) for s in fresh),
        "cost_usd": round(sum(float(s.get("cost_usd") or 0) for s in samples), 6),
        "retries": sum(int(i.get("stats", {}).get("retries", 0)) for i in invocations),
        "requests": sum(int(i.get("stats", {}).get("requests", 0)) for i in invocations),
    }


def resolve(model: str | Model, s: RunSettings) -> Model:
    """A Model for `model`: a spec string is resolved with the provider options; an instance is used."""
    if isinstance(model, Model):
        return model
    try:
        return resolve_model(model, **s.provider_options())
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(str(e.args[0] if e.args else e)) from None


async def run_folder(
    model: str | Model,
    s: RunSettings,
    out: str | Path | None = None,
    *,
    dry_run: bool = False,
    on_progress: Callable[[RunStats], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunOutcome:
    """Run `model` on the prompts of `s` into the folder `out` (resuming it); see the module doc.

    Raises InputError (bad settings or folder), FatalRunError (401/403, unknown model...),
    BudgetReached, RunIncomplete, RunInterrupted — each carrying `.result` = the RunOutcome.
    """
    s.validate()
    spec = model if isinstance(model, str) else model.spec
    provider = parse_spec(spec)[0] if isinstance(model, str) else spec.partition(":")[0]
    out = Path(out) if out is not None else default_out(spec, s.mode)
    check_out(out)
    prompts, manifest = load_prompts(s)
    if not prompts:
        raise InputError("no prompts to run (check --data / --biases / --limit)")
    m = resolve(model, s)
    if s.mode not in m.modes:
        raise InputError(f"{spec}: --mode {s.mode} is not available (this model offers {', '.join(sorted(m.modes))})")
    params = s.params()
    ds = manifest.get("dataset") or {}
    identity = m.cache_identity()
    meta_new: dict[str, Any] = {
        "model": spec,
        "base_url": safe_url(identity.get("base_url") or s.base_url),
        "params": params.as_dict(),
        "dataset_sha256": ds.get("sha256"),
        "split": ds.get("split"),
        "n_options": ds.get("n_options"),
        "template_version": manifest.get("template_version"),
        "template_sha256": manifest.get("template_sha256"),
        "seed": manifest.get("seed"),
        "target_mode": manifest.get("target_mode"),
    }
    table = load_prices(Path(s.prices) if s.prices else None)
    price = find_price(table, provider, spec.partition(":")[2])
    if s.max_cost is not None and price is None:
        raise InputError(f"no price known for {spec}: --max-cost cannot be enforced; add it to a --prices file")
    is_demo = bool(ds.get("is_demo"))
    if is_demo:
        log.warning(
            "using the embedded DEMO SET (biasmed's own illustrative vignettes, not MedQA): its "
            "figures are not BiasMedQA results. Pass --medqa PATH or set BIASMED_MEDQA_DIR."
        )
    for note in m.notes:
        log.info(note)

    cache = None
    if s.cache:
        try:
            cache = ResponseCache(Path(s.cache_dir) / "responses.sqlite" if s.cache_dir else None)
        except (OSError, sqlite3.Error) as e:
            raise InputError(f"cannot open the response cache ({e}); pass --cache-dir DIR or --no-cache") from None
    try:
        if dry_run:
            plan = _plan(
                prompts, out, m, params, price, cache, spec, s.max_tokens or s.mitigation_set().answer_line_max_tokens
            )
            return RunOutcome(out, "dry-run", None, {}, RunStats(), plan=plan)
        # one writer per folder, for the whole run: a second run stops here, naming this one
        with RunLock(out) as lock:
            if lock.took_over:
                log.info(f"took over the lock of {out} left by {lock.took_over} (no longer running)")
            return await _run_locked(
                m, spec, provider, s, prompts, manifest, meta_new, out, price, cache, is_demo, on_progress, on_start
            )
    finally:
        if cache is not None:
            cache.close()


async def _run_locked(
    m: Model,
    spec: str,
    provider: str,
    s: RunSettings,
    prompts: list[Prompt],
    manifest: Mapping[str, Any],
    meta_new: dict[str, Any],
    out: Path,
    price: Price | None,
    cache: ResponseCache | None,
    is_demo: bool,
    on_progress: Callable[[RunStats], None] | None,
    on_start: Callable[[int], None] | None,
) -> RunOutcome:
    old = _check_same_run(out, meta_new) if out.exists() else {}
    existing = _existing_samples(out)
    done = {r["sample_id"] for r in existing if "sample_id" in r}
    todo = [p for p in prompts if p.sample_id not in done]
    spent_before = sum(float(r.get("cost_usd") or 0) for r in existing)
    any_success = any(r.get("error") is None for r in existing)

    out.mkdir(parents=True, exist_ok=True)
    meta = new_run_meta("run")
    if old:
        meta["created_at"] = old.get("created_at", meta["created_at"])
    invocations: list[dict[str, Any]] = list(old.get("invocations") or [])
    cfg = RunConfig(
        concurrency=s.concurrency,
        rpm=s.rpm,
        tpm=s.tpm,
        timeout=s.timeout,
        max_retries=s.max_retries,
        max_retry_time=s.max_retry_time,
        backoff_base=s.backoff,
        max_cost=s.max_cost,
        spent_before=spent_before,
        refresh_cache=s.refresh_cache,
        max_response_chars=s.max_response_chars,
        answer_line_max_tokens=s.max_tokens or s.mitigation_set().answer_line_max_tokens,
    )
    ds = dict(manifest.get("dataset") or {})
    meta.update(meta_new)
    meta.update(
        {
            "provider": provider,
            "model_identity": m.cache_identity(),
            "notes": list(m.notes),
            "scoring": "biasmed.scoring robust rule (generate); argmax of letter log-probs (logprob)",
            "dataset": ds,
            "is_demo": is_demo,
            "demo_pool": manifest.get("demo_pool"),
            "data_file": manifest.get("data_file"),
            "biases": list(dict.fromkeys([*(old.get("biases") or []), *manifest.get("biases", [])])),
            "mitigations": list(dict.fromkeys([*(old.get("mitigations") or []), *s.mitigations])),
            # the mitigations' version and sha256, and a --mitigation-file's text (what was asked)
            "mitigation_set": manifest.get("mitigation_set") or old.get("mitigation_set"),
            "limit": s.limit,
            "prompts": len(prompts),
            "runner": {
                k: getattr(cfg, k)
                for k in ("concurrency", "rpm", "tpm", "timeout", "max_retries", "max_retry_time", "max_cost")
            },
            "cache": {
                "enabled": cache is not None,
                "refresh": s.refresh_cache,
                "path": str(cache.path) if cache is not None else None,
            },
            "price": None
            if price is None
            else {"matched": price.matched, "input_per_1m": price.input, "output_per_1m": price.output},
            "status": "running",
            "updated_at": now_iso(),
            "invocations": invocations,
            "totals": old.get("totals") or {},
        }
    )
    if is_demo:
        meta["WARNING"] = DEMO_NOTE
    try:
        write_json_atomic(out / RUN_JSON, meta)
    except OSError as e:
        raise _environment_failure(e, out) from None

    if on_start is not None:
        on_start(len(todo))
    started_at, t0 = now_iso(), time.monotonic()
    failure: BaseException | None = None
    try:
        writer = SamplesWriter(out / SAMPLES)
    except OSError as e:
        raise _environment_failure(e, out) from None
    runner = Runner(
        m,
        s.params(),
        writer,
        cache=cache,
        price=price,
        config=cfg,
        errors_path=out / ERRORS_FILE,
        on_progress=on_progress,
        any_success_before=any_success,
    )
    restore_sigterm = _sigterm_cancels_this_task()
    try:
        try:
            result = await runner.run(todo)
            status, message = result.status, result.message
        finally:
            await m.aclose()
    except (KeyboardInterrupt, RunInterrupted, asyncio.CancelledError):
        status, message = "interrupted", "interrupted; run the same command to continue"
    except OSError as e:  # disk full, permission, I/O error: samples written so far are whole
        failure = _environment_failure(e, out)
        status, message = "failed", str(failure)
    except Exception as e:  # a bug: record it in run.json, then let it surface
        failure = e
        status, message = "failed", f"internal error: {type(e).__name__}: {e}"[:500]
    finally:
        restore_sigterm()
        try:
            writer.close()
        except OSError as e:
            if failure is None:
                failure = _environment_failure(e, out)
                status, message = "failed", str(failure)

    invocations.append(
        {
            "started_at": started_at,
            "finished_at": now_iso(),
            "wall_s": round(time.monotonic() - t0, 3),
            "status": status,
            "stats": runner.stats.as_dict(),
        }
    )
    meta.update(
        {
            "status": status,
            "message": message,
            "updated_at": now_iso(),
            "invocations": invocations,
            "totals": folder_totals(out, invocations),
        }
    )
    write_final_json(out / RUN_JSON, meta)
    outcome = RunOutcome(out, status, message, meta, runner.stats, warnings=list(runner.warnings))
    for w in runner.warnings:
        log.warning(w)
    if failure is not None:
        if isinstance(failure, BiasmedError):
            failure.result = outcome
        raise failure
    _raise_for(outcome)
    return outcome


def _environment_failure(e: OSError, out: Path) -> EnvironmentFailure:
    """One line for an OSError of the run folder's disk: what failed, where, and that a rerun resumes."""
    what = {
        errno.ENOSPC: "disk full (ENOSPC)",
        errno.EDQUOT: "disk quota exceeded (EDQUOT)",
        errno.EACCES: "permission denied (EACCES)",
        errno.EPERM: "not permitted (EPERM)",
        errno.EROFS: "read-only file system (EROFS)",
        errno.EFBIG: "file too large (EFBIG)",
        errno.EIO: "I/O error (EIO)",
    }.get(e.errno or 0, e.strerror or type(e).__name__)
    where = e.filename or out
    return EnvironmentFailure(
        f"{what} writing {where}; nothing lost: free the space or fix the permission, "
        "then run the same command again to resume"
    )


def write_final_json(path: Path, meta: Mapping[str, Any]) -> None:
    """run.json's final state, even on a full disk: atomically if possible, else overwritten in place
    (the old file's blocks are already allocated, and the compact form fits in them)."""
    try:
        write_json_atomic(path, meta)
        return
    except OSError:
        pass
    data = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    try:
        size = path.stat().st_size
        if len(data) > size:  # does not fit: the state and the reason, at least
            keep = {
                k: meta.get(k)
                for k in (
                    "kind",
                    "biasmed_version",
                    "model",
                    "status",
                    "message",
                    "updated_at",
                    "created_at",
                    *FINGERPRINT,
                )
            }
            data = json.dumps(keep, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        if len(data) <= size:
            with open(path, "r+b") as f:
                f.write(data.ljust(size, b" ")[:size] if len(data) < size else data)
                f.flush()
                os.fsync(f.fileno())
            return
    except OSError:
        pass
    log.warning(f"{path}: could not record the final state ({meta.get('status')}): the disk is full")


def _sigterm_cancels_this_task() -> Callable[[], None]:
    """SIGTERM cancels the run like Ctrl-C (run.json then says "interrupted"); returns the undo."""
    task = asyncio.current_task()
    if task is None or threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    except (NotImplementedError, RuntimeError, ValueError):
        return lambda: None

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGTERM)

    return undo


def _raise_for(outcome: RunOutcome) -> None:
    err: Exception | None = None
    if outcome.status == "interrupted":
        err = RunInterrupted(outcome.message or "interrupted")
    elif outcome.status == "fatal":
        err = FatalRunError(
            f"{outcome.message} (nothing lost: {outcome.totals.get('samples', 0)} samples kept in {outcome.path})"
        )
    elif outcome.status == "max-cost":
        err = BudgetReached(outcome.message or "max cost reached")
    elif outcome.status == "incomplete":
        err = RunIncomplete(outcome.message or "incomplete")
    if err is not None:
        err.result = outcome  # type: ignore[attr-defined]
        raise err


def _plan(
    prompts: list[Prompt],
    out: Path,
    m: Model,
    params: GenParams,
    price: Price | None,
    cache: ResponseCache | None,
    spec: str,
    answer_line_max_tokens: int | None = None,
) -> RunPlan:
    """What a run would send, turn by turn: each turn's key and token limit as the runner makes
    them. A chain's later turn is looked up when the turn before it is in the cache (its reply
    is then known); otherwise it is counted as one more request, its input estimated with the
    earlier turns' replies at their full token limit."""
    done: set[str] = {r["sample_id"] for r in _existing_samples(out) if "sample_id" in r}
    todo = [p for p in prompts if p.sample_id not in done]
    runner = Runner(m, params, None, cache=cache, config=RunConfig(answer_line_max_tokens=answer_line_max_tokens))

    def out_tokens(tp: Prompt) -> int:
        return 1 if params.mode == "logprob" else runner.params_for(tp).max_tokens

    hits: set[str] = set()
    distinct: dict[str, int] = {}  # key -> output token limit: identical turns are sent once
    limits = {out_tokens(p.at_turn(("",) * t)) for p in todo for t in range(p.turns)}
    n_in = n_out = undeduped = follow_ups = 0
    for p in todo:
        replies: list[str] = []
        all_cached = True
        for t in range(p.turns):
            tp = p.at_turn(tuple(replies))
            key = runner.key(tp)
            hit = runner.cache.get_many([key]).get(key) if runner.cache is not None else None
            if hit is not None:
                replies.append(str(hit.get("text") or ""))
                continue
            all_cached = False
            if key not in distinct:
                distinct[key] = out_tokens(tp)
                n_in += estimate_tokens(tp.transcript())
                follow_ups += t > 0
            for _ in range(t + 1, p.turns):  # replies unknown: each later turn is a request
                replies.append("x" * 4 * out_tokens(tp))
                tp = p.at_turn(tuple(replies))
                undeduped += 1
                follow_ups += 1
                n_in += estimate_tokens(tp.transcript())
                n_out += out_tokens(tp)
            break
        if all_cached:
            hits.add(p.sample_id)
    n_out += sum(distinct.values())
    lo, hi = (min(limits), max(limits)) if limits else (params.max_tokens, params.max_tokens)
    return RunPlan(
        spec=spec,
        mode=params.mode,
        role=params.role,
        prompts=len(prompts),
        questions=len({p.question_id for p in prompts}),
        already_done=len(prompts) - len(todo),
        to_run=len(todo),
        cache_hits=len(hits),
        requests=len(distinct) + undeduped,
        input_tokens=n_in,
        output_tokens_max=n_out,
        per_request_out=lo,
        price=price,
        cost_max=None if price is None else price.cost(n_in, n_out),
        per_request_out_max=hi,
        chain_turns=follow_ups,
    )
