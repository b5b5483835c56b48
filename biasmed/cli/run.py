"""`biasmed run`: put the BiasMedQA prompts to a model and append one sample per prompt.

Running the same command again continues where it stopped (samples already in
`<out>/samples.jsonl` are skipped; answered prompts come back from the response cache). A run
folder belongs to one configuration: a different model, dataset, template or generation
parameters is refused (use another --out); biases, mitigations and --limit may grow.

Exit codes: 0 complete; 1 some samples still failed after their retries (run again to retry
them); 2 bad input or a fatal API error (401/403, no key, unknown model); 3 stopped by --max-cost;
130 interrupted. Everything written before a stop is valid.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from biasmed.cli._common import fail, split_list, user_errors

EXIT_INCOMPLETE, EXIT_BAD, EXIT_MAX_COST, EXIT_INTERRUPTED = 1, 2, 3, 130
# a run folder's identity: what must match for a resume to continue it
_FINGERPRINT = ("model", "base_url", "params", "dataset_sha256", "split", "n_options", "template_version",
                "template_sha256", "seed", "target_mode")


def default_out(spec: str, mode: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-.") or "run"
    return Path("results") / (slug + ("-logprob" if mode == "logprob" else ""))


def _load_prompts(data: Path | None, medqa: str | None, split: str, n_options: int, biases: str | None,
                  template_version: str, seed: int, mitigations: list[str], target_mode: str,
                  limit: int | None, bias_files: list[Path] | None, role: str,
                  draws: int = 1) -> tuple[list[Any], dict[str, Any]]:
    """The prompts of this run and the manifest describing where they came from."""
    if data is not None:
        return _prompts_from_file(data, biases, mitigations, limit)
    from biasmed.dataset.build import build_benchmark
    from biasmed.dataset.sources import load_sources

    questions, pool, templates = load_sources(medqa, split, n_options, mitigations, template_version, bias_files)
    bench = build_benchmark(questions, biases, templates, seed, mitigations, pool, target_mode,
                            limit=limit, role=role, draws=draws)
    return bench.prompts(), bench.manifest()


def _prompts_from_file(data: Path, biases: str | None, mitigations: list[str],
                       limit: int | None) -> tuple[list[Any], dict[str, Any]]:
    import hashlib
    import json

    from biasmed.dataset.build import read_benchmark_file

    if not data.is_file():
        raise FileNotFoundError(f"{data}: no such file (--data takes a file written by `biasmed build`)")
    prompts = read_benchmark_file(data, mitigations)
    wanted = split_list(biases)
    if wanted and wanted != ["all"]:
        keep = set(wanted) | {"none"}
        prompts = [p for p in prompts if p.item.bias in keep]
    if limit:
        qids = list(dict.fromkeys(p.item.question.id for p in prompts))[:limit]
        keep_q = set(qids)
        prompts = [p for p in prompts if p.item.question.id in keep_q]
    # question-major order, as a fresh build gives (prefix sharing, resume order)
    order = {q: i for i, q in enumerate(dict.fromkeys(p.item.question.id for p in prompts))}
    prompts.sort(key=lambda p: order[p.item.question.id])
    man_path = data.with_name(data.name.removesuffix(".jsonl") + ".manifest.json")
    manifest: dict[str, Any] = json.loads(man_path.read_text("utf-8")) if man_path.is_file() else {}
    if "dataset" not in manifest:
        manifest["dataset"] = {"source": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                               "is_demo": None}
    manifest["data_file"] = str(data)
    manifest.setdefault("template_version", prompts[0].item.template_version if prompts else None)
    manifest.setdefault("seed", None)
    manifest.setdefault("target_mode", None)
    manifest["biases"] = list(dict.fromkeys(p.item.bias for p in prompts))
    manifest["mitigations"] = list(dict.fromkeys(p.mitigation for p in prompts))
    return prompts, manifest


def _fingerprint(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k) for k in _FINGERPRINT}


def _check_same_run(out: Path, new: dict[str, Any]) -> dict[str, Any]:
    from biasmed.results import read_run_json

    try:
        old = read_run_json(out)
    except ValueError:
        fail(f"{out / 'run.json'}: not valid JSON; move the folder away or pick another --out")
    if not old:
        if (out / "samples.jsonl").exists():
            fail(f"{out}: has samples.jsonl but no run.json: not a biasmed run folder; pick another --out")
        return {}
    if old.get("kind") != "run":
        fail(f"{out}: holds a {old.get('kind')!r} folder, not a `biasmed run`; pick another --out")
    diffs = [k for k in _FINGERPRINT if _fingerprint(old).get(k) != new.get(k)]
    if diffs:
        k = diffs[0]
        fail(f"{out}/run.json: {k}: this folder was run with {old.get(k)!r}, not {new.get(k)!r}; "
             f"use another --out (a run folder holds one configuration)")
    return old


def _existing_samples(out: Path) -> list[dict[str, Any]]:
    from biasmed.results import SAMPLES, iter_jsonl

    path = out / SAMPLES
    return list(iter_jsonl(path)) if path.exists() else []


def _totals(out: Path, invocations: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of the whole folder: from samples.jsonl itself (exact even after kill -9)."""
    from biasmed.results import read_samples

    try:
        samples = read_samples(out)
    except FileNotFoundError:
        samples = []
    return {
        "samples": len(samples),
        "errors": sum(1 for s in samples if s.get("error")),
        "nr": sum(1 for s in samples if s.get("nr")),
        "correct": sum(1 for s in samples if s.get("correct") is True),
        "cache_hits": sum(1 for s in samples if s.get("cached")),
        "input_tokens": sum(int((s.get("usage") or {}).get("input_tokens") or 0) for s in samples if not s.get("cached")),
        "output_tokens": sum(int((s.get("usage") or {}).get("output_tokens") or 0) for s in samples if not s.get("cached")),
        "cost_usd": round(sum(float(s.get("cost_usd") or 0) for s in samples), 6),
        "retries": sum(int(i.get("stats", {}).get("retries", 0)) for i in invocations),
        "requests": sum(int(i.get("stats", {}).get("requests", 0)) for i in invocations),
    }


