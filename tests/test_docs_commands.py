"""Every command the documentation shows runs as written, and the site builds.

The commands are the lines of the ```bash blocks of README.md and docs/**/*.md (a line ending in
`\\` continues; `#` starts a comment). They run in the order a reader meets them (README, then
the site's pages in mkdocs.yml's order, then pages not in its nav) in one working folder, the
way a user works through the pages: a model trained on one page is `run_id=latest` on the next.

What changes between the page and the test, and nothing else:

- SUBSTITUTIONS (below): the page's data paths and placeholders become small generated data
  and `latest`; `.venv/bin/...` is this interpreter's environment; `scripts/` is the repo's.
- SHORT (below): settings appended so that a command of minutes takes seconds (one epoch of two
  batches; a recording of a few rows; a few steps of driving). A key the command sets itself
  is replaced, not repeated.
- A command whose comment starts with a marker is handled as the marker says (the markers are
  described to readers on the development page):
    `# needs: <what>`  needs what a test machine lacks (the Unity simulator, a GPU, Slurm, a
                       PostgreSQL server): checked for composition only (`--cfg job`; for
                       `make`, a dry run `make -n`; for `mlflow`, that its options exist);
    `# long: <what>`   takes minutes (a benchmark, `make demo`): composition only, likewise;
    `# serves: <what>` runs until Ctrl-C: started, sent three frames by a Unity-like client
                       (drive.py) or asked for its health page (mlflow), then stopped with
                       Ctrl-C; it must have served.
- COVERED (below): a command that another test of the suite already runs the same way is
  only checked for composition here (named there, and that test must exist), to keep
  `make test` within its time; identical commands on several pages run once.
Every command, marked or not, is first checked for composition (cheap, all at once).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from scale import free_port, script_env
from unity_client import UnityClient, make_jpeg, telemetry

from bc.data.synthetic import write_recording
from bc.drive.launch import SERVING_PATTERN

BIN = Path(sys.executable).parent
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)
MARKER = re.compile(r"\s#\s*(?P<marker>needs|long|serves):\s*(?P<what>.*)$")
PLACEHOLDER = re.compile(r"<[^<>\s]*[a-z][^<>]*>|\.\.\.")  # <run id>, <name>, ...: must be substituted
RUN_TIMEOUT_S = 240
COMPOSE_TIMEOUT_S = 120

# (pattern in the page's command, what the test runs instead, why)
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"(^|\s)\.venv/bin/(\w+)", r"\1" + str(BIN) + r"/\2", "the environment the tests run in"),
    (r"^mlflow ", str(BIN / "mlflow") + " ", "the environment's mlflow"),
    (r"^python ", str(BIN / "python") + " ", "the environment's python (the docs assume it is active)"),
    (r"(^|\s)scripts/", r"\1" + str(REPO / "scripts") + "/", "the repository's scripts, from the working folder"),
    (r"/path/to/(rec\d)", r"data/\1", "two generated recordings (the Unity format)"),
    (r"<run id>|<id>|<the parent run id it prints>", "latest", "the newest finished run"),
]

# Settings appended per script so that the command runs in seconds: key=value replaces the
# command's own value of that key.
TINY_TRAINING = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                 "data.block_rows=10", "callbacks.progress_bar.refresh_rate=0"]
SHORT: dict[str, list[str]] = {
    "train.py": TINY_TRAINING,
    "dagger.py": TINY_TRAINING,
    "simulate.py": ["laps=0.02", "max_rows=30", "progress=false"],
    "evaluate.py": ["laps=0.05", "max_steps=20", "progress=false"],
    "drive.py": ["port=0"],
}


# Commands another test already runs the same way (same script, same settings, on generated
# data): composition-checked here, run there (the test must exist). This keeps `make test`
# within its budget; a command not listed here, and not marked, is run by this file.
COVERED: list[tuple[str, str]] = [
    (r"review\.py", "test_review.py::test_script_prints_the_url_binds_loopback_and_reports_bad_input"),
    (r"trainer=ddp_cpu", "test_scale_train.py::test_ddp_on_two_cpu_processes_is_one_run_whose_model_serves"),
    (r"-m hydra/launcher=parallel", "test_tracking_concurrency.py::test_parallel_sweep_with_default_loader_workers_shares_one_store"),
    (r"evaluate\.py .*jobs=2", "test_scale_evaluate.py::test_two_tracks_in_parallel_processes_one_table_one_run"),
    (r"dagger\.py model=small", "test_dagger.py::test_dagger_rounds_nested_runs_interrupt_resume_and_a_drivable_model"),
    (r"video\.py run1 saliency=true", "test_insight.py::test_video_script_draws_a_run_models_saliency"),
    (r"evaluate\.py .*saliency=true", "test_insight.py::test_evaluate_script_writes_and_logs_the_saliency_video_per_track"),
    (r"callbacks\.closed_loop\.every_n_epochs", "test_closed_loop.py::test_checkpoint_chosen_by_eval_score_is_the_logged_model"),
    (r"offline_online\.py", "test_closed_loop.py::test_offline_vs_online_plots_and_logs_the_rank_correlation"),
    (r"promote\.py|models:/lake-pilot@champion$", "test_registry.py::test_promote_picks_the_best_version_of_the_experiment_and_drive_serves_the_alias"),
    (r"runtime=onnx", "test_onnx.py::test_drive_serves_onnx_with_onnxruntime"),
    (r"model\.outputs=\[steering,speed\]", "test_speed_output.py::test_a_speed_model_logs_its_speed_error_and_saves_both_outputs"),
    (r"speed_source=model", "test_speed_output.py::test_drive_py_throttles_towards_the_speed_the_model_predicts"),
    (r"-m model=", "test_train.py::test_multirun_sweep_is_one_run_per_job_in_one_experiment"),
    (r"train\.py model=nvidia data\.paths=\[data/lake\] trainer\.max_epochs=5$|evaluate\.py run_id=latest track=lake( laps=1)?$",
     "test_end_to_end.py::test_record_train_drive_evaluate"),
    (r"register=lake-pilot", "test_mlflow_server.py::test_a_trained_run_through_the_mlflow_server_rest_api"),
    (r"hparams_search=optuna hydra\.sweeper\.n_trials", "test_scale_servers.py::test_two_sweep_processes_share_one_optuna_study_in_postgresql"),
]


def covered_by(command: "Command") -> str | None:
    return next((test for pattern, test in COVERED if re.search(pattern, command.text)), None)


@dataclass
class Command:
    page: str
    line: int
    text: str  # as written, comment removed
    marker: str | None = None
    what: str = ""

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def pages() -> list[Path]:
    """README, then the site's pages in nav order, then the other pages under docs/."""
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]

    def walk(items: list) -> list[str]:
        found = []
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            found += walk(value) if isinstance(value, list) else [value]
        return found

    ordered = [REPO / "README.md", *(REPO / "docs" / name for name in walk(nav))]
    others = sorted(path for path in (REPO / "docs").rglob("*.md") if path not in ordered
                    and "hooks" not in path.parts)
    return ordered + others


