"""Every notebook runs in JupyterLab in a real (headless) Chromium, and its widgets respond.

One JupyterLab server and one browser serve the whole session; each notebook gets a fresh page and
its own kernel. The server works on a temporary copy of `notebooks/` with temporary settings,
workspaces and runtime folders (autosave off), so nothing the browser does can touch the repository.

For each notebook the test clears the outputs, runs all cells through JupyterLab's own
"Run All Cells" command and fails on any error output, on a cell left unrun, or when the run takes
longer than `RUN_TIMEOUT_S`, and on tracebacks, widgets that fail to render or blank plot images.
Then it works the widgets listed for that notebook in `tests/browser_actions.py` and checks that the
output changed as expected and shows none of those faults.
A screenshot of each notebook's final state goes to `screenshots/` (printed at the end of the run).

Run it alone with `pytest -m browser`, skip it with `pytest -m "not browser"`. On a slow machine,
`MPQLAB_RUN_TIMEOUT=600` gives each notebook's Run All more than the default 300 s.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install -e '.[test]'")
PlaywrightTimeout = playwright_api.TimeoutError

from browser_actions import ACTIONS, Button, Checkbox, Dropdown, Slider, ToggleButtons

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SCREENSHOTS = REPO / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Two shared cores: everything is slow, so waits are generous, but every one of them is bounded.
RUN_TIMEOUT_S = int(os.environ.get("MPQLAB_RUN_TIMEOUT", 300))  # run all cells of one notebook
START_TIMEOUT_S = 180  # server up; page loaded and kernel idle
ACTION_TIMEOUT_S = 120  # one widget action until its output has changed and settled
VIEWPORT = {"width": 1400, "height": 900}
MAX_SHOT_HEIGHT = 12000  # px; a longer notebook is photographed in several parts

# Settings that keep the browser quiet and away from the files: no autosave, no news or update checks
# (no network), every cell attached to the page so widgets deep down can be found and photographed.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none", "scrollPastEnd": False},
}

# Widgets a student can work; a notebook showing any of them needs an entry in ACTIONS.
CONTROLS = (".widget-slider, .widget-checkbox, .widget-dropdown, .widget-toggle-buttons, "
            ".widget-toggle-button, .widget-button, .widget-radio, .widget-select")
SELECTOR = {Slider: ".widget-slider", Checkbox: ".widget-checkbox", Dropdown: ".widget-dropdown",
            ToggleButtons: ".widget-toggle-buttons", Button: "button.widget-button"}
LABEL = {Slider: "label.widget-label", Checkbox: ".widget-label-basic span", Dropdown: "label.widget-label",
         ToggleButtons: "label.widget-label"}

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

pytestmark = pytest.mark.browser

# --- JavaScript run inside the page; `window.jupyterapp` exists because of --expose-app-in-browser ---

# True once the notebook `path` is open, its kernel idle; remembers the panel as window.__nb.
JS_READY = """(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return false;
  const panel = Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path === path);
  const kernel = panel && panel.context.isReady && panel.sessionContext.session
                 && panel.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  window.__nb = panel;
  return true;
}"""

# Clear outputs (so a cell left unrun has no execution count), then Run All; do not wait for it here.
JS_RUN_ALL = """async () => {
  const app = window.jupyterapp;
  app.shell.collapseLeft();
  app.shell.collapseRight();
  app.shell.activateById(window.__nb.id);
  await app.commands.execute('notebook:clear-all-cell-outputs');
  window.__run = null;
  app.commands.execute('notebook:run-all-cells').then(
    ok => { window.__run = {ok: ok}; }, err => { window.__run = {error: String(err)}; });
}"""

# Widget callbacks run in a kernel subshell, whose busy/idle JupyterLab's kernel status does not show,
# so follow the kernel's messages: which requests are running (busy seen, idle not yet), which were
# sent without any status back yet, and when the last message went by.
JS_TRACK_TRAFFIC = """() => {
  const traffic = window.__traffic = {running: new Set(), sent: new Map(), last: performance.now()};
  window.__nb.sessionContext.session.kernel.anyMessage.connect((_, args) => {
    const msg = args.msg;
    traffic.last = performance.now();
    if (args.direction === 'send') {
      if (msg.channel === 'shell') traffic.sent.set(msg.header.msg_id, traffic.last);
      return;
    }
    if (msg.header.msg_type !== 'status' || !msg.parent_header) return;
    const parent = msg.parent_header.msg_id, state = msg.content.execution_state;
    traffic.sent.delete(parent);
    if (state === 'busy') traffic.running.add(parent);
    if (state === 'idle') traffic.running.delete(parent);
  });
}"""

# True when nothing runs: kernel idle, no request running or waiting for its first status (a request
# that never gets one is forgotten after 5 s), and no message for a second.
JS_QUIET = """() => {
  const kernel = window.__nb.sessionContext.session && window.__nb.sessionContext.session.kernel;
  const traffic = window.__traffic, now = performance.now();
  for (const [id, at] of traffic.sent) if (now - at > 5000) traffic.sent.delete(id);
  return !!kernel && kernel.status === 'idle' && traffic.running.size === 0 && traffic.sent.size === 0
         && now - traffic.last > 1000;
}"""

# What a scope (JS_SCOPE; null: the whole notebook) shows: a fingerprint of every rendered output except widget
# views themselves (a slider's own read-out is not output), the text of text outputs, tracebacks.
JS_SNAPSHOT = """(root) => {
  root = root || window.__nb.node;
  const hash = s => { let h = 5381; for (let i = 0; i < s.length; i++) h = (h * 33 + s.charCodeAt(i)) | 0; return h; };
  const parts = [], text = [], tracebacks = [], blank = [];
  for (const node of root.querySelectorAll('.jp-OutputArea-output[data-mime-type]')) {
    const mime = node.getAttribute('data-mime-type');
    if (mime === 'application/vnd.jupyter.widget-view+json') continue;
    const images = Array.from(node.querySelectorAll('img')).map(img => hash(img.src)).join(',');
    const svg = Array.from(node.querySelectorAll('svg')).map(el => hash(el.outerHTML)).join(',');
    const t = node.innerText;
    parts.push(mime + ':' + hash(t) + ':' + images + ':' + svg);
    if (!mime.startsWith('image/')) text.push(t);
    if (mime === 'application/vnd.jupyter.stderr' && t.includes('Traceback')) tracebacks.push(t);
  }
  // A plot that is one flat colour (a figure drawn empty) counts as broken output.
  for (const img of root.querySelectorAll('.jp-OutputArea-output img')) {
    if (!img.complete || !img.naturalWidth) continue;
    const canvas = document.createElement('canvas');
    canvas.width = Math.min(img.naturalWidth, 400);
    canvas.height = Math.min(img.naturalHeight, 400);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    const px = new Uint32Array(ctx.getImageData(0, 0, canvas.width, canvas.height).data.buffer);
    if (px.every(v => v === px[0])) blank.push(img.naturalWidth + 'x' + img.naturalHeight);
  }
  const all = root.innerText;
  const broken = all.match(/(Error (displaying|creating|rendering) widget|Failed to load model class)[^\\n]*/g) || [];
  return {key: parts.join('|'), text: text.join('\\n'), tracebacks: tracebacks, broken: broken, blank: blank};
}"""

# Where a control's effect shows: the output item holding the control's widget (a panel: controls and
# their Output together), or the whole cell if that item shows no output of its own (controls and
# Output displayed separately). Not the whole cell first: it may print other lines that match too.
JS_SCOPE = """(control) => {
  const item = control.closest('.jp-OutputArea-child');
  const shows = item && Array.from(item.querySelectorAll('.jp-OutputArea-output[data-mime-type]'))
    .some(node => node.getAttribute('data-mime-type') !== 'application/vnd.jupyter.widget-view+json');
  return shows ? item : control.closest('.jp-Cell');
}"""

# Height of the whole notebook, and of its visible part, for the screenshots.
JS_HEIGHTS = """() => {
  const outer = window.__nb.node.querySelector('.jp-WindowedPanel-outer') || window.__nb.content.node;
  return {scroll: outer.scrollHeight, client: outer.clientHeight};
}"""

JS_SCROLL_TO = """(top) => {
  const outer = window.__nb.node.querySelector('.jp-WindowedPanel-outer') || window.__nb.content.node;
  outer.scrollTop = top;
}"""

JS_SHUTDOWN_KERNEL = """async () => {
  if (!window.__nb) return;
  await Promise.race([window.__nb.sessionContext.shutdown(), new Promise(r => setTimeout(r, 20000))]);
}"""


# --- fixtures: one server, one browser ---

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM (the server then shuts its kernels down), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def notebook_dir() -> Path:
    """The folder whose notebooks the server serves (a copy of it, see `lab`)."""
    return REPO / "notebooks"


@pytest.fixture(scope="session")
def lab(notebook_dir, tmp_path_factory):
    """A JupyterLab server on 127.0.0.1, a free port and a random token, serving a copy of the notebooks."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "notebooks"
    shutil.copytree(notebook_dir, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name, values in LAB_SETTINGS.items():
        path = base / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ,
               JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               JUPYTER_CONFIG_DIR=str(base / "config"))  # ignore a personal jupyter config (passwords...)
    port, token = _free_port(), secrets.token_hex(24)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
               f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if os.geteuid() == 0:  # containers; JupyterLab refuses root without it
        command.append("--allow-root")
    log_path = base / "jupyterlab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, token, proc, log_path)
        yield {"url": url, "token": token, "root": root, "log": log_path}
    finally:
        _shutdown_kernels(url, token)
        _stop_process_group(proc)