class _ProgressView:
    """A rich progress bar on stderr: done/total, rate, ETA, cache hits, retries, errors, cost."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from biasmed.cli._common import stderr_console

        console = stderr_console()
        label = label if len(label) <= 24 else label[:23] + "…"
        bar = [BarColumn(bar_width=24)] if console.width >= 120 else []  # narrow terminal: numbers only
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), *bar, MofNCompleteColumn(), TextColumn("{task.fields[rate]:.1f}/s"), TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("cache {task.fields[hits]} retry {task.fields[retries]} err {task.fields[errors]}"
                       " fail {task.fields[failed]} ${task.fields[cost]:.4f}"),
            console=console, refresh_per_second=8, transient=False)
        self.task = self.progress.add_task(label, total=total, rate=0.0, hits=0, retries=0, errors=0, failed=0,
                                           cost=0.0)
        self.progress.start()
        self._last = 0.0

    def update(self, s: Any) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last < 0.05 and s.done < s.total:
            return  # the bar redraws 8 times a second; no need to update it more often
        self._last = now
        self.progress.update(self.task, completed=s.done, rate=s.rate(), hits=s.cache_hits, retries=s.retries,
                             errors=s.errors, failed=s.failed, cost=s.cost_usd)

    def stop(self, s: Any) -> None:
        if self.progress is not None:
            self._last = 0.0
            self.update(s)
            self.progress.stop()


def run_cmd(
    model: Annotated[str, typer.Option("--model", help="model spec: see `biasmed models` (e.g. openai:gpt-4o-mini, smollm2)")],
    out: Annotated[Optional[Path], typer.Option(help="run folder (default results/<model>); the same command again resumes it")] = None,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="API base URL (openai-compatible servers, proxies)")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="a file written by `biasmed build` (else the benchmark is built on the fly)")] = None,
    medqa: Annotated[Optional[str], typer.Option("--medqa", help="MedQA JSONL file or folder, 'hub:<id>', or 'demo'. Default: $BIASMED_MEDQA_DIR, else the embedded demo set.")] = None,
    split: Annotated[str, typer.Option(help="test or dev")] = "test",
    options: Annotated[int, typer.Option("--options", help="5 or 4 answer options")] = 5,
    biases: Annotated[Optional[str], typer.Option(help="comma list, 'all', or default (the version's biases); 'none' is always included")] = None,
    template_version: Annotated[str, typer.Option("--template-version", help="paper-2024 or paper-2023")] = "paper-2024",
    mitigations: Annotated[str, typer.Option(help="comma list of none,education,one-shot,few-shot")] = "none",
    target_mode: Annotated[str, typer.Option("--target-mode", help="incorrect | correct | random")] = "incorrect",
    seed: Annotated[int, typer.Option(help="seed of the target and demo draws (and of sampling when --temperature > 0)")] = 0,
    limit: Annotated[Optional[int], typer.Option(help="first N questions, each with every requested condition")] = None,
    draws: Annotated[int, typer.Option(help="re-draw the planted targets K times (variance over draws)")] = 1,
    bias_file: Annotated[Optional[list[Path]], typer.Option("--bias-file", help="user-authored bias YAML (repeatable)")] = None,
    mode: Annotated[str, typer.Option(help="generate (the model writes a reply) or logprob (letter log-probs)")] = "generate",
    role: Annotated[str, typer.Option(help="send the prompt as one system message (the paper) or user message")] = "system",
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="reply length limit (generate mode)")] = 16,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.0,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="nucleus sampling (not sent unless given)")] = None,
    concurrency: Annotated[int, typer.Option(help="API requests in flight")] = 8,
    rpm: Annotated[Optional[float], typer.Option(help="requests per minute limit")] = None,
    tpm: Annotated[Optional[float], typer.Option(help="tokens per minute limit (estimated input + max output)")] = None,
    timeout: Annotated[float, typer.Option(help="per-request timeout, seconds")] = 120.0,
    max_retries: Annotated[int, typer.Option("--max-retries", help="retries per request (429, 5xx, 529, timeouts, resets)")] = 8,
    max_retry_time: Annotated[float, typer.Option("--max-retry-time", help="give up on a request after this many seconds of retrying")] = 600.0,
    backoff: Annotated[float, typer.Option("--backoff", help="first retry delay in seconds (doubles per retry, with jitter; Retry-After wins)")] = 1.0,
    max_cost: Annotated[Optional[float], typer.Option("--max-cost", help="stop cleanly before this run folder's spend (USD) would exceed it")] = None,
    prices: Annotated[Optional[Path], typer.Option("--prices", help="price table overriding the built-in one ($BIASMED_PRICES)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print prompt count, estimated tokens and cost; send nothing")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="neither read nor write the response cache")] = False,
    refresh_cache: Annotated[bool, typer.Option("--refresh-cache", help="ask the model again and overwrite cached answers")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="response cache folder (default $BIASMED_CACHE_DIR or ~/.cache/biasmed)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or summary")] = False,
    device: Annotated[Optional[str], typer.Option(help="local models: cpu, cuda, cuda:1, mps")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="local models: bfloat16, float16, float32")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="local models: prompts per forward pass")] = None,
    model_option: Annotated[Optional[list[str]], typer.Option("--model-option", help="provider option KEY=VALUE (repeatable), e.g. chat_template=false, prefix_sharing=false, packed=false, threads=2")] = None,
) -> None:
    """Put the prompts to a model; write <out>/samples.jsonl and run.json (help text: _HELP)."""
    from biasmed.models.base import MODES

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}")
    if role not in ("system", "user"):
        fail("--role must be system or user")
    if options not in (4, 5):
        fail("--options must be 4 or 5")
    for name, v in (("--concurrency", concurrency), ("--max-tokens", max_tokens)):
        if v < 1:
            fail(f"{name} must be at least 1")
    if batch_size is not None and batch_size < 1:
        fail("--batch-size must be at least 1")
    if timeout <= 0 or max_retries < 0 or max_retry_time < 0 or temperature < 0 or backoff < 0:
        fail("--timeout must be > 0; --max-retries, --max-retry-time, --backoff and --temperature must be >= 0")
    if max_cost is not None and max_cost < 0:
        fail("--max-cost must be >= 0")
    if no_cache and refresh_cache:
        fail("--no-cache and --refresh-cache exclude each other")

    with user_errors():
        from biasmed.models.registry import parse_spec
        from biasmed.dataset.prompts import parse_mitigations

        provider, _ = parse_spec(model)
        mits = parse_mitigations(mitigations)
        prompts, manifest = _load_prompts(data, medqa, split, options, biases, template_version, seed, mits,
                                          target_mode, limit, bias_file, role, draws)
    if not prompts:
        fail("no prompts to run (check --data / --biases / --limit)")

    from biasmed.models.base import GenParams

    params = GenParams(mode=mode, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                       seed=seed if temperature > 0 else None, role=role)
    run_opts: dict[str, Any] = {"timeout": timeout, "concurrency": concurrency}
    for k, v in (("base_url", base_url), ("device", device), ("dtype", dtype), ("batch_size", batch_size)):
        if v is not None:
            run_opts[k] = v
    for opt in model_option or []:
        key, eq, value = opt.partition("=")
        if not eq or not key.strip():
            fail(f"--model-option {opt!r}: expected KEY=VALUE")
        run_opts[key.strip().replace("-", "_")] = value.strip()
    with user_errors():
        from biasmed.models.registry import resolve_model

        m = resolve_model(model, **run_opts)
    if mode not in m.modes:
        fail(f"{model}: --mode {mode} is not available (this model offers {', '.join(sorted(m.modes))})")

    from biasmed.models._apicommon import safe_url

    ds = manifest.get("dataset") or {}
    identity = m.cache_identity()
    meta_new: dict[str, Any] = {
        "model": model, "base_url": safe_url(identity.get("base_url") or base_url), "params": params.as_dict(),
        "dataset_sha256": ds.get("sha256"), "split": ds.get("split"), "n_options": ds.get("n_options"),
        "template_version": manifest.get("template_version"), "template_sha256": manifest.get("template_sha256"),
        "seed": manifest.get("seed"), "target_mode": manifest.get("target_mode"),
    }
    out = out or default_out(model, mode)

    with user_errors():
        from biasmed.run.pricing import find_price, load_prices

        table = load_prices(prices)
    model_name = model.partition(":")[2]
    price = find_price(table, provider, model_name)
    if max_cost is not None and price is None:
        fail(f"no price known for {model}: --max-cost cannot be enforced; add it to a --prices file")

    cache = None
    if not no_cache:
        from biasmed.run.cache import ResponseCache

        try:
            cache = ResponseCache(cache_dir / "responses.sqlite" if cache_dir else None)
        except (OSError, sqlite3.Error) as e:
            fail(f"cannot open the response cache ({e}); pass --cache-dir DIR or --no-cache")

    is_demo = bool(ds.get("is_demo"))
    if is_demo:
        typer.echo("biasmed: note: using the embedded DEMO SET (biasmed's own illustrative vignettes, not MedQA): "
                   "its figures are not BiasMedQA results. Pass --medqa PATH or set BIASMED_MEDQA_DIR.", err=True)

    for note in getattr(m, "notes", []) or []:
        typer.echo(f"biasmed: note: {note}", err=True)

    if dry_run:
        try:
            _dry_run(prompts, out, m, params, price, cache, model)
        finally:
            if cache is not None:
                cache.close()
        return

    old = _check_same_run(out, meta_new) if out.exists() else {}
    with user_errors():
        existing = _existing_samples(out)
    done = {s["sample_id"] for s in existing if "sample_id" in s}
    todo = [p for p in prompts if p.sample_id not in done]
    spent_before = sum(float(s.get("cost_usd") or 0) for s in existing)
    any_success = any(s.get("error") is None for s in existing)

    from biasmed.results import RUN_JSON, SAMPLES, SamplesWriter, new_run_meta, now_iso, write_json_atomic
    from biasmed.run.runner import ERRORS_FILE, RunConfig, Runner

    out.mkdir(parents=True, exist_ok=True)
    meta = new_run_meta("run")
    if old:
        meta["created_at"] = old.get("created_at", meta["created_at"])
    invocations: list[dict[str, Any]] = list(old.get("invocations") or [])
    cfg = RunConfig(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout=timeout, max_retries=max_retries,
                    max_retry_time=max_retry_time, backoff_base=backoff, max_cost=max_cost, spent_before=spent_before,
                    refresh_cache=refresh_cache)
    meta.update(meta_new)
    meta.update({
        "provider": provider,
        "model_identity": identity,
        "notes": list(getattr(m, "notes", []) or []),
        "scoring": "biasmed.scoring robust rule (generate); argmax of letter log-probs (logprob)",
        "dataset": ds,
        "is_demo": is_demo,
        "demo_pool": manifest.get("demo_pool"),
        "data_file": manifest.get("data_file"),
        "biases": list(dict.fromkeys([*(old.get("biases") or []), *manifest.get("biases", [])])),
        "mitigations": list(dict.fromkeys([*(old.get("mitigations") or []), *mits])),
        "limit": limit,
        "prompts": len(prompts),
        "runner": {k: getattr(cfg, k) for k in ("concurrency", "rpm", "tpm", "timeout", "max_retries",
                                                 "max_retry_time", "max_cost")},
        "cache": {"enabled": cache is not None, "refresh": refresh_cache,
                  "path": str(cache.path) if cache is not None else None},
        "price": None if price is None else {"matched": price.matched, "input_per_1m": price.input,
                                             "output_per_1m": price.output},
        "status": "running",
        "updated_at": now_iso(),
        "invocations": invocations,
        "totals": old.get("totals") or {},
    })
    if is_demo:
        from biasmed.dataset.medqa import DEMO_NOTE

        meta["WARNING"] = DEMO_NOTE
    write_json_atomic(out / RUN_JSON, meta)

    view = _ProgressView(len(todo), model, enabled=not quiet and sys.stderr.isatty() and bool(todo))
    started_at, t0 = now_iso(), time.monotonic()
    writer = SamplesWriter(out / SAMPLES)
    runner = Runner(m, params, writer, cache=cache, price=price, config=cfg, errors_path=out / ERRORS_FILE,
                    on_progress=view.update, any_success_before=any_success)
    import asyncio

    async def _go() -> Any:
        try:
            return await runner.run(todo)
        finally:
            await m.aclose()

    interrupted = False
    try:
        result = asyncio.run(_go())
        status, message = result.status, result.message
    except KeyboardInterrupt:
        interrupted, status, message = True, "interrupted", "interrupted (Ctrl-C); run the same command to continue"
    finally:
        writer.close()
        if cache is not None:
            cache.close()
        view.stop(runner.stats)

    invocations.append({"started_at": started_at, "finished_at": now_iso(),
                        "wall_s": round(time.monotonic() - t0, 3), "status": status,
                        "stats": runner.stats.as_dict()})
    meta.update({"status": status, "message": message, "updated_at": now_iso(), "invocations": invocations,
                 "totals": _totals(out, invocations)})
    write_json_atomic(out / RUN_JSON, meta)

    s = runner.stats
    for w in runner.warnings:
        typer.echo(f"biasmed: warning: {w}", err=True)
    if not quiet:
        tot = meta["totals"]
        typer.echo(f"{out}: {s.done} new sample(s) ({s.cache_hits} from cache), {s.retries} retries, "
                   f"{s.errors} with errors, {s.failed} failed; folder total {tot['samples']}/{len(prompts)} "
                   f"samples, ${tot['cost_usd']:.4f}" + ("  [DEMO SET]" if is_demo else ""), err=True)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if status == "fatal":
        fail(f"{message} (nothing lost: {meta['totals']['samples']} samples kept in {out})")
    if status == "max-cost":
        typer.echo(f"biasmed: {message}", err=True)
        raise typer.Exit(EXIT_MAX_COST)
    if status == "incomplete":
        typer.echo(f"biasmed: {message}", err=True)
        raise typer.Exit(EXIT_INCOMPLETE)


def _dry_run(prompts: list[Any], out: Path, m: Any, params: Any, price: Any, cache: Any, spec: str) -> None:
    from biasmed.run.cache import cache_key
    from biasmed.run.pricing import estimate_tokens

    done: set[str] = set()
    if (out / "samples.jsonl").exists():
        with user_errors():
            done = {s["sample_id"] for s in _existing_samples(out) if "sample_id" in s}
    todo = [p for p in prompts if p.sample_id not in done]
    ident, pd = m.cache_identity(), params.as_dict()
    keys = {p.sample_id: cache_key(ident, pd, p.messages(params.role)) for p in todo}
    hits: set[str] = set()
    if cache is not None and getattr(m, "cacheable", True):
        found = cache.get_many(keys.values())
        hits = {sid for sid, k in keys.items() if k in found}
    # identical prompt texts are sent once
    distinct: dict[str, Any] = {}
    for p in todo:
        if p.sample_id not in hits:
            distinct.setdefault(keys[p.sample_id], p)
    n_in = sum(estimate_tokens(p.text) for p in distinct.values())
    per_out = 1 if params.mode == "logprob" else params.max_tokens
    n_out = per_out * len(distinct)
    nq = len({p.item.question.id for p in prompts})
    print(f"model: {spec}  mode: {params.mode}  role: {params.role}")
    print(f"prompts: {len(prompts)} ({nq} questions); already in {out}: {len(prompts) - len(todo)}; "
          f"to run: {len(todo)}")
    print(f"from the cache: {len(hits)}; requests to send: {len(distinct)}")
    print(f"estimated tokens: input {n_in:,}, output at most {n_out:,} ({per_out} per request)")
    if price is None:
        print(f"estimated cost: unknown (no price for {spec}; add one with --prices FILE)")
    else:
        cost = price.cost(n_in, n_out)
        print(f"estimated cost: at most ${cost:.4f} (price '{price.matched}': ${price.input:g} input / "
              f"${price.output:g} output per 1M tokens)")


_HELP = " ".join("""
Put the prompts to a model; write <out>/samples.jsonl and run.json. Run the same command again to
resume: finished samples are skipped and answered prompts come from the response cache.
""".split()) + "\n\n" + " ".join("""
Exit codes: 0 complete; 1 some samples still failed after their retries (run again to retry them);
2 bad input or a fatal API error (401/403, no key, unknown model); 3 --max-cost reached;
130 interrupted. Everything written before a stop stays valid.
""".split())


def register(app: typer.Typer) -> None:
    app.command("run", help=_HELP)(run_cmd)
