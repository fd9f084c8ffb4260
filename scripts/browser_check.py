"""Check the interactive views in a real browser: headless Chromium opens the committed HTML files and
JupyterLab with the executed explore notebook, takes a screenshot of each, and fails if a view is empty or the
page logged a JavaScript error.

    make browser-check                       # = python scripts/browser_check.py
    python scripts/browser_check.py results/quick/10_explore.html --out figures/browser

Needs Chromium (Debian: ``apt-get install chromium``; the script names the fix when it is missing) and the
project's venv (JupyterLab). It is a developer check, not part of ``make test``: a fresh machine has no browser.

What counts as a failure, per page: fewer rendered views than ``calib-view`` containers (a view renders a
``<canvas>`` or an ``<svg>`` with ``marks`` inside its container), a view showing its failure text, or a
console message of level error / an uncaught exception, or a view that marked itself failed
(``data-calib-failed``: no Vega bundle, or vega-embed rejected the spec) (Vega's own WARN lines are listed, not failures).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PAGES = ("results/quick/10_explore.html", "results/standard/10_explore.html",
                 "results/sensitivity/smollm2-135m-wanda50pct-quick.html")
CONSOLE = re.compile(r":(INFO|WARNING|ERROR):CONSOLE[^\]]*\] \"(.*)\", source: (.*)$")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("browser_check: no Chromium here; install it (Debian: apt-get install chromium) and run again")


def browse(url: str, screenshot: Path, *, budget_ms: int, size: str) -> tuple[str, list[str]]:
    """The DOM after `budget_ms` of virtual time and the console lines; a screenshot on the way."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--window-size={size}", f"--virtual-time-budget={budget_ms}", "--enable-logging=stderr", "--v=0"]
    shot = subprocess.run(base + [f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=180)
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=180)
    console = [line for line in (shot.stderr + dom.stderr).splitlines() if ":CONSOLE" in line]
    return dom.stdout, console


def judge(name: str, dom: str, console: list[str], expect_views: int | None = None) -> list[str]:
    """The failures of one page (empty when it passes)."""
    failures = []
    rendered = len(re.findall(r'<canvas|<svg[^>]*class="marks"', dom))
    views = len(re.findall(r'id="calib-view-', dom))
    if expect_views is not None and views < expect_views:
        failures.append(f"{name}: {views} view container(s), expected {expect_views}")
    if views == 0:
        failures.append(f"{name}: no interactive view on the page")
    if rendered < views:
        failures.append(f"{name}: {rendered} of {views} view(s) rendered (a canvas or svg with marks)")
    for reason in re.findall(r'data-calib-failed="([^"]*)"', dom):
        failures.append(f"{name}: a view failed: {reason[:200]}")
    for line in console:
        match = CONSOLE.search(line)
        message = match.group(2) if match else line
        if (match and match.group(1) == "ERROR") or re.search(r"Uncaught|TypeError|ReferenceError|SyntaxError", message):
            failures.append(f"{name}: JavaScript error: {message[:200]}")
    return failures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jupyterlab(notebook: Path, out: Path, budget_ms: int) -> list[str]:
    """Open an executed notebook in JupyterLab (trusted, so its views' scripts run) and judge the page."""
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copy(notebook, tmp / notebook.name)
        subprocess.run([str(bin_dir / "jupyter"), "trust", str(tmp / notebook.name)], check=True,
                       capture_output=True)
        # render every cell (JupyterLab 4 otherwise renders only what is near the viewport)
        settings = tmp / "settings" / "@jupyterlab" / "notebook-extension"
        settings.mkdir(parents=True)
        (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        port = free_port()
        env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
               "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
        server = subprocess.Popen(
            [str(bin_dir / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
             "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
             f"--ServerApp.root_dir={tmp}", "--allow-root"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"))
        try:
            url = f"http://127.0.0.1:{port}/lab/tree/{notebook.name}"
            for _ in range(60):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2)
                    break
                except OSError:
                    time.sleep(1)
            else:
                return [f"JupyterLab did not start: {(tmp / 'server.log').read_text()[-500:]}"]
            shot = out / f"jupyterlab-{notebook.stem}.png"
            dom, console = browse(url, shot, budget_ms=budget_ms, size="1400,2600")
            print(f"  screenshot: {shot}")
            # JupyterLab's own console chatter (extension loading) is not the views'
            console = [c for c in console if "calib-view" in c or "vega" in c.lower() or "Uncaught" in c]
            return judge(f"JupyterLab {notebook.name}", dom, console)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="*", help=f"HTML files (default: those of {DEFAULT_PAGES} that exist)")
    parser.add_argument("--notebook", default="results/quick/10_explore.ipynb",
                        help="executed notebook to open in JupyterLab ('none' to skip)")
    parser.add_argument("--out", default="figures/browser", help="folder of the screenshots")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time each page gets to render")
    args = parser.parse_args(argv)
    out = (REPO / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pages = [Path(p) for p in args.pages] or [REPO / p for p in DEFAULT_PAGES if (REPO / p).is_file()]
    if not pages:
        sys.exit("browser_check: no HTML page to check; run `make run` (or give the pages) first")
    failures = []
    for page in pages:
        page = page.resolve()
        shot = out / f"{page.parent.name}-{page.stem}.png"
        dom, console = browse(page.as_uri(), shot, budget_ms=args.budget_ms, size="1200,2400")
        views = len(re.findall(r'id="calib-view-', dom))
        problems = judge(str(page.relative_to(REPO) if page.is_relative_to(REPO) else page), dom, console)
        warnings = [CONSOLE.search(c).group(2)[:120] for c in console if CONSOLE.search(c) and "WARN" in c]
        print(f"{'FAIL' if problems else 'ok  '} {page.name}: {views} view(s); screenshot {shot}"
              + (f"; {len(warnings)} Vega warning(s), first: {warnings[0]}" if warnings else ""))
        failures += problems
    if args.notebook != "none":
        notebook = (REPO / args.notebook).resolve()
        if notebook.is_file():
            problems = jupyterlab(notebook, out, args.budget_ms + 20000)
            print(f"{'FAIL' if problems else 'ok  '} JupyterLab: {notebook.name}")
            failures += problems
        else:
            failures.append(f"{notebook} does not exist: execute it first (calib study --only 10_explore)")
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{len(pages) + (args.notebook != 'none')} page(s) checked, {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
