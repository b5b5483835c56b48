"""report.html: the data it carries, and the page itself in a real (headless) Chromium.

The run folders are written with biasmed's own builder, sample record and results writer on the
demo set (tests/_html_fixture.py). The browser tests drive Debian's Chromium through Playwright;
without either they skip with the reason, unless BIASMED_REQUIRE_BROWSER=1 (CI), where they fail.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _html_fixture import (  # tests/ is on sys.path
    BIASES,
    CHAIN_SPEC,
    FIRST_REPLY,
    HOSTILE_MODEL,
    HOSTILE_REPLY,
    SECOND_REPLY,
    write_chain_run,
    write_run,
)

from biasmed.analysis.summary import summarize
from biasmed.dataset.biases import load_templates
from biasmed.records import NONE
from biasmed.report.html import CSP, OUTCOMES, payload_of, render_html, text_edit, write_html
from biasmed.results import read_samples

MODEL = "demo/model-a"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("html_runs")
    return [write_run(base / "a", MODEL), write_run(base / "b", HOSTILE_MODEL)]


@pytest.fixture(scope="module")
def summary(runs: list[Path]) -> Any:
    return summarize(runs, n_boot=100)


@pytest.fixture(scope="module")
def page_path(summary: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_html(summary, tmp_path_factory.mktemp("html") / "report.html")


@pytest.fixture(scope="module")
def data(page_path: Path) -> dict[str, Any]:
    return payload_of(page_path.read_text("utf-8"))


def _chromium() -> str | None:
    env = os.environ.get("BIASMED_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _no_browser(reason: str) -> None:
    if os.environ.get("BIASMED_REQUIRE_BROWSER") == "1":
        pytest.fail(f"BIASMED_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed (pip install -e '.[test]')")
    exe = _chromium()
    if exe is None:
        _no_browser("no Chromium found (apt-get install -y chromium, or set BIASMED_CHROMIUM)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Loaded:
    """A page opened from file://, with every console message, page error and request it made."""

    def __init__(self, browser: Any, path: Path, viewport: dict[str, int] | None = None):
        self.url = path.resolve().as_uri()
        self.page = browser.new_page(viewport=viewport or {"width": 1300, "height": 900})
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.failed: dict[str, str | None] = {}
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.__setitem__(r.url, r.failure))
        self.page.goto(self.url)
        # selectors, not wait_for_function: the page's policy forbids the eval that one polls with
        self.page.wait_for_selector("body[data-state]", state="attached", timeout=30_000)

    def cards(self) -> list[dict[str, str]]:
        return self.page.eval_on_selector_all(
            ".bm-card", "cs => cs.map(c => ({qid: c.dataset.qid, model: c.dataset.model}))")

    def count(self) -> tuple[int, int]:
        d = self.page.eval_on_selector("#bm-count", "e => [+e.dataset.cards, +e.dataset.samples]")
        return d[0], d[1]

    def search(self, text: str, cards: int) -> None:
        """Type a search and wait until the explorer applied it (it waits for typing to pause)."""
        self.page.fill("#f-search", text)
        q = text.strip().lower().replace("'", "\\'")
        self.page.wait_for_selector(f"#bm-count[data-query='{q}'][data-cards='{cards}']", state="attached")

    def select(self, sel: str, label: str) -> None:
        self.page.select_option(sel, label=label)

    def close(self) -> None:
        self.page.close()


@pytest.fixture(scope="module")
def loaded(browser: Any, page_path: Path) -> Iterator[Loaded]:
    page = Loaded(browser, page_path)
    yield page
    page.close()


@pytest.fixture()
def fresh(loaded: Loaded) -> Loaded:
    """The module's page with the explorer's filters back at 'all'."""
    p = loaded.page
    for sel in ("#f-model", "#f-bias", "#f-mit", "#f-outcome"):
        p.select_option(sel, value="")
    p.fill("#f-search", "")
    p.evaluate("document.getElementById('bm-filters').requestSubmit()")
    return loaded


# --------------------------------------------------------------------------- the data (no browser)

@pytest.mark.parametrize("twin,text", [
    ("A man comes. He has it?", "A man comes. You are sure it is X. He has it?"),
    ("A man comes. He has it?", "A man comes. Here is X. He has it?"),  # starts like the next sentence
    ("Ends with disease?", "Ends with disease? The patient says B: disease."),  # ends like the twin
    ("a b c", "a x c"),
    ("same", "same"),
    ("", "all new"),
])
def test_text_edit_rebuilds_the_text_in_whole_words(twin: str, text: str) -> None:
    a, b, ins = text_edit(twin, text)
    assert twin[:a] + ins + twin[b:] == text
    assert a == 0 or twin[a - 1].isspace() or a == len(twin) or twin[a].isspace()