def commands(page: Path) -> list[Command]:
    text = page.read_text()
    found = []
    for block in FENCE.finditer(text):
        if block["lang"] not in ("bash", "sh", "shell"):
            continue
        first_line = text.count("\n", 0, block.start("body")) + 1
        pending, start = "", 0
        for offset, raw in enumerate(block["body"].splitlines()):
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            start = start if pending else first_line + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            whole, pending = pending + line, ""
            marked = MARKER.search(whole)
            command = Command(str(page.relative_to(REPO)), start, re.sub(r"(^|\s+)#.*$", "", whole).strip())
            if marked:
                command.marker, command.what = marked["marker"], marked["what"]
            found.append(command)
    return found


def substitute(command: Command) -> list[str]:
    text = command.text
    for pattern, replacement, _ in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    argv = shlex.split(text)
    left = [token for token in argv if PLACEHOLDER.search(token)]
    assert not left, f"{command}: placeholder(s) {left}: substitute them (SUBSTITUTIONS) or mark the command"
    return argv


def script_of(argv: list[str]) -> str | None:
    return next((Path(token).name for token in argv if token.startswith(str(REPO / "scripts"))), None)


def shortened(argv: list[str]) -> list[str]:
    if "--cfg" in argv:  # prints the config: nothing to shorten
        return argv
    settings = SHORT.get(script_of(argv) or "", [])
    keys = {setting.split("=", 1)[0] for setting in settings}
    return [token for token in argv if token.split("=", 1)[0] not in keys] + settings


