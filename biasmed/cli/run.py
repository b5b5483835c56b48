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

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from biasmed.api import evaluate
from biasmed.cli._common import cli_errors, split_list, stderr_console
from biasmed.errors import BiasmedError
from biasmed.run.evaluate import RunPlan, parse_model_options
from biasmed.run.runner import RunStats


class _ProgressView:
    """A rich progress bar on stderr: done/total, rate, ETA, cache hits, retries, errors, cost."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = stderr_console()
        label = escape(label if len(label) <= 24 else label[:23] + "…")
        bar = [BarColumn(bar_width=24)] if console.width >= 120 else []  # narrow terminal: numbers only
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            *bar,
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f}/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn(
                "cache {task.fields[hits]} retry {task.fields[retries]} err {task.fields[errors]}"
                " fail {task.fields[failed]} ${task.fields[cost]:.4f}"
            ),
            console=console,
            refresh_per_second=8,
            transient=False,
        )
        self.task = self.progress.add_task(
            label, total=total, rate=0.0, hits=0, retries=0, errors=0, failed=0, cost=0.0
        )
        self.progress.start()
        self._last = 0.0

    def update(self, s: Any) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last < 0.05 and s.done < s.total:
            return  # the bar redraws 8 times a second; no need to update it more often
        self._last = now
        self.progress.update(
            self.task,
            completed=s.done,
            rate=s.rate(),
            hits=s.cache_hits,
            retries=s.retries,
            errors=s.errors,
            failed=s.failed,
            cost=s.cost_usd,
        )

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def run_cmd(
    model: Annotated[
        str, typer.Option("--model", help="model spec: see `biasmed models` (e.g. openai:gpt-4o-mini, smollm2)")
    ],
    out: Annotated[
        Optional[Path], typer.Option(help="run folder (default results/<model>); the same command again resumes it")
    ] = None,
    base_url: Annotated[
        Optional[str], typer.Option("--base-url", help="API base URL (openai-compatible servers, proxies)")
    ] = None,
    data: Annotated[
        Optional[Path],
        typer.Option("--data", help="a file written by `biasmed build` (else the benchmark is built on the fly)"),
    ] = None,
    medqa: Annotated[
        Optional[str],
        typer.Option(
            "--medqa",
            help="MedQA JSONL file or folder, 'hub:<id>', or 'demo'. Default: $BIASMED_MEDQA_DIR, else the embedded demo set.",
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="test or dev")] = "test",
    options: Annotated[int, typer.Option("--options", help="5 or 4 answer options")] = 5,
    biases: Annotated[
        Optional[str],
        typer.Option(help="comma list, 'all', or default (the version's biases); 'none' is always included"),
    ] = None,
    template_version: Annotated[
        str, typer.Option("--template-version", help="paper-2024 or paper-2023")
    ] = "paper-2024",
    mitigations: Annotated[
        str,
        typer.Option(
            help="comma list of none,education,one-shot,few-shot (the paper's), reasoning,debias,reflect, or a --mitigation-file's"
        ),
    ] = "none",
    target_mode: Annotated[str, typer.Option("--target-mode", help="incorrect | correct | random")] = "incorrect",
    seed: Annotated[
        int, typer.Option(help="seed of the target and demo draws (and of sampling when --temperature > 0)")
    ] = 0,
    limit: Annotated[Optional[int], typer.Option(help="first N questions, each with every requested condition")] = None,
    draws: Annotated[int, typer.Option(help="re-draw the planted targets K times (variance over draws)")] = 1,
    bias_file: Annotated[
        Optional[list[Path]], typer.Option("--bias-file", help="user-authored bias YAML (repeatable)")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="generate (the model writes a reply) or logprob (letter log-probs)")
    ] = "generate",
    role: Annotated[
        str, typer.Option(help="send the prompt as one system message (the paper) or user message")
    ] = "system",
    max_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--max-tokens",
            help="reply length limit per turn (generate mode); default 16, and 512 for reasoning turns (`Answer: X`)",
        ),
    ] = None,
    mitigation_file: Annotated[
        Optional[list[Path]],
        typer.Option("--mitigation-file", help="user-authored mitigation YAML (repeatable; see docs/mitigations.md)"),
    ] = None,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.0,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="nucleus sampling (not sent unless given)")] = None,
    concurrency: Annotated[int, typer.Option(help="API requests in flight")] = 8,
    rpm: Annotated[Optional[float], typer.Option(help="requests per minute limit")] = None,
    tpm: Annotated[Optional[float], typer.Option(help="tokens per minute limit (estimated input + max output)")] = None,
    timeout: Annotated[float, typer.Option(help="per-request timeout, seconds")] = 120.0,
    max_retries: Annotated[
        int, typer.Option("--max-retries", help="retries per request (429, 5xx, 529, timeouts, resets)")
    ] = 8,
    max_retry_time: Annotated[
        float, typer.Option("--max-retry-time", help="give up on a request after this many seconds of retrying")
    ] = 600.0,
    backoff: Annotated[
        float,
        typer.Option(
            "--backoff", help="first retry delay in seconds (doubles per retry, with jitter; Retry-After wins)"
        ),
    ] = 1.0,
    max_response_chars: Annotated[
        int,
        typer.Option(
            "--max-response-chars",
            help="cut longer replies to this many characters (marked extra.truncated_chars in the sample)",
        ),
    ] = 20_000,
    max_cost: Annotated[
        Optional[float],
        typer.Option("--max-cost", help="stop cleanly before this run folder's spend (USD) would exceed it"),
    ] = None,
    prices: Annotated[
        Optional[Path], typer.Option("--prices", help="price table overriding the built-in one ($BIASMED_PRICES)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print prompt count, estimated tokens and cost; send nothing")
    ] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="neither read nor write the response cache")] = False,
    refresh_cache: Annotated[
        bool, typer.Option("--refresh-cache", help="ask the model again and overwrite cached answers")
    ] = False,
    cache_dir: Annotated[
        Optional[Path],
        typer.Option("--cache-dir", help="response cache folder (default $BIASMED_CACHE_DIR or ~/.cache/biasmed)"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or summary")] = False,
    device: Annotated[Optional[str], typer.Option(help="local models: cpu, cuda, cuda:1, mps")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="local models: bfloat16, float16, float32")] = None,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", help="local models: prompts per forward pass")
    ] = None,
    model_option: Annotated[
        Optional[list[str]],
        typer.Option(
            "--model-option",
            help="provider option KEY=VALUE (repeatable), e.g. chat_template=false, prefix_sharing=false, packed=false, threads=2",
        ),
    ] = None,
) -> None:
    """Put the prompts to a model; write <out>/samples.jsonl and run.json (help text: _HELP)."""
    view: _ProgressView | None = None

    def on_start(n_todo: int) -> None:
        nonlocal view
        view = _ProgressView(n_todo, model, enabled=not quiet and sys.stderr.isatty() and n_todo > 0)

    def on_progress(stats: RunStats) -> None:
        if view is not None:
            view.update(stats)

    with cli_errors():
        try:
            result = evaluate(
                model,
                out=out,
                data=data,
                medqa=medqa,
                split=split,
                options=options,
                biases=split_list(biases),
                mitigations=split_list(mitigations) or [],
                template_version=template_version,
                target_mode=target_mode,
                seed=seed,
                limit=limit,
                draws=draws,
                bias_files=bias_file or (),
                mitigation_files=[str(f) for f in mitigation_file or ()],
                mode=mode,
                role=role,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                concurrency=concurrency,
                rpm=rpm,
                tpm=tpm,
                timeout=timeout,
                max_retries=max_retries,
                max_retry_time=max_retry_time,
                backoff=backoff,
                max_cost=max_cost,
                max_response_chars=max_response_chars,
                prices=str(prices) if prices else None,
                cache=not no_cache,
                refresh_cache=refresh_cache,
                cache_dir=str(cache_dir) if cache_dir else None,
                base_url=base_url,
                device=device,
                dtype=dtype,
                batch_size=batch_size,
                model_options=parse_model_options(model_option or []),
                dry_run=dry_run,
                on_progress=on_progress,
                on_start=on_start,
            )
        except BiasmedError as e:
            if e.result is not None and not quiet:
                _print_totals(e.result)  # what the folder holds now, before the one-line reason
            raise
        finally:
            if view is not None:
                view.stop()
    if result.plan is not None:
        _print_plan(result.plan, result.path)
    elif not quiet:
        _print_totals(result)


def _print_totals(result: Any) -> None:
    s, tot = result.stats, result.totals
    demo = "  [DEMO SET]" if result.meta.get("is_demo") else ""
    typer.echo(
        f"{result.path}: {s.done} new sample(s) ({s.cache_hits} from cache), {s.retries} retries, "
        f"{s.errors} with errors, {s.failed} failed; folder total {tot.get('samples', 0)}/"
        f"{result.meta.get('prompts', 0)} samples, ${tot.get('cost_usd', 0.0):.4f}{demo}",
        err=True,
    )


def _print_plan(plan: RunPlan, out: Path) -> None:
    print(f"model: {plan.spec}  mode: {plan.mode}  role: {plan.role}")
    print(
        f"prompts: {plan.prompts} ({plan.questions} questions); already in {out}: {plan.already_done}; "
        f"to run: {plan.to_run}"
    )
    chains = f" (incl. {plan.chain_turns} follow-up turns of chains)" if plan.chain_turns else ""
    print(f"from the cache: {plan.cache_hits}; requests to send: {plan.requests}{chains}")
    per = (
        f"{plan.per_request_out} per request"
        if plan.per_request_out_max <= plan.per_request_out
        else f"{plan.per_request_out} per request, {plan.per_request_out_max} for turns read as `Answer: X`"
    )
    print(f"estimated tokens: input {plan.input_tokens:,}, output at most {plan.output_tokens_max:,} ({per})")
    if plan.price is None or plan.cost_max is None:
        print(f"estimated cost: unknown (no price for {plan.spec}; add one with --prices FILE)")
    else:
        print(
            f"estimated cost: at most ${plan.cost_max:.4f} (price '{plan.price.matched}': ${plan.price.input:g} "
            f"input / ${plan.price.output:g} output per 1M tokens)"
        )


_HELP = (
    " ".join(
        """
Put the prompts to a model; write <out>/samples.jsonl and run.json. Run the same command again to
resume: finished samples are skipped and answered prompts come from the response cache.
""".split()
    )
    + "\n\n"
    + " ".join(
        """
Exit codes: 0 complete; 1 some samples still failed after their retries (run again to retry them);
2 bad input or a fatal API error (401/403, no key, unknown model); 3 --max-cost reached;
130 interrupted. Everything written before a stop stays valid.
""".split()
    )
)


def register(app: typer.Typer) -> None:
    app.command("run", help=_HELP)(run_cmd)