def test_text_edit_finds_the_planted_sentence() -> None:
    a, b, ins = text_edit("A man comes. He has it?", "A man comes. Here is X. He has it?")
    assert (ins.strip(), a, b) == ("Here is X.", 13, 13)


def test_texts_stored_once_and_edits_are_the_bias_sentences(data: dict[str, Any], runs: list[Path]) -> None:
    s = data["samples"]
    recs = [r for run in runs for r in read_samples(run)]
    # one twin text per question (both models saw the same questions), each stored once
    assert len(s["texts"]) == len({r["question_id"] for r in recs}) == len(set(s["texts"]))
    # every biased sample's text is its twin plus exactly the rendered bias sentence
    templates = load_templates()
    by_id = {(r["model"], r["sample_id"]): r for r in recs}
    cols, n = s["cols"], len(s["cols"]["m"])
    assert n == len(recs)
    checked = 0
    for i in range(n):
        cond = s["conds"][cols["c"][i]]
        if cond["bias"] == NONE:
            assert cols["e"][i] == -1
            continue
        ti, a, b, ins = s["edits"][cols["e"][i]]
        assert ti == cols["t"][i] and a == b
        q = s["questions"]["id"][cols["q"][i]]
        opts = dict(s["questions"]["opts"][cols["q"][i]])
        target = chr(65 + cols["tgt"][i])
        want = templates.bias(cond["bias"]).text.replace("{X}", f"{target}: {opts[target]}")
        assert ins.strip() == want
        rec = by_id[(s["models"][cols["m"][i]], f"{q}|{cond['bias']}|{s['mits'][cols['g'][i]]}")]
        assert s["texts"][ti][:a] + ins + s["texts"][ti][b:] == rec["text"]
        checked += 1
    assert checked == sum(r["bias"] != NONE for r in recs)


def test_outcomes_follow_the_scripted_replies(data: dict[str, Any]) -> None:
    s, cols = data["samples"], data["samples"]["cols"]
    got: dict[tuple[str, str, str], str] = {}
    for i in range(len(cols["m"])):
        if s["models"][cols["m"][i]] != MODEL:
            continue
        key = (s["questions"]["id"][cols["q"][i]], s["conds"][cols["c"][i]]["bias"], s["mits"][cols["g"][i]])
        got[key] = OUTCOMES[cols["out"][i]]
    assert got[("test-0000", "recency", "none")] == "flipped"
    assert got[("test-0000", "recency", "education")] == "stayed_right"
    assert got[("test-0002", "recency", "none")] == "no_response"
    assert got[("test-0003", "confirmation", "none")] == "wrong_either_way"
    assert got[("test-0004", "self_diagnosis", "education")] == "stayed_right"


def test_page_is_self_contained_and_run_strings_are_only_data(page_path: Path) -> None:
    html = page_path.read_text("utf-8")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in html
    assert "default-src 'none'" in CSP and "unsafe-eval" not in CSP
    # the hostile reply and model name are inside the compressed data, never in the markup
    for hostile in ("window.__pwned", "<img src=x", "evil<"):
        assert hostile not in html
    assert "<script src" not in html and "<link" not in html


