"""scripts/review.py: the exclusions sidecar and training, the app's safety, and the page driven
in headless Chromium (a recording with a model, a drive with interventions).

The browser tests skip, saying why, where Debian's chromium + chromium-driver are missing
(`make test` installs them as root). With BC_REVIEW_SCREENSHOTS=<folder> they save the
screenshots the docs show (docs/images/review-*.png).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bc.inference import artifact

from bc.core import udacity
from bc.data.datamodule import DrivingDataModule
from bc.data.exclusions import (ExclusionsError, Range, drop_excluded, read_exclusions,
                                sidecar_path, write_exclusions)
from bc.data.log import read_driving_logs
from bc.data.synthetic import write_recording
from bc.tracking.datasets import recording_inputs
from bc.review import browser, flags
from bc.review.app import Review, make_server
from conftest import REPO, compose_config

ROWS = 90
SCREENSHOTS = os.environ.get("BC_REVIEW_SCREENSHOTS")
DRIVE_STEPS = 120


def checksums(folder: Path) -> dict[str, int]:
    """Every file under `folder` and its size + mtime: what must not change."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    folder = write_recording(tmp_path_factory.mktemp("review") / "rec", rows=ROWS, seed=5)
    # a standstill (3 s at 0 mph) and a steering spike for the flags
    lines = (folder / udacity.LOG_NAME).read_text().splitlines()
    for index in range(40, 40 + 3 * int(udacity.SAMPLE_RATE_HZ) + 2):
        fields = lines[index].split(",")
        lines[index] = ",".join(fields[:6] + ["0"])
    fields = lines[20].split(",")
    spike = "-0.95" if float(fields[3]) > 0 else "0.95"
    lines[20] = ",".join(fields[:3] + [spike] + fields[4:])
    (folder / udacity.LOG_NAME).write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def model() -> artifact.LoadedModel:
    """A SmallNet as `store.load_model` returns one (untrained: the views need a model, not a
    good one; loading from MLflow is drive.py's, tested with it)."""
    import torch

    torch.manual_seed(0)
    net = artifact.build_model(compose_config("train", ["model=small"]).model).eval()
    return artifact.LoadedModel(net=net, spec=net.preprocess_spec, source="SmallNet (test)",
                                outputs=net.outputs)


@pytest.fixture(scope="module")
def drive_output(tmp_path_factory) -> Path:
    """An evaluate.py-style track folder (trajectory.csv, metrics.json, center.mp4) from the
    built-in simulator, written by the writers evaluate.py uses; the car steers hard right,
    so the safety driver intervenes."""
    from bc.sim.env import DrivingEnv
    from bc.evaluation.metrics import DriveResult, compute_metrics, write_json, write_trajectory_csv
    from bc.sim.plots import open_video

    out = tmp_path_factory.mktemp("evaluate") / "lake"
    env = DrivingEnv("lake", laps=None, start_speed_mph=15)
    frame, _ = env.reset()
    infos = []
    writer = open_video(out / "center.mp4", fps=1 / env.dt)
    for _ in range(DRIVE_STEPS):  # one frame per step, as a lockstep drive sends them
        writer.append_data(frame)
        frame, _, _, _, info = env.step((0.45, 0.4))
        infos.append(info)
    writer.close()
    result = DriveResult.from_steps(env.track, env.dt, infos, 1.0, frames=DRIVE_STEPS, realtime=False)
    assert len(result.intervention_steps) >= 1
    write_json(compute_metrics(result), out / "metrics.json")
    write_trajectory_csv(result, out / "trajectory.csv")
    return out.parent


def datamodule(recording: Path) -> DrivingDataModule:
    """The training datamodule (conf/data, model=small) on `recording`, set up."""
    preprocess = compose_config("train", ["model=small"]).model.preprocess
    dm = DrivingDataModule([str(recording)], preprocess, block_rows=10, cache="none")
    dm.setup()
    return dm


class Served:
    """The app on a loopback port in this process, with a keep-alive HTTP client."""

    def __init__(self, review: Review) -> None:
        self.review = review
        self.server = make_server(review, "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/"

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.server_port, timeout=60)
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.review.close()


