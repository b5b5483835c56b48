"""Benchmark: report.html for many samples: build time, file size, time to interactive in headless Chromium.

    .venv/bin/python benchmarks/html_report.py RUN... [--out report.html] [--n-boot 1000] [--loads 3]

For the paper's 8 models: `biasmed import-logs <unpacked logs>/* --medqa MEDQA/US --out /tmp/paper`,
then `benchmarks/html_report.py /tmp/paper/paper-*`. Figures: benchmarks/html_report.md.

Time to interactive = from navigation start to the page's ready mark (data decoded, banners,
leaderboard and the explorer's first cards built: every control answers) and to the first chart
drawn; measured with performance.now() in the page, over fresh tabs of one browser.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("/tmp/biasmed-bench/report.html"))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--convention", default="robust")
    ap.add_argument("--loads", type=int, default=3)
    ap.add_argument("--screenshot", type=Path, help="also write the README's screenshot (docs/report.png) here")
    ap.add_argument("--shot-model", default="gpt-4-0613", help="the model the screenshot's explorer shows")
    ap.add_argument("--chromium", default=os.environ.get("BIASMED_CHROMIUM", "/usr/bin/chromium"))
    a = ap.parse_args()

    from biasmed.analysis.summary import summarize
    from biasmed.report.html import payload_of, write_html

    t0 = time.perf_counter()
    summary = summarize(a.runs, convention=a.convention, n_boot=a.n_boot)
    t_sum = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = write_html(summary, a.out)
    t_html = time.perf_counter() - t0
    html = path.read_text("utf-8")
    data = payload_of(html)
    start = html.index('id="biasmed-data"')
    payload_chars = html.index("</script>", start) - html.index(">", start) - 1
    raw_json = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
    res: dict[str, object] = {
        "samples": len(summary.samples), "models": len(summary.models), "convention": a.convention,
        "n_boot": a.n_boot, "summarize_s": round(t_sum, 2), "write_html_s": round(t_html, 2),
        "file_bytes": path.stat().st_size, "payload_base64_bytes": payload_chars, "payload_json_bytes": raw_json,
        "replies_stored": len(data["samples"]["replies"]), "texts_stored": len(data["samples"]["texts"]),
        "edits_stored": len(data["samples"]["edits"]),
    }

    from playwright.sync_api import sync_playwright

    loads = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, args=ARGS)
        res["browser"] = f"Chromium {browser.version} (headless)"
        for _ in range(a.loads):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
            w0 = time.perf_counter()
            page.goto(path.resolve().as_uri(), timeout=120_000)
            page.wait_for_selector("body[data-state]", state="attached", timeout=120_000)
            state = page.evaluate("window.__biasmed")
            page.wait_for_selector(".bm-chart .main-svg", state="attached", timeout=120_000)
            t_chart = page.evaluate("performance.now()")
            wall = time.perf_counter() - w0
            # one filter change and one search, timed inside the page (the explorer filters synchronously)
            t_filter = page.evaluate("""() => { const s = document.getElementById('f-outcome');
                const t = performance.now(); s.value = '0'; s.dispatchEvent(new Event('change'));
                return performance.now() - t; }""")
            t_search = page.evaluate("""() => { const s = document.getElementById('f-search'); s.value = 'chest pain';
                const t = performance.now(); document.getElementById('bm-filters').requestSubmit();
                return performance.now() - t; }""")
            heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : null")
            loads.append({"script_start_ms": round(state["t_start"]), "decoded_ms": round(state["t_decoded"]),
                          "ready_ms": round(state.get("t_ready", -1)), "first_chart_ms": round(t_chart),
                          "wall_s": round(wall, 2), "filter_ms": round(t_filter), "search_ms": round(t_search),
                          "heap_mb": round(heap / 2**20) if heap else None, "errors": errors[:3]})
            page.close()
        if a.screenshot:
            screenshot(browser, path, a.screenshot, a.shot_model)
        browser.close()
    res["loads"] = loads
    res["ready_ms_median"] = statistics.median(x["ready_ms"] for x in loads)
    res["first_chart_ms_median"] = statistics.median(x["first_chart_ms"] for x in loads)
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(json.dumps(res, indent=1))


def screenshot(browser, page_path: Path, out: Path, model: str) -> None:
    """The top of the page (banners, one model's charts) over one flipped question in the explorer."""
    from PIL import Image

    page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page.goto(page_path.resolve().as_uri(), timeout=120_000)
    page.wait_for_selector("body[data-state=ready]", state="attached", timeout=120_000)
    page.wait_for_selector(".bm-chart[data-kind=drop] .main-svg", state="attached")
    page.wait_for_timeout(500)
    top = page.screenshot(clip={"x": 0, "y": 0, "width": 1280, "height": 900})
    page.select_option("#f-model", label=model)
    page.select_option("#f-bias", label="confirmation")
    page.select_option("#f-mit", label="none")
    page.select_option("#f-outcome", label="flipped to the planted letter")
    page.evaluate("document.getElementById('explorer').scrollIntoView()")
    page.wait_for_timeout(300)
    low = page.screenshot()
    page.close()
    import io

    a, b = Image.open(io.BytesIO(top)), Image.open(io.BytesIO(low))
    sheet = Image.new("RGB", (1280, a.height + b.height + 8), "#24324a")
    sheet.paste(a, (0, 0))
    sheet.paste(b, (0, a.height + 8))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


if __name__ == "__main__":
    main()