def test_runs_without_texts_show_what_is_there(tmp_path: Path) -> None:
    """A biasmed 0.1.0 run folder has no choices/options/text: the page still has its samples."""
    import json

    run = write_run(tmp_path / "old", MODEL, n_questions=2)
    lines = []
    for rec in read_samples(run):
        for k in ("choices", "options", "text", "error_kind"):
            rec.pop(k, None)
        rec["schema"] = 1
        lines.append(json.dumps(rec))
    (run / "samples.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    d = payload_of(render_html(summarize([run], n_boot=0)))
    s = d["samples"]
    assert len(s["cols"]["m"]) == len(lines)
    assert s["texts"] == [] and set(s["cols"]["t"]) == {-1}
    assert s["questions"]["opts"] == [None, None] and s["questions"]["gold"] == ["B", "D"]


# --------------------------------------------------------------------------- in the browser

def test_loads_offline_without_errors_or_requests(loaded: Loaded) -> None:
    state = loaded.page.evaluate("window.__biasmed")
    assert state["ready"] is True, state
    assert state["samples"] == 2 * 6 * len(BIASES) * 2
    assert loaded.errors == []
    assert [m for m in loaded.console if m[0] in ("error", "warning")] == []
    assert loaded.requests == [loaded.url]
    # the demo and convention banners, as in report.md
    banners = loaded.page.inner_text("#bm-banners")
    assert "DEMO SET" in banners and "Convention: robust" in banners
    # every chart that scrolled into view was drawn by plotly (a real SVG plot)
    loaded.page.evaluate("document.getElementById('leaderboard').scrollIntoView()")
    loaded.page.evaluate("window.scrollTo(0, 0)")
    loaded.page.wait_for_selector(".bm-chart .main-svg", state="attached")
    # the placebo runs bring the controls chart and the model-level controls table
    assert loaded.page.locator(f".bm-model[data-model='{MODEL}'] .bm-chart[data-kind=controls]").count() == 1


def test_content_security_policy_blocks_the_network(browser: Any, page_path: Path) -> None:
    page = Loaded(browser, page_path)
    try:
        result = page.page.evaluate("""async () => {
            const seen = [];
            document.addEventListener('securitypolicyviolation', e => seen.push(e.violatedDirective));
            let fetched;
            try { await fetch('http://127.0.0.1:9/x'); fetched = 'fetched'; } catch (e) { fetched = 'blocked'; }
            const img = document.createElement('img');
            img.src = 'http://127.0.0.1:9/pixel.png';
            document.body.appendChild(img);
            await new Promise(r => setTimeout(r, 200));
            return {fetched, seen};
        }""")
        assert result["fetched"] == "blocked"
        assert "connect-src" in result["seen"] and "img-src" in result["seen"]
        # Chromium names the attempt, and stops it at the policy
        tried = [u for u in page.requests if not u.startswith("file:")]
        assert tried == ["http://127.0.0.1:9/pixel.png"]
        assert page.failed == {tried[0]: "csp"}
    finally:
        page.close()


def test_filters_change_what_the_explorer_shows(fresh: Loaded) -> None:
    all_cards, all_samples = fresh.count()
    assert (all_cards, all_samples) == (12, 120)
    fresh.select("#f-model", MODEL)
    assert fresh.count() == (6, 60)
    assert {c["model"] for c in fresh.cards()} == {MODEL}
    fresh.select("#f-outcome", "flipped to the planted letter")
    # question 0 flips under its three biases without mitigation
    assert fresh.count() == (1, 3)
    assert fresh.cards() == [{"qid": "test-0000", "model": MODEL}]
    cells = fresh.page.eval_on_selector_all(".bm-card td.match", "ts => ts.map(t => t.dataset.outcome)")
    assert cells == ["flipped"] * 3
    fresh.select("#f-mit", "education")
    assert fresh.count() == (0, 0) and fresh.cards() == []
    fresh.select("#f-mit", "all mitigations")
    fresh.select("#f-outcome", "no response")
    assert [c["qid"] for c in fresh.cards()] == ["test-0002"]
    fresh.select("#f-outcome", "any outcome")
    fresh.select("#f-bias", "confirmation")
    assert fresh.count() == (6, 12)


def test_search_by_question_id_and_text(fresh: Loaded) -> None:
    fresh.search("TEST-0003", 2)
    assert {c["qid"] for c in fresh.cards()} == {"test-0003"}
    # a phrase of question 1's text (pericarditis vignette), any case
    fresh.search("LEANS FORWARD", 2)
    assert {c["qid"] for c in fresh.cards()} == {"test-0001"}
    fresh.search("no such words anywhere", 0)


def test_highlight_is_the_bias_sentence(fresh: Loaded, data: dict[str, Any]) -> None:
    templates = load_templates()
    fresh.select("#f-model", MODEL)
    fresh.search("test-0000", 1)
    card = fresh.page.locator(".bm-card").first
    s = data["samples"]
    opts = dict(s["questions"]["opts"][s["questions"]["id"].index("test-0000")])
    for bias in BIASES[1:]:
        card.locator(f"tr[data-cond='{bias}'] th.cond").click()
        marks = card.locator("mark.bm-inserted").all_inner_texts()
        planted = card.locator(".bm-tag.planted").evaluate("t => t.parentElement.dataset.letter")
        want = templates.bias(bias).text.replace("{X}", f"{planted}: {opts[planted]}")
        assert marks == [want]
        # the rest of the paragraph is the unbiased twin, word for word
        shown = card.locator(".bm-qtext").inner_text()
        twin = s["texts"][0]
        assert " ".join(shown.replace(want, "").split()) == " ".join(twin.split())
    card.locator("tr[data-cond='none'] th.cond").click()
    assert card.locator("mark.bm-inserted").count() == 0
    assert card.locator(".bm-tag.correct").evaluate("t => t.parentElement.dataset.letter") == "B"


def test_hostile_reply_and_model_name_render_as_text(fresh: Loaded) -> None:
    fresh.select("#f-bias", "self_diagnosis")
    fresh.search("test-0001", 2)
    replies = fresh.page.locator(".bm-card tr[data-cond='self_diagnosis'] .bm-reply").all_text_contents()
    assert replies and all(r == HOSTILE_REPLY for r in replies)
    assert fresh.page.evaluate("window.__pwned") is None
    assert fresh.page.evaluate("document.querySelectorAll('img, .bm-reply *').length") == 0
    assert HOSTILE_MODEL in [c["model"] for c in fresh.cards()]
    head = fresh.page.locator(f".bm-model[data-model='{HOSTILE_MODEL}'] h3")
    assert head.text_content() == HOSTILE_MODEL
    assert HOSTILE_MODEL in fresh.page.locator("#f-model option").all_text_contents()
    assert fresh.errors == []


def test_leaderboard_sorts_by_a_clicked_column(loaded: Loaded) -> None:
    p = loaded.page

    def column(name: str) -> list[str]:
        idx = p.eval_on_selector_all("#bm-lb th", f"ths => ths.findIndex(t => t.dataset.col === '{name}')")
        return p.eval_on_selector_all(f"#bm-lb tbody tr td:nth-child({idx + 1})", "tds => tds.map(t => t.textContent)")

    assert column("rank") == ["1", "2", "3", "4"]
    header = p.locator("#bm-lb th[data-col='model']")
    header.click()
    models = column("model")
    assert models == sorted(models, key=str.lower) or models == sorted(models)
    header.click()
    assert column("model") == models[::-1]
    assert "Convention: robust" in p.inner_text("#leaderboard .bm-conv")


def test_toggles_hide_models_and_mitigations(loaded: Loaded) -> None:
    p = loaded.page
    sel = f".bm-model[data-model='{MODEL}']"
    p.evaluate(f"document.querySelector(\"{sel}\").scrollIntoView()")
    p.wait_for_selector(f"{sel} .bm-chart[data-kind=accuracy] .main-svg", state="attached")
    n_traces = "document.querySelector(\"" + sel + " .bm-chart[data-kind=accuracy]\").data.length"
    assert p.evaluate(n_traces) == 2  # none, education
    p.locator("#bm-mit-toggles label", has_text="education").locator("input").uncheck()
    assert p.evaluate(n_traces) == 1
    p.locator("#bm-mit-toggles label", has_text="education").locator("input").check()
    assert p.evaluate(n_traces) == 2
    p.locator("#bm-model-toggles label", has_text=MODEL).locator("input").uncheck()
    assert p.locator(sel).is_hidden()
    p.locator("#bm-model-toggles label", has_text=MODEL).locator("input").check()
    assert p.locator(sel).is_visible()


def test_screenshot_is_written_and_not_blank(browser: Any, page_path: Path, tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    page = Loaded(browser, page_path, {"width": 1280, "height": 1000})
    try:
        page.page.wait_for_selector(".bm-chart[data-kind=drop] .main-svg", state="attached")
        out = tmp_path / "report.png"
        page.page.screenshot(path=str(out))
    finally:
        page.close()
    img = Image.open(io.BytesIO(out.read_bytes())).convert("RGB")
    assert img.size == (1280, 1000)
    stat = ImageStat.Stat(img.convert("L"))
    assert stat.stddev[0] > 20  # a blank or single-colour page is ~0
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 50


def test_report_command_writes_the_page(runs: list[Path], tmp_path: Path, run_cli: Any) -> None:
    res = run_cli("report", *runs, "--out", tmp_path / "rep", "--n-boot", "0", "--no-plots")
    assert res.exit_code == 0, res.stderr
    d = payload_of((tmp_path / "rep" / "report.html").read_text("utf-8"))
    assert d["meta"]["is_demo"] is True and d["samples"]["models"] == sorted([MODEL, HOSTILE_MODEL])
    res = run_cli("report", runs[0], "--out", tmp_path / "nohtml", "--n-boot", "0", "--no-plots", "--no-html")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "nohtml" / "report.md").is_file() and not (tmp_path / "nohtml" / "report.html").exists()


# --------------------------------------------------------------------------- issue 13: mitigation cost, chains

@pytest.fixture(scope="module")
def chain_summary(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """none, reasoning, debias and reflect run through biasmed.evaluate with a function model."""
    return summarize(write_chain_run(tmp_path_factory.mktemp("chain_run") / "run"), n_boot=0)


@pytest.fixture(scope="module")
def chain_loaded(browser: Any, chain_summary: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    page = Loaded(browser, write_html(chain_summary, tmp_path_factory.mktemp("chain_html") / "report.html"))
    assert page.page.evaluate("window.__biasmed.ready") is True
    yield page
    page.close()


def _nan_to_none(v: Any) -> Any:
    return None if v is None or v != v else float(v)


def _chart(p: Any, kind: str) -> list[dict[str, Any]]:
    sel = f".bm-model[data-model='{CHAIN_SPEC}'] .bm-chart[data-kind={kind}]"
    p.evaluate(f"document.querySelector(\"{sel}\").scrollIntoView()")
    p.wait_for_selector(f"{sel} .main-svg", state="attached")
    return p.eval_on_selector(sel, "d => d.data.map(t => ({name: t.name, x: t.x, y: t.y, cd: t.customdata}))")


def test_chain_samples_carry_both_answers_in_the_data(chain_summary: Any) -> None:
    d = payload_of(render_html(chain_summary))
    s, cols = d["samples"], d["samples"]["cols"]
    assert d["meta"]["changes"] == ["kept", "toward", "away", "other"]
    reflect = s["mits"].index("reflect")
    chains = [i for i in range(len(cols["m"])) if cols["g"][i] == reflect]
    assert chains and all(cols["fl"][i] == 2 and cols["let"][i] == 0 for i in chains)  # C first, A final
    assert all(s["replies"][cols["r1"][i]] == FIRST_REPLY for i in chains)
    assert all(cols["fl"][i] == -2 and cols["r1"][i] == -1 for i in range(len(cols["m"])) if i not in chains)


def test_mitigation_cost_table_shows_the_leaderboard_figures(chain_loaded: Loaded, chain_summary: Any) -> None:
    p = chain_loaded.page
    got = p.eval_on_selector_all(
        f".bm-model[data-model='{CHAIN_SPEC}'] .bm-cost-table tbody tr",
        "trs => trs.map(tr => [tr.dataset.mit, Object.fromEntries(Array.from(tr.querySelectorAll('td[data-col]'), "
        "td => [td.dataset.col, [td.dataset.v === '' ? null : +td.dataset.v, td.textContent]]))])")
    assert [m for m, _ in got] == ["none", "reasoning", "debias", "reflect"]
    lb = chain_summary.leaderboard.set_index("mitigation")
    for mit, cells in got:
        row = lb.loc[mit]
        for col in ("tokens_per_answer", "cost_per_answer", "mean_recovered_per_1k_tokens", "changed_rate",
                    "toward_rate", "away_rate"):
            assert cells[col][0] == pytest.approx(_nan_to_none(row[col])), (mit, col)
        gain = None if mit == "none" else row["mean_biased_acc"] - lb.loc["none", "mean_biased_acc"]
        assert cells["acc_gain"][0] == pytest.approx(gain), mit
    reflect = dict(got)["reflect"]
    assert reflect["tokens_per_answer"][1] == f"{lb.loc['reflect', 'tokens_per_answer']:.1f}"
    assert reflect["cost_per_answer"][1] == "$" + f"{lb.loc['reflect', 'cost_per_answer']:.3g}"
    assert reflect["toward_rate"][1] == "37.5%" and reflect["away_rate"][1] == "12.5%"  # 3 and 1 of 8
    assert dict(got)["reasoning"]["changed_rate"][1] == "\u2013"  # not a chain


def test_cost_and_chain_charts_show_the_summary_rows(chain_loaded: Loaded, chain_summary: Any) -> None:
    main = chain_summary.main
    cost = _chart(chain_loaded.page, "cost")
    assert [t["name"] for t in cost] == ["reasoning", "debias", "reflect"]
    for t in cost:
        rows = main[main["mitigation"] == t["name"]]
        assert t["x"] == rows["bias"].tolist()
        assert t["y"] == pytest.approx(rows["acc_gain"].tolist())
        assert [c[0] for c in t["cd"]] == rows["n"].tolist()  # hover: n
        assert [c[1] for c in t["cd"]] == [f"{v:.1f}" for v in rows["tokens_per_answer"]]
        want = ["\u2013" if v != v else f"{v:.3f}" for v in rows["recovered_per_1k_tokens"]]
        assert [c[4] for c in t["cd"]] == want
    chain = _chart(chain_loaded.page, "chain")
    rows = main[(main["mitigation"] == "reflect") & (main["bias"] != NONE)]
    assert [t["name"] for t in chain] == ["reflect: toward the planted letter", "reflect: away from it"]
    for t, kind in zip(chain, ("toward", "away"), strict=True):
        assert t["x"] == rows["bias"].tolist()
        assert t["y"] == pytest.approx(rows[f"{kind}_rate"].tolist())
        assert [c[0] for c in t["cd"]] == rows[kind].tolist() and [c[1] for c in t["cd"]] == rows["n_chain"].tolist()
    assert rows["toward"].sum() == 3 and rows["away"].sum() == 1  # the figures are not all zero


def test_reflect_card_shows_both_answers_as_text(chain_loaded: Loaded, chain_summary: Any) -> None:
    fresh = chain_loaded
    fresh.select("#f-mit", "reflect")
    fresh.search("test-0001", 1)
    cells = fresh.page.eval_on_selector_all(
        ".bm-card td[data-first]", "ts => ts.map(t => [t.parentElement.dataset.cond, t.dataset.first, t.dataset.final, "
        "t.dataset.change || '', t.querySelector('.bm-reply-first').textContent, "
        "t.querySelector('.bm-reply:not(.bm-reply-first)').textContent, t.querySelector('.bm-chain').textContent])")
    sm = chain_summary.samples
    want = sm[(sm["question_id"] == "test-0001") & (sm["mitigation"] == "reflect")].set_index("bias")
    assert sorted(c[0] for c in cells) == sorted(want.index)
    for cond, first, final, change, r1, r2, line in cells:
        assert (first, final) == (want.loc[cond, "s_first_letter"], want.loc[cond, "s_letter"]) == ("C", "A")
        assert change == want.loc[cond, "s_change"]
        assert (r1, r2) == (FIRST_REPLY, SECOND_REPLY)
        assert line.startswith("first answer C \u2192 final A")
    assert {c[3] for c in cells} == {"other", "toward", "away"}
    # the markup in the first reply stayed text
    assert fresh.page.evaluate("window.__pwned") is None
    assert fresh.page.evaluate("document.querySelectorAll('.bm-reply *, #bm-cards img').length") == 0
    # a card without the filter shows reflect beside the single-answer mitigations (no chain line there)
    fresh.select("#f-mit", "all mitigations")
    fresh.search("test-0001", 1)
    assert fresh.page.locator(".bm-card td[data-first]").count() == 3
    assert fresh.page.locator(".bm-card .bm-chain").count() == 3
    assert chain_loaded.errors == []


def test_leaderboard_has_the_mitigation_columns_and_sorts_them(chain_loaded: Loaded, chain_summary: Any) -> None:
    p = chain_loaded.page
    heads = p.eval_on_selector_all("#bm-lb th", "ths => ths.map(t => t.dataset.col)")
    assert heads == list(chain_summary.leaderboard.columns)
    for col in ("mean_recovery_same_mit", "tokens_per_answer", "cost_per_answer", "mean_recovered_per_1k_tokens",
                "changed_rate", "toward_rate", "away_rate"):
        assert col in heads

    def column(name: str) -> list[str]:
        idx = heads.index(name)
        return p.eval_on_selector_all(f"#bm-lb tbody tr td:nth-child({idx + 1})", "tds => tds.map(t => t.textContent)")

    p.locator("#bm-lb th[data-col='tokens_per_answer']").click()
    assert [float(v) for v in column("tokens_per_answer")] == [44.0, 76.0, 76.0, 153.0]
    assert column("mitigation")[0] == "reasoning" and column("mitigation")[-1] == "reflect"
    p.locator("#bm-lb th[data-col='tokens_per_answer']").click()
    assert column("mitigation")[0] == "reflect"
    assert column("cost_per_answer")[0] == "$" + f"{chain_summary.leaderboard.set_index('mitigation').loc['reflect', 'cost_per_answer']:.3g}"