SWEPT = re.compile(r"^(?P<key>[\w./@+-]+)=(?P<values>[^\[\]()'\"]*,[^\[\]()'\"]*)$")


def sweep_jobs(argv: list[str]) -> list[list[str]]:
    """A `-m` command's jobs as single runs, enough of them that every swept value appears once
    (Hydra's --cfg cannot be combined with -m)."""
    if "-m" not in argv and "--multirun" not in argv:
        return [argv]
    argv = [token for token in argv if token not in ("-m", "--multirun")]
    swept = {index: SWEPT.match(token)["values"].split(",") for index, token in enumerate(argv)
             if SWEPT.match(token)}
    jobs = []
    for job in range(max((len(values) for values in swept.values()), default=1)):
        jobs.append([f"{SWEPT.match(token)['key']}={swept[index][min(job, len(swept[index]) - 1)]}"
                     if index in swept else token for index, token in enumerate(argv)])
    return jobs


def composition(argv: list[str]) -> list[list[str]] | None:
    """The cheap checks of a command: Hydra's --cfg job (per sweep job), make's dry run; None: none."""
    if script_of(argv):
        return [[*job, "--cfg", "job"] for job in sweep_jobs(argv)]
    if Path(argv[0]).name == "make":
        return [["make", "-n", *argv[1:]]]
    if "=" in argv[0]:  # NAME=value before the program
        return composition(argv[1:])
    return None


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`NAME=value ... program args` as the shell runs it."""
    env = script_env()
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
        name, value = argv[0].split("=", 1)
        env[name], argv = value, argv[1:]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def check_mlflow_options(command: Command, argv: list[str], cwd: Path) -> str | None:
    """`mlflow <sub> --flags`: every flag is one its --help lists."""
    sub = argv[1]
    shown = run([argv[0], sub, "--help"], cwd, COMPOSE_TIMEOUT_S)
    missing = [token for token in argv[2:] if token.startswith("--") and token.split("=")[0] not in shown.stdout]
    return f"{command}: unknown option(s) {missing}" if shown.returncode or missing else None


def check_composes(command: Command, cwd: Path) -> str | None:
    argv = substitute(command)
    if Path(argv[0]).name == "mlflow":
        return check_mlflow_options(command, argv, cwd)
    for check in composition(argv) or []:
        result = run(check, REPO if check[0] == "make" else cwd, COMPOSE_TIMEOUT_S)
        if result.returncode != 0:
            return f"{command}: does not compose ({shlex.join(check[-4:])}):\n{result.stderr[-1500:]}"
    return None


def serve(command: Command, argv: list[str], cwd: Path) -> str | None:
    """Start a server, use it as its client would, stop it with Ctrl-C."""
    mlflow = Path(argv[0]).name == "mlflow"
    port = free_port()
    if mlflow:
        argv = [*argv, "--port", str(port), "--workers", "1"]  # one web worker starts faster than four
    process = subprocess.Popen(argv, cwd=cwd, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        if mlflow:
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    return f"{command}: the server did not start"
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                    return None
                except OSError:
                    time.sleep(0.3)
        for line in process.stdout:
            output.append(line)
            serving = SERVING_PATTERN.search(line)
            if serving:
                size = re.search(r"for (\d+)x(\d+) frames", line)
                width, height = (int(size[1]), int(size[2])) if size else (320, 160)
                with UnityClient(int(serving["port"])) as client:
                    for seed in range(3):
                        event, _ = client.send_telemetry(telemetry(make_jpeg(seed, width, height), speed=5.0))
                        if event != "steer":
                            return f"{command}: answered {event!r}, not 'steer'"
                return None
            if time.monotonic() > deadline:
                break
        return f"{command}: never served:\n{''.join(output)[-2000:]}"
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as the page says
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def check_runs(command: Command, cwd: Path) -> str | None:
    if command.marker in ("needs", "long") or covered_by(command):
        return None  # composition only
    argv = shortened(substitute(command))
    if command.marker == "serves":
        return serve(command, argv, cwd)
    result = run(argv, cwd, RUN_TIMEOUT_S)
    if result.returncode != 0:
        return f"{command}: exit {result.returncode}:\n{result.stderr[-2500:]}"
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: data/lake and data/rec1, data/rec2 are small generated recordings."""
    folder = tmp_path_factory.mktemp("user")
    for name, seed in (("lake", 0), ("rec1", 1), ("rec2", 2)):
        write_recording(folder / "data" / name, rows=60, seed=seed)
    return folder


