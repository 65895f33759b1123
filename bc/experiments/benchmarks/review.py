"""Is `scripts/review.py` fast on a real-size recording? Open and one-frame-step times.

It builds a recording of `rows` rows (default 30,000: 33 minutes at 15 Hz) from `distinct`
generated frames per camera (hard links under the simulator's file names, so `IMG/` holds
3 x `rows` files as a real one does), serves it on loopback as the app does, and times:

- `open`: from nothing to the page's data: reading the log and `IMG/`, then over HTTP the
  page, its script, the recording's JSON and the three first frames;
- `step`: one frame on: the three camera JPEGs of the next row, one request after the other
  (a browser sends them at once; the app's server answers each on its own connection),
  p50 / p95 / max;
- with `browser`: the same in headless Chromium (the recording already read): from asking for
  the page until it has drawn (the page's clock), and one `→` key until the three new frames
  are decoded, a step every 1/15 s (the page fetches the next row ahead while the user
  looks at this one; `missing()` says why the browser part is skipped);
- the near-duplicate check (every center frame decoded at 1/8 size, in the background).

Targets (`TARGETS`): open <= 2 s, step <= 50 ms.
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bc.core import udacity
from bc.core.settings import flag, integer, setting
from bc.data.synthetic import write_recording
from bc.review import browser
from bc.review.app import Review, make_server

TARGETS = {"open_s": 2.0, "step_ms": 50.0}


def build_recording(folder: Path, rows: int, distinct: int) -> Path:
    """A `rows`-row recording whose frames repeat `distinct` generated ones (hard links)."""
    from datetime import datetime, timedelta


    source = write_recording(folder.parent / "distinct", rows=distinct, seed=0)
    lines = [line.split(",") for line in (source / udacity.LOG_NAME).read_text().splitlines()]
    image_dir = folder / udacity.IMAGE_DIR
    image_dir.mkdir(parents=True)
    out = []
    for index in range(rows):
        fields = lines[index % distinct]
        moment = datetime(2026, 1, 1, 12) + timedelta(seconds=index * udacity.SAMPLE_PERIOD_S)
        paths = []
        for column, camera in enumerate(udacity.CAMERAS):
            name = udacity.camera_image_name(camera, moment)
            os.link(fields[column], image_dir / name)
            paths.append(str(image_dir / name))
        out.append(",".join(paths + fields[3:]))
    (folder / udacity.LOG_NAME).write_text("\n".join(out) + "\n")
    return folder


def _get(connection: http.client.HTTPConnection, path: str) -> bytes:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status}")
    return body


def _stats_ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "max": float(values.max())}


def _verdict(value: float, target: float) -> str:
    return f"target <= {target:g}: {'met' if value <= target else 'NOT met'}"


@dataclass
class ReviewBenchmark:
    rows: int = 30000
    distinct: int = 300
    steps: int = 200
    browser: bool = True

    def __post_init__(self) -> None:
        self.rows = setting("rows", self.rows, integer, lambda n: n >= 2, ">= 2")
        self.distinct = setting("distinct", self.distinct, integer, lambda n: 1 <= n, ">= 1")
        self.steps = setting("steps", self.steps, integer, lambda n: 1 <= n < self.rows,
                             "between 1 and rows - 1")
        self.browser = flag("browser", self.browser)

    def run(self) -> dict[str, Any]:

        with tempfile.TemporaryDirectory(prefix="bc-review-bench-") as tmp:
            started = time.perf_counter()
            folder = build_recording(Path(tmp) / "recording", self.rows, min(self.distinct, self.rows))
            print(f"built a {self.rows}-row recording ({3 * self.rows} frame files) in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)

            started, cpu = time.perf_counter(), time.process_time()
            review = Review(folder)
            read_s, read_cpu_s = time.perf_counter() - started, time.process_time() - cpu
            server = make_server(review, "127.0.0.1", 0)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            connection = http.client.HTTPConnection("127.0.0.1", server.server_port)
            for path in ("/", "/static/review.js", "/static/review.css"):
                _get(connection, path)
            document = json.loads(_get(connection, "/api/recording"))
            for camera in udacity.CAMERAS:
                _get(connection, f"/frame/{camera}/0")
            open_s = time.perf_counter() - started
            assert len(document["rows"]) == self.rows

            steps = []
            for index in range(1, self.steps + 1):
                begun = time.perf_counter()
                for camera in udacity.CAMERAS:
                    _get(connection, f"/frame/{camera}/{index}")
                steps.append(time.perf_counter() - begun)
            step = _stats_ms(steps)
            results: dict[str, Any] = {"rows": self.rows, "read_s": read_s,
                                       "read_cpu_s": read_cpu_s, "open_s": open_s,
                                       "step_ms": step}
            if self.browser:
                results["browser"] = self._browser(server.server_port)
            waited = time.perf_counter()
            while review.recording.duplicates is None and time.perf_counter() - waited < 600:
                time.sleep(0.2)
            results["duplicate_check_s"] = time.perf_counter() - started
            server.shutdown()
            review.close()

        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(f"\nreview app on a {self.rows}-row recording (127.0.0.1, {os.cpu_count()} CPUs, "
              f"load average {load})")
        print(f"  open: {open_s:.2f} s (log + IMG/ read {read_s:.2f} s, {read_cpu_s:.2f} s of CPU; "
              f"then page, JSON and first frames over HTTP)  {_verdict(open_s, TARGETS['open_s'])}")
        print(f"  one frame on (3 JPEGs, sequential): p50 {step['p50']:.1f} ms, p95 "
              f"{step['p95']:.1f} ms, max {step['max']:.1f} ms  "
              f"{_verdict(step['p95'], TARGETS['step_ms'])}")
        browser = results.get("browser")
        if isinstance(browser, dict):
            total = read_s + browser["open_s"]
            print(f"  in headless Chromium: page drawn {browser['open_s']:.2f} s after the "
                  f"request; with the read {total:.2f} s  {_verdict(total, TARGETS['open_s'])}")
            print(f"  in headless Chromium: → to 3 frames loaded p50 {browser['step_ms']['p50']:.1f}"
                  f" ms, p95 {browser['step_ms']['p95']:.1f} ms, max "
                  f"{browser['step_ms']['max']:.1f} ms  "
                  f"{_verdict(browser['step_ms']['p95'], TARGETS['step_ms'])}")
        elif browser:
            print(f"  browser: skipped ({browser})")
        print(f"  near-duplicate check (background): done {results['duplicate_check_s']:.1f} s "
              "after opening")
        return results

    def _browser(self, port: int) -> dict[str, Any] | str:

        why = browser.missing()
        if why:
            return why
        driver, profile = browser.start()
        try:
            started = time.perf_counter()
            driver.get(f"http://127.0.0.1:{port}/")
            while driver.execute_script("return document.body.dataset.ready") != "1":
                if time.perf_counter() - started > 60:
                    raise RuntimeError("the page did not finish loading in 60 s")
                time.sleep(0.01)
            # the page's own clock: from asking for the page to having drawn it
            open_s = int(driver.execute_script("return document.body.dataset.readyMs")) / 1000
            steps = []
            for _ in range(min(self.steps, 100)):
                time.sleep(udacity.SAMPLE_PERIOD_S)  # a step per frame at the recording's rate
                took = driver.execute_async_script(STEP_SCRIPT)
                if took < 0:
                    raise RuntimeError("a camera frame did not load in the browser")
                steps.append(took / 1000)
            return {"open_s": open_s, "step_ms": _stats_ms(steps)}
        finally:
            browser.stop(driver, profile)


# One → key press, timed in the page until the three camera images have loaded.
STEP_SCRIPT = """
const done = arguments[arguments.length - 1];
const images = ["left", "center", "right"].map((c) => document.getElementById("img-" + c));
const begun = performance.now();
document.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowRight"}));
Promise.all(images.map((img) => img.decode())).then(() => done(performance.now() - begun),
                                                    (error) => done(-1));
"""