def _api(url: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{url}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def _wait_for_server(url: str, token: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {proc.returncode}:\n{_tail(log_path)}")
        try:
            _api(url, token, "/api/status")
            return
        except OSError:
            time.sleep(1)
    pytest.fail(f"JupyterLab did not answer within {START_TIMEOUT_S} s:\n{_tail(log_path)}")


def _shutdown_kernels(url: str, token: str) -> None:
    try:
        for kernel in _api(url, token, "/api/kernels"):
            _api(url, token, f"/api/kernels/{kernel['id']}", method="DELETE")
    except OSError:
        pass  # server already gone; stopping its process group below is all that is left


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Chromium (`make browser-deps`) to run the browser test")
    playwright = playwright_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="session")
def screenshot_dir(request) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    yield SCREENSHOTS
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nbrowser test screenshots: {SCREENSHOTS}")


@pytest.fixture
def page(browser, lab):
    """A fresh browser context and page; its kernel is shut down afterwards, pass or fail."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(START_TIMEOUT_S * 1000)
    try:
        yield page
    finally:
        try:
            page.evaluate(JS_SHUTDOWN_KERNEL)
        except Exception:  # the page may be broken; the server fixture shuts leftover kernels down
            pass
        context.close()


# --- the test ---

@pytest.mark.timeout(START_TIMEOUT_S + RUN_TIMEOUT_S + 8 * ACTION_TIMEOUT_S + 300)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_browser(notebook: Path, page, lab, screenshot_dir):
    times = {"start": time.monotonic()}
    try:
        open_notebook(page, lab, notebook.name)
        times["opened"] = time.monotonic()
        run_all_cells(page)
        times["Run All"] = time.monotonic()
        shown = settle(page, None, previous=None, what="outputs after Run All")
        assert not shown["tracebacks"], f"traceback shown:\n{shown['tracebacks'][0][-2000:]}"
        assert not shown["broken"], f"widget failed to render: {shown['broken']}"
        assert not shown["blank"], f"blank plot image(s) of size {shown['blank']}"
        actions = ACTIONS.get(notebook.stem)
        if actions is None:
            controls = page.locator(f".jp-Notebook :is({CONTROLS})").count()
            assert controls == 0, (f"{notebook.name} shows {controls} interactive widgets but tests/"
                                   f"browser_actions.py has no actions for it: add at least a slider and "
                                   f"one other control to ACTIONS['{notebook.stem}']")
        else:
            kinds = [type(action) for action in actions]
            assert Slider in kinds and any(k is not Slider for k in kinds), (
                f"ACTIONS['{notebook.stem}'] must move a slider and work at least one other control")
            for action in actions:
                perform(page, action)
            times["widgets"] = time.monotonic()
    finally:
        try:
            save_screenshots(page, screenshot_dir, notebook.stem)
        except Exception as err:  # a failing screenshot must not hide the failure that matters
            print(f"no screenshot of {notebook.name}: {err}")
        marks = list(times.items())
        steps = ", ".join(f"{name} {t - marks[i][1]:.0f} s" for i, (name, t) in enumerate(marks[1:]))
        print(f"{notebook.name}: {time.monotonic() - times['start']:.0f} s in the browser ({steps})")


def open_notebook(page, lab, name: str) -> None:
    # A workspace per notebook, so JupyterLab does not reopen the notebooks of earlier tests.
    stem = Path(name).stem
    page.goto(f"{lab['url']}/lab/workspaces/test-{stem}/tree/{name}?token={lab['token']}")
    try:
        page.wait_for_function(JS_READY, arg=name, polling=1000, timeout=START_TIMEOUT_S * 1000)
        page.evaluate(JS_TRACK_TRAFFIC)
        return
    except PlaywrightTimeout:
        pass
    pytest.fail(f"{name} did not open with an idle kernel within {START_TIMEOUT_S} s; server log:\n"
                f"{_tail(lab['log'])}")


def run_all_cells(page) -> None:
    """Run All through JupyterLab; fail on error outputs, unrun cells, or a run longer than RUN_TIMEOUT_S."""
    page.evaluate(JS_RUN_ALL)
    finished = True
    try:
        page.wait_for_function("() => window.__run !== null", polling=1000, timeout=RUN_TIMEOUT_S * 1000)
    except PlaywrightTimeout:
        finished = False
    cells = page.evaluate("() => window.__nb.context.model.toJSON().cells")
    if not finished:
        running = next((i for i, c in enumerate(cells) if _unrun(c)), None)
        page.evaluate("() => { window.__nb.sessionContext.session.kernel.interrupt(); }")
        pytest.fail(f"Run All did not finish within {RUN_TIMEOUT_S} s (see MPQLAB_RUN_TIMEOUT); still running "
                    f"cell {running}:\n{_source(cells[running]) if running is not None else '?'}")
    problems = notebook_problems(cells)
    assert not problems, "\n\n".join(problems)


def _unrun(cell: dict) -> bool:
    return cell["cell_type"] == "code" and bool(_source(cell).strip()) and cell.get("execution_count") is None


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def notebook_problems(cells: list[dict]) -> list[str]:
    """Error outputs (with the end of their traceback) and code cells that never ran."""
    problems = []
    for i, cell in enumerate(cells):
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if out["output_type"] == "error":
                traceback = ANSI.sub("", "\n".join(out.get("traceback", [])))
                problems.append(f"cell {i} raised {out['ename']}: {out['evalue']}\n"
                                f"{_source(cell)[:300]}\n...\n{traceback[-1500:]}")
    unrun = [i for i, cell in enumerate(cells) if _unrun(cell)]
    if unrun:
        problems.append(f"{len(unrun)} code cells did not run, first cell {unrun[0]}: {_source(cells[unrun[0]])[:200]}")
    return problems


def snapshot(page, scope) -> dict:
    return page.evaluate(JS_SNAPSHOT, scope)


def settle(page, scope, previous: dict | None, what: str) -> dict:
    """Wait until the output differs from `previous` (if given), then until it holds still with the
    kernel quiet (JS_QUIET) for two polls a second apart. Bounded by ACTION_TIMEOUT_S; gives up on a
    change once the kernel has been quiet for 5 s."""
    deadline = time.monotonic() + ACTION_TIMEOUT_S
    now, quiet_polls = snapshot(page, scope), 0
    while previous is not None and now["key"] == previous["key"]:
        if quiet_polls >= 10:
            pytest.fail(f"{what}: the kernel finished but the output did not change; it shows:\n{now['text'][-1000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: the output did not change within {ACTION_TIMEOUT_S} s; it shows:\n"
                        f"{now['text'][-1000:]}")
        page.wait_for_timeout(500)
        quiet_polls = quiet_polls + 1 if page.evaluate(JS_QUIET) else 0
        now = snapshot(page, scope)
    still = 0
    while still < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: the output was still changing (or the kernel busy) after {ACTION_TIMEOUT_S} s")
        page.wait_for_timeout(1000)
        later = snapshot(page, scope)
        idle = page.evaluate(JS_QUIET)
        still = still + 1 if idle and later["key"] == now["key"] else 0
        now = later
    return now


def find_control(page, action):
    """The one widget of the action's kind whose description is `action.label` (or its nth match)."""
    kind = type(action)
    exact = re.compile(rf"^\s*{re.escape(action.label)}\s*$")
    if kind is Button:
        matches = page.locator(f".jp-Notebook {SELECTOR[kind]}", has_text=exact)
    else:
        matches = page.locator(f".jp-Notebook {SELECTOR[kind]}",
                               has=page.locator(LABEL[kind], has_text=exact))
    count = matches.count()
    name = f"{kind.__name__} {action.label!r}"
    assert count > 0, f"no {name} in the notebook (a widget shown with description={action.label!r})"
    if action.nth is None:
        assert count == 1, f"{count} widgets match {name}: set nth= in tests/browser_actions.py"
        return matches.first, name
    assert action.nth < count, f"{name}: nth={action.nth} but only {count} match"
    return matches.nth(action.nth), name


def perform(page, action) -> None:
    """Work one control, wait for its widget's output to change and settle, then check expectations."""
    control, name = find_control(page, action)
    control.scroll_into_view_if_needed()
    scope = control.evaluate_handle(JS_SCOPE)
    before = settle(page, scope, previous=None, what=f"before {name}")
    if isinstance(action, Slider):
        handle = control.locator(".noUi-handle").first
        value = handle.get_attribute("aria-valuenow")
        handle.focus()
        for _ in range(action.presses):
            page.keyboard.press(action.key)
            page.wait_for_timeout(200)
        moved = handle.get_attribute("aria-valuenow")
        assert moved != value, f"{name} did not move with {action.key} x{action.presses} (stays at {value})"
        name = f"{name} ({value} -> {moved})"
    elif isinstance(action, Checkbox):
        box = control.locator("input[type=checkbox]")
        was = box.is_checked()
        box.click()
        assert box.is_checked() != was, f"{name} did not toggle"
        name = f"{name} ({'ticked' if was else 'unticked'} -> {'unticked' if was else 'ticked'})"
    elif isinstance(action, Dropdown):
        control.locator("select").select_option(label=action.option)
        name = f"{name} -> {action.option!r}"
    elif isinstance(action, ToggleButtons):
        button = control.get_by_role("button", name=action.option, exact=True)
        button.click()
        assert "mod-active" in (button.get_attribute("class") or ""), f"{name}: {action.option!r} not selected"
        name = f"{name} -> {action.option!r}"
    else:
        control.click()
    after = settle(page, scope, previous=before, what=name)
    assert not after["tracebacks"], f"{name} led to a traceback:\n{after['tracebacks'][0][-2000:]}"
    assert not after["broken"], f"{name}: widget failed to render: {after['broken']}"
    assert not after["blank"], f"{name} led to a blank plot image of size {after['blank']}"
    for expect in action.expect:
        check_expectation(expect, before["text"], after["text"], name)


def check_expectation(expect, before: str, after: str, what: str) -> None:
    found = re.search(expect.pattern, after, re.MULTILINE)
    if expect.relation == "absent":
        assert found is None, f"after {what}: {found.group(0)!r} is still shown"
        return
    assert found, f"after {what}: nothing matches {expect.pattern!r} in the output:\n{after[-1000:]}"
    if expect.relation == "present":
        return
    old = re.search(expect.pattern, before, re.MULTILINE)
    assert old, f"before {what}: nothing matches {expect.pattern!r} in the output:\n{before[-1000:]}"
    a, b = float(old.group(1)), float(found.group(1))
    ok = {"decreases": b < a, "increases": b > a, "changes": b != a}[expect.relation]
    assert ok, f"after {what}: expected {expect.pattern!r} to {expect.relation[:-1]}, but {a:g} -> {b:g}"


def save_screenshots(page, folder: Path, stem: str) -> None:
    """The whole notebook as one tall image (or a few, for very long notebooks)."""
    for old in folder.glob(f"{stem}*.png"):
        if re.fullmatch(rf"{re.escape(stem)}(-\d+)?\.png", old.name):
            old.unlink()
    try:
        heights = page.evaluate(JS_HEIGHTS)
    except Exception:  # notebook never opened: photograph whatever the page shows
        page.screenshot(path=str(folder / f"{stem}.png"))
        return
    extra = heights["scroll"] - heights["client"]
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(VIEWPORT["height"] + extra, MAX_SHOT_HEIGHT)})
    page.wait_for_timeout(1500)  # let JupyterLab lay out the taller window
    heights = page.evaluate(JS_HEIGHTS)
    tops = range(0, max(heights["scroll"], 1), max(heights["client"], 1))  # the browser clamps the last one
    for k, top in enumerate(tops):
        page.evaluate(JS_SCROLL_TO, top)
        page.wait_for_timeout(300)
        page.screenshot(path=str(folder / (f"{stem}.png" if k == 0 else f"{stem}-{k + 1}.png")))