ALL = [command for page in pages() for command in commands(page)]


def test_the_documentation_has_commands_and_markers_are_known() -> None:
    assert len(ALL) > 20
    assert {command.marker for command in ALL} <= {None, "needs", "long", "serves"}
    assert any(command.page == "README.md" for command in ALL)


def in_one_process(argv: list[str]) -> bool:
    """`python scripts/<name>.py ... --cfg job`: composed by compose_many.py with the others."""
    return len(argv) > 2 and Path(argv[0]).name.startswith("python") and argv[1] == str(REPO / "scripts" / script_of(argv))


def compose_in_one_process(commands: list[tuple[Command, list[str]]], cwd: Path) -> list[str]:
    """Every script command's `--cfg job` in one interpreter (tests/compose_many.py): the
    imports are paid once, not once per command."""
    checks = [{"cwd": str(cwd), "argv": check[1:]} for _, check in commands]
    result = subprocess.run([sys.executable, str(Path(__file__).parent / "compose_many.py")], cwd=cwd,
                            env=script_env(), input=json.dumps(checks), capture_output=True, text=True,
                            timeout=COMPOSE_TIMEOUT_S * 4)
    assert result.returncode == 0, result.stderr[-3000:]
    return [f"{command}: does not compose ({shlex.join(check[-4:])}):\n{outcome['stderr']}"
            for (command, check), outcome in zip(commands, json.loads(result.stdout)) if outcome["code"] != 0]


def test_every_command_composes(workdir: Path) -> None:
    together, apart = [], {}
    for command in ALL:
        argv = substitute(command)
        checks = [] if Path(argv[0]).name == "mlflow" else composition(argv) or []
        if checks and all(in_one_process(check) for check in checks):
            together += [(command, check) for check in checks]
        else:
            apart.setdefault(command.text, command)  # a command on several pages: checked once
    with ThreadPoolExecutor(2) as pool:
        failures = [failure for failure in pool.map(lambda command: check_composes(command, workdir), apart.values())
                    if failure]
    failures += compose_in_one_process(together, workdir)
    assert not failures, "\n\n".join(failures)


def test_commands_covered_elsewhere_are_run_by_an_existing_test() -> None:
    for _, test in COVERED:
        file, name = test.split("::")
        assert re.search(rf"^def {name}\(", (REPO / "tests" / file).read_text(), re.M), test
    assert all(any(re.search(pattern, command.text) for command in ALL) for pattern, _ in COVERED)


@pytest.mark.timeout(1200)  # ~100 s of CPU: room for a machine shared with other jobs
def run_in_page_order(commands: list[Command], workdir: Path) -> None:
    """In page order, each distinct command once (a page may repeat the README's)."""
    seen: set[str] = set()
    failures = []
    for command in commands:
        if command.text in seen:
            continue
        seen.add(command.text)
        failure = check_runs(command, workdir)
        if failure:
            failures.append(failure)
    assert not failures, "\n\n".join(failures)


def test_the_readme_commands_run_as_written(workdir: Path) -> None:
    """The front page's commands, run in the default suite (the site's pages: below, slow)."""
    run_in_page_order([command for command in ALL if command.page == "README.md"], workdir)


@pytest.mark.slow  # ~4 min of CPU: every page of the site (`make test-all`)
def test_every_command_runs_as_written(workdir: Path) -> None:
    run_in_page_order(ALL, workdir)


def test_the_site_builds_strict(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, env={**script_env(), "NO_MKDOCS_2_WARNING": "1"}, capture_output=True,
                            text=True, timeout=COMPOSE_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "config-reference" / "index.html").exists()
