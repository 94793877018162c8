"""The HTML report (``snakemake --report``) opened in a real headless Chromium.

The report is a single-page React app: every result is embedded as a data URI in the global
``results`` and shown by ``app.setView`` (what its eye buttons call). The test drives the
browser over the Chrome DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in a NUL byte, commands on the browser's fd 3, replies and events on its
fd 4), so it needs no package beyond the standard library and a ``chromium`` binary
(Debian: ``apt-get install chromium``). Without one the test is skipped, unless
``TAROT_REQUIRE_CHROMIUM=1`` (set by ``.ci/run``) turns the skip into a failure.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Self

import pytest
from smk_helpers import smk

#: Names of a Chromium (or Chrome) binary, first found on PATH wins.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1400, 1000)
#: Console messages, exceptions and log entries of these levels fail the test.
ERROR_LEVELS = {"error", "assert"}


def chromium_or_skip() -> str:
    """Path of the browser binary; skip (or fail under TAROT_REQUIRE_CHROMIUM=1) without one."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = f"no headless browser on PATH (looked for {', '.join(BROWSERS)}; Debian: apt-get install chromium)"
    if os.environ.get("TAROT_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"TAROT_REQUIRE_CHROMIUM=1 but {reason}")
    pytest.skip(reason)


class Browser:
    """A headless Chromium with one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, exe: str, profile: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # fds >= 10 in the parent, so that moving them to 3 and 4 in the child cannot clobber one another
        a, b = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        args = [
            "--headless",
            "--no-sandbox",  # root in a container: the sandbox cannot start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec 3<&{a} 4>&{b} {a}<&- {b}>&-; exec "$@"', "bash", exe, *args],
            pass_fds=(a, b),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(a)
        os.close(b)
        try:
            page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=self.session)
            self.call(
                "Emulation.setDeviceMetricsOverride",
                session=self.session,
                width=WINDOW[0],
                height=WINDOW[1],
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ protocol
    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_browser, data) :]

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError(f"no reply from the browser in {self.timeout:.0f} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"the browser closed the pipe: {self._stderr_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") != self._next_id:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    def wait_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method:
                    return event
            seen = len(self.events)
            self.events.append(self._receive(deadline))

    # ------------------------------------------------------------------ page
    def open(self, url: str) -> None:
        self.call("Page.navigate", session=self.session, url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        out = self.call(
            "Runtime.evaluate", session=self.session, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in out:
            raise RuntimeError(f"JavaScript error: {json.dumps(out['exceptionDetails'])[:1500]}")
        return out["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=self.session, format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries of the page so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ERROR_LEVELS:
                found.append(
                    f"console.{params['type']}: {[a.get('value', a.get('description')) for a in params['args']]}"
                )
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} ({params['entry'].get('url', '')})")
        return found

    def _stderr_tail(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self._send({"id": 0, "method": "Browser.close", "params": {}})
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.proc.stderr is not None:
                self.proc.stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


#: Helpers in the page: poll until a condition holds, click the link that reads ``text``.
HELPERS = """
window.waitFor = (fn, ms, what) => new Promise((resolve, reject) => {
  const t0 = Date.now();
  (function poll() {
    let value;
    try { value = fn(); } catch (err) { value = undefined; }
    if (value) { resolve(value); return; }
    if (Date.now() - t0 > ms) { reject(new Error('timed out waiting for ' + what)); return; }
    setTimeout(poll, 25);
  })();
});
window.linkNamed = (text) => Array.from(document.querySelectorAll('a')).find((a) => a.textContent.trim() === text);
true
"""

#: Wait until React has rendered the app (the loading screen is hidden after the scripts ran).
APP_READY = """
waitFor(() => typeof app !== 'undefined' && document.querySelector('#loading-screen').style.display === 'none'
        && document.querySelector('#app').children.length > 0 && linkNamed('Workflow'), 30000, 'the report app')
  .then(() => true)
"""

#: Every result: path, MIME type, caption and the (category, subcategory) it is listed under.
LIST_RESULTS = """
(() => {
  const where = {};
  for (const [cat, subcats] of Object.entries(categories))
    for (const [sub, paths] of Object.entries(subcats))
      for (const p of paths) where[p] = [cat, sub];
  return Object.entries(results).map(([path, r]) => ({
    path, mime: r.mime_type, caption: r.caption || '', category: where[path] || null}));
})()
"""

#: Back to the menu, click a category (and its subcategory), return the rows of its result table.
OPEN_CATEGORY = """
(async () => {
  const [cat, sub] = %s;
  app.setView({navbarMode: 'menu'});
  await waitFor(() => !document.querySelector('table') && linkNamed(cat), 10000, 'the menu');
  linkNamed(cat).click();
  if (Object.keys(categories[cat]).length > 1) {
    await waitFor(() => linkNamed(sub), 10000, 'subcategory ' + sub);
    linkNamed(sub).click();
  }
  const rows = await waitFor(() => {
    const r = Array.from(document.querySelectorAll('table tbody tr'));
    return r.length ? r : null;
  }, 10000, 'the results of ' + cat);
  return rows.map((tr) => tr.cells[0].textContent.trim());
})()
"""

#: Click a result's eye button: an image is shown by the app (wait for its <img> to load); any
#: other file is a download link (its data URI decoded by the browser).
VIEW_RESULT = """
(async () => {
  const path = %s;
  const row = Array.from(document.querySelectorAll('table tbody tr')).find((tr) => tr.cells[0].textContent.trim() === path);
  const eye = row && row.querySelector('a[iconname="eye"]');
  if (!eye) throw new Error('no eye button for ' + path);
  const uri = results[path].data_uri;
  if (!results[path].mime_type.startsWith('image/')) {
    const href = eye.getAttribute('href');
    return {kind: 'file', text: await (await fetch(href)).text(), same: href === uri};
  }
  eye.click();
  const img = await waitFor(() => {
    const i = Array.from(document.querySelectorAll('img')).find((x) => x.getAttribute('src') === uri);
    return i && i.complete ? i : null;
  }, 15000, 'the image of ' + path);
  const box = img.getBoundingClientRect();
  return {kind: 'img', width: img.naturalWidth, height: img.naturalHeight, shown: box.width * box.height};
})()
"""

#: The report's exhibits: the per-task figures of the tiny run and what the ``paper`` target adds.
TASK_FIGURES = ("digits_metric_vs_ratio.png", "digits_tsne.png", "digits-lds_lds.png")
PAPER_EXHIBITS = (
    "fig4_lds.png",
    "fig5_segmentation.png",
    "fig6_tsne.png",
    "fig7_motion.png",
    "tab2_instruction.md",
    "tab6_wfd_ablation.md",
    "claims.md",
)


@pytest.mark.xdist_group("tiny")
def test_report_opens_in_a_headless_browser_and_every_exhibit_loads(tiny_run, tmp_path):
    exe = chromium_or_skip()
    _, cfg = tiny_run
    res = smk("all", "paper", "--cores", "2", "--configfile", str(cfg))  # the paper's exhibits and claims
    assert res.returncode == 0, res.stderr[-3000:]
    report = tmp_path / "report.html"
    res = smk("all", "paper", "--report", str(report), "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    shots = tmp_path / "screenshots"
    with Browser(exe, tmp_path / "profile") as browser:
        browser.open(report.as_uri())
        assert browser.evaluate(HELPERS) is True
        assert browser.evaluate(APP_READY) is True
        listed = browser.evaluate(LIST_RESULTS)
        by_name = {Path(r["path"]).name: r for r in listed}
        for name in (*TASK_FIGURES, *PAPER_EXHIBITS):
            assert name in by_name, f"{name} is not in the report ({sorted(by_name)})"
            assert by_name[name]["category"], by_name[name]
        assert {by_name[name]["category"][0] for name in PAPER_EXHIBITS} == {"Paper"}
        seen = set()
        for category in sorted({tuple(r["category"]) for r in listed}):
            rows = browser.evaluate(OPEN_CATEGORY % json.dumps(category))
            expected = sorted(r["path"] for r in listed if tuple(r["category"]) == category)
            assert sorted(rows) == expected, f"{category}: the table lists {rows}"
            for path in rows:
                name = Path(path).name
                assert len(by_name[name]["caption"]) > 40, f"{name}: no caption"
                shown = browser.evaluate(VIEW_RESULT % json.dumps(path))
                if shown["kind"] == "img":
                    assert shown["width"] > 0 and shown["height"] > 0, f"{name}: a broken image"
                    assert (shown["width"], shown["height"]) == png_size(Path(path)), name
                    assert shown["shown"] > 0, f"{name}: the image takes no room on the page"
                    assert png_size(browser.screenshot(shots / f"{Path(name).stem}.png")) == WINDOW
                else:
                    assert shown["same"] and shown["text"] == Path(path).read_text(encoding="utf-8"), name
                seen.add(name)
        assert seen >= {*TASK_FIGURES, *PAPER_EXHIBITS}
        errors = browser.errors()
    assert not errors, "\n".join(errors)


def test_the_browser_check_sees_a_broken_image_and_a_console_error(tmp_path):
    # the checks above can fail: a page with one good and one broken image, and a console error
    exe = chromium_or_skip()
    good = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="  # 1x1
    page = tmp_path / "page.html"
    page.write_text(
        f'<html><body><img id="good" src="data:image/png;base64,{good}">'
        '<img id="bad" src="data:image/png;base64,AAAA"><script>console.error("boom")</script></body></html>'
    )
    with Browser(exe, tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        sizes = browser.evaluate(
            "Promise.all(['good', 'bad'].map((id) => { const i = document.getElementById(id);"
            " return i.decode().then(() => i.naturalWidth, () => i.naturalWidth); }))"
        )
        assert sizes == [1, 0]
        assert png_size(browser.screenshot(tmp_path / "page.png")) == WINDOW
        assert any("boom" in e for e in browser.errors()), browser.events