# -- the sidecar and training --------------------------------------------------------------------
def test_training_skips_excluded_rows(recording: Path, tmp_path: Path) -> None:
    excluded = Range(31, 45, "drove off")  # csv lines (the unity log has no header)
    write_exclusions(recording, [excluded])
    try:
        dm = datamodule(recording)
        used = {int(re.search(r"row (\d+)", source).group(1))
                for dataset in (dm.train_set, dm.val_set) for source in dataset.sources}
        assert used and not used & set(range(31, 46))  # trained and validated on: none excluded
        assert dm.stats["excluded_rows"] == 15 and dm.stats["rows"] == ROWS - 15
        assert set(dm.table["row"]) == set(range(1, ROWS + 1)) - set(range(31, 46))
        (dataset, tags), = recording_inputs(dm.table)  # the run's MLflow dataset input
        assert tags["excluded_rows"] == "15" and tags["rows"] == str(ROWS - 15)
        plain = dataset.digest
        write_exclusions(recording, [Range(31, 44)])
        table = drop_excluded(read_driving_logs([recording])).assign(split="train")
        assert recording_inputs(table)[0][0].digest != plain  # other exclusions, other data
    finally:
        sidecar_path(recording).unlink()


def test_bad_sidecar_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    folder.mkdir()
    cases = {"{": "not a JSON", '{"format": "x"}': "format",
             '{"format": "bc-exclusions/1", "ranges": [{"first_row": 5, "last_row": 2}]}':
                 "ranges[0]: last_row 2 is before first_row 5",
             '{"format": "bc-exclusions/1", "ranges": [{"first_row": "5", "last_row": 9}]}':
                 "ranges[0].first_row"}
    for text, expected in cases.items():
        sidecar_path(folder).write_text(text)
        with pytest.raises(ExclusionsError, match=re.escape(expected)) as error:
            read_exclusions(folder)
        assert str(sidecar_path(folder)) in str(error.value) and "\n" not in str(error.value)


def test_flags_find_the_planted_standstill_and_spike(recording: Path) -> None:
    review = Review(recording)
    try:
        kinds = {(s.kind, s.first) for s in review.recording.stretches}
        assert ("standstill", 40) in kinds and ("spike", 20) in kinds
        assert flags.runs(np.array([0, 1, 1, 0, 1], bool)) == [(1, 2), (4, 4)]
    finally:
        review.close()


# -- safety ------------------------------------------------------------------------------------
def test_serves_only_the_given_folders(recording: Path, drive_output: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((recording / udacity.IMAGE_DIR).iterdir().__next__().read_bytes())
    drive_log = tmp_path / "drive"  # a drive.py folder whose log names a file outside it
    drive_log.mkdir()
    (drive_log / "inside.jpg").write_bytes(secret.read_bytes())
    (drive_log / "drive_log.csv").write_text(
        "time,image,steering,throttle,speed\n"
        "2026-01-01T00:00:00.000+00:00,inside.jpg,0.1,0.2,10\n"
        f"2026-01-01T00:00:00.100+00:00,../{secret.name},0.1,0.2,10\n"
        f"2026-01-01T00:00:00.200+00:00,{secret},0.1,0.2,10\n")
    served = Served(Review(drive_log))
    try:
        assert served.get("/drive/0/frame/0")[0] == 200
        assert served.get("/drive/0/frame/1")[0] == 404 and served.get("/drive/0/frame/2")[0] == 404
    finally:
        served.close()

    before = checksums(recording)
    served = Served(Review(recording))
    try:
        status, body = served.get("/frame/center/0")
        assert status == 200 and body == Path(served.review.recording.paths["center"][0]).read_bytes()
        for path in ["/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/app.py",
                     "/static/..%2f..%2fapp.py", "/frame/center/-1", f"/frame/center/{ROWS}",
                     "/frame/..%2f..%2fdriving_log.csv/0", "/frame/center/../../driving_log.csv",
                     "/%2e%2e/%2e%2e/etc/passwd", "/static//etc/passwd"]:
            status, body = served.get(path)
            assert status in (308, 400, 404), (path, status)  # 308: // merged, still under /static
            assert b"root:" not in body and b"import" not in body
        # a name of another site pointed at 127.0.0.1 (DNS rebinding) is refused
        connection = http.client.HTTPConnection("127.0.0.1", served.server.server_port)
        connection.request("GET", "/api/recording", headers={"Host": "attacker.example:80"})
        assert connection.getresponse().status == 400
        # a writing request that is not JSON (what a page of another site can send) is refused
        connection = http.client.HTTPConnection("127.0.0.1", served.server.server_port)
        connection.request("POST", "/api/exclusions", body="first=1&last=5",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert connection.getresponse().status == 415
        assert not sidecar_path(recording).exists()
    finally:
        served.close()
    assert checksums(recording) == before  # the log and the frames are never modified


def test_script_prints_the_url_binds_loopback_and_reports_bad_input(recording: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "review.py"), str(tmp_path / "nothing")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
    process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "review.py"), str(recording)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        match = re.search(r"open http://127\.0\.0\.1:(\d+)/ in a browser", lines[1])
        assert match, lines
        connection = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=30)
        connection.request("GET", "/api/info")
        assert json.loads(connection.getresponse().read())["kind"] == "recording"
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no outputs/, no log file


# -- in the browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium():
    why = browser.missing()
    if why:
        pytest.skip(why)
    driver, profile = browser.start(1400, 1050)
    yield driver
    browser.stop(driver, profile)


def wait_for(driver, script: str, timeout: float = 30.0):
    """The value of `script` once it is truthy (polling: the page loads asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


CENTER_SHOWS = ("const i = document.getElementById('img-center');"
                " return i.src.includes('{part}') && i.complete && i.naturalWidth === 320")
STRIP_LOADED = ("return [...document.querySelectorAll('#intervention-frames img')]"
                ".every(i => i.complete && i.naturalWidth === 320)")
LAST_STRIP_SHOWS = ("const i = [...document.querySelectorAll('#intervention-frames img')].pop();"
                    " return i.src.includes('{part}') && i.complete && i.naturalWidth === 320")
FLAG_TEXTS = "return [...document.querySelectorAll('#flags li')].map(l => l.textContent).join('|')"


def screenshot(driver, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"review-{name}.png"))


def test_browser_recording_flow(chromium, recording: Path, model, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = chromium
    before = checksums(recording)
    served = Served(Review(recording, model))
    try:
        driver.get(served.url)
        wait_for(driver, "return document.body.dataset.ready === '1'")
        assert "row 1/90" in driver.find_element(By.ID, "cursor-row").text
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.ARROW_RIGHT)
        body.send_keys(Keys.ARROW_RIGHT)
        body.send_keys(Keys.SHIFT, Keys.ARROW_RIGHT)
        assert "row 13/90" in driver.find_element(By.ID, "cursor-row").text
        wait_for(driver, CENTER_SHOWS.format(part="/frame/center/12"))
        assert driver.find_element(By.ID, "img-center").get_attribute("src").endswith("/frame/center/12")
        body.send_keys(Keys.ARROW_LEFT)
        assert "row 12/90" in driver.find_element(By.ID, "cursor-row").text
        flagged = wait_for(driver, FLAG_TEXTS)
        assert "standstill" in flagged and "spike" in flagged
        # the model: predictions along the timeline, disagreements listed, saliency on demand
        wait_for(driver, "return window.review.model && window.review.model.done === 90")
        wait_for(driver, "return document.querySelectorAll('#disagreements li').length > 0")
        driver.find_element(By.CSS_SELECTOR, "#disagreements li").click()
        driver.find_element(By.ID, "chk-saliency").click()
        wait_for(driver, CENTER_SHOWS.format(part="/saliency/"))

        # drag across the detail timeline: rows from a third to two thirds of the recording
        canvas = driver.find_element(By.ID, "detail")
        width = canvas.size["width"]
        ActionChains(driver).move_to_element_with_offset(canvas, int(-width * 0.1), 0).click_and_hold() \
            .move_by_offset(int(width * 0.3), 0).release().perform()
        first, last = driver.execute_script("return window.review.selection")
        assert 0 < first < last < ROWS - 1
        screenshot(driver, "recording")
        driver.find_element(By.ID, "btn-exclude").click()
        wait_for(driver, "return document.querySelectorAll('#exclusions li button').length === 1")
        document = json.loads(sidecar_path(recording).read_text())
        assert document["format"] == "bc-exclusions/1"
        assert document["ranges"] == [{"first_row": first + 1, "last_row": last + 1}]  # csv lines
        driver.find_element(By.ID, "btn-undo").click()
        wait_for(driver, "return document.querySelectorAll('#exclusions li button').length === 0")
        assert read_exclusions(recording) == []
        ActionChains(driver).move_to_element_with_offset(canvas, int(-width * 0.1), 0).click_and_hold() \
            .move_by_offset(int(width * 0.3), 0).release().perform()
        driver.find_element(By.ID, "btn-exclude").click()
        wait_for(driver, "return document.querySelectorAll('#exclusions li button').length === 1")
    finally:
        served.close()
    try:
        # training skips those rows
        (excluded,) = read_exclusions(recording)
        dm = datamodule(recording)
        rows = set(dm.table["row"])
        assert not rows & set(range(excluded.first_row, excluded.last_row + 1))
        assert dm.stats["excluded_rows"] == excluded.last_row - excluded.first_row + 1
        after = checksums(recording)
        assert after.pop(sidecar_path(recording).name) and after == before  # only the sidecar written
    finally:
        sidecar_path(recording).unlink()


def test_browser_drive_flow(chromium, drive_output: Path, model) -> None:
    from selenium.webdriver.common.by import By

    driver = chromium
    served = Served(Review(drive_output, model))
    try:
        driver.get(served.url)
        wait_for(driver, "return document.body.dataset.ready === '1'")
        assert "lake" in driver.find_element(By.ID, "title").text
        interventions = driver.find_elements(By.CSS_SELECTOR, "#interventions li")
        expected = served.review.drives[0].payload()["interventions"]
        assert len(interventions) == len(expected) >= 1
        # click the intervention's cross on the trajectory
        step = expected[0]
        x, y = driver.execute_script(
            f"const t = trajectoryTransform(), d = drive(); return [t.px(d.x[{step}]), t.py(d.y[{step}])];")
        canvas = driver.find_element(By.ID, "trajectory")
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(driver).move_to_element_with_offset(
            canvas, int(x - canvas.size["width"] / 2), int(y - canvas.size["height"] / 2)).click().perform()
        wait_for(driver, "return !document.getElementById('intervention-panel').hidden")
        assert f"step {step}" in driver.find_element(By.ID, "intervention-title").text
        strip = driver.find_elements(By.CSS_SELECTOR, "#intervention-frames img")
        assert len(strip) >= 2
        wait_for(driver, STRIP_LOADED)
        captions = [element.text for element in
                    driver.find_elements(By.CSS_SELECTOR, "#intervention-frames figcaption")]
        assert all("steering" in caption for caption in captions) and captions[-1].startswith("0.00 s")
        strip[-1].click()  # the model's saliency on the frame before the intervention
        wait_for(driver, LAST_STRIP_SHOWS.format(part="/saliency/"))
        screenshot(driver, "drive")
    finally:
        served.close()


def test_review_benchmark_runs_on_a_small_recording(compose, capsys) -> None:
    from hydra.utils import instantiate

    from bc.experiments.benchmarks.review import ReviewBenchmark

    benchmark = instantiate(compose("benchmark", ["benchmark=review", "rows=40", "distinct=10",
                                                  "steps=5", "browser=false"]), _convert_="all")
    assert type(benchmark) is ReviewBenchmark
    result = benchmark.run()
    assert result["rows"] == 40 and 0 < result["read_s"] <= result["open_s"]
    assert 0 < result["step_ms"]["p50"] <= result["step_ms"]["max"]
    assert "one frame on (3 JPEGs, sequential)" in capsys.readouterr().out


def test_a_model_for_other_frames_is_explained_not_crashed(model, tmp_path: Path) -> None:
    small = write_recording(tmp_path / "rec96", rows=3, frame_size=(96, 96), cameras=["center"])
    served = Served(Review(small, model))
    try:
        status, body = served.get("/saliency/0")
        assert status == 400 and "trained on 320x160 frames" in json.loads(body)["error"]
        deadline = time.monotonic() + 30
        while served.review.model.done < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        payload = json.loads(served.get("/api/predictions")[1])
        assert payload["steering"] == [None] * 3 and "row 1: frame is 96x96" in payload["problem"]
    finally:
        served.close()
