"""DAgger with the built-in expert (Ross et al. 2011): the learner drives, the expert labels.

    python scripts/dagger.py rounds=3 model=small round_rows=300      # conf/dagger.yaml

Round 0 records the noisy expert (`demo_laps` laps or `demo_rows` rows, DART noise and
recovery drifts as scripts/simulate.py) and trains on it. Each round i >= 1 then lets the
model of round i-1 drive `track` in the DrivingEnv, through the same Predictor and drive-server
code as scripts/drive.py (`bc.evaluation.policies.ModelPolicy`), the expert's own action executed instead
with probability beta_i (`beta`, one value per round, the last repeated); the expert labels
every visited state (steering, and its planned speed when the model predicts speed), and the
`round_rows` frames are written as an ordinary Udacity recording (`<out>/data/round<i>/`, three
cameras: train.py takes it as it is). The model of round i trains on every round's recording so
far, from scratch or from round i-1's weights (`warm_start`). It stops after `rounds` rounds
or once `label_budget` labelled frames are collected (round 0 included).

MLflow: a parent run for the job (its config, the per-round table `rounds.json` / `rounds.md`
and `round/*` metrics per round, and the final round's model: `drive.py run_id=<parent>`), and
a nested run per round (a training run of train.py's recipe, with its data size and the
closed-loop metrics `eval/<track>/*`, `eval/score` of its model on `eval_tracks`).

Each completed round is written to `<out>/state.json` before the next begins; Ctrl-C marks the
parent KILLED, and `resume=true` (the newest unfinished DAgger job of the experiment) or
`resume=<parent run id>` continues after the last complete round with the job's own config.

Length: the DAgger job is one state machine (start, rounds, resume, Ctrl-C) over MLflow
runs; splitting it would spread that state over modules.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning import Callback, LightningModule, Trainer

from bc import tracking
from bc.inference import artifact

from bc.core import udacity
from bc.drive.controller import SPEED_SOURCES
from bc.errors import ConfigError
from bc.sim.car import MPS_PER_MPH
from bc.core.udacity import CAMERAS
from bc.evaluation.episodes import EpisodeSpec, drive
from bc.evaluation.expert import ExpertPolicy
from bc.evaluation.policies import MixedPolicy
from bc.evaluation.policies import ModelPolicy
from bc.evaluation.recorder import Recorder
from bc.evaluation.recorder import RecordingWriter
from bc.evaluation.score import Scorer
from bc.evaluation.score import eval_metrics
from bc.sim.env import car_model
from bc.sim.expert import Expert
from bc.tracking.registry import logged_model_of
from bc.training.mlflow_run import load_stored_config
from bc.training.train import train

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
ROUNDS_TABLE = "rounds"  # rounds.json / rounds.md in the parent run
TAG_ROLE, TAG_OUT, TAG_ROUND = "dagger.role", "dagger.out", "dagger.round"
PARENT_TAG = "mlflow.parentRunId"  # MLflow shows a run with this tag nested under the parent
# The keys of conf/dagger.yaml that are DAgger's; the rest is train.py's config.
DAGGER_KEYS = ("rounds", "track", "demo_laps", "demo_rows", "noise", "recovery", "round_rows",
               "beta", "label_budget", "warm_start", "expert_speed_mph", "set_speed",
               "speed_source", "eval_tracks", "max_time_factor", "out", "resume")


class WarmStart(Callback):
    """Start the fit from the network weights in `weights` (a saved model's weights.pt)."""

    def __init__(self, weights: str) -> None:
        self.weights = weights

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = torch.load(self.weights, map_location="cpu", weights_only=True)
        pl_module.net.load_state_dict(state)


class CtrlC(Callback):
    """Ctrl-C stops a DAgger job wherever it lands. Python delivers SIGINT as a
    KeyboardInterrupt in whatever code runs then; inside a weakref callback or a `__del__`
    (garbage collection during a round's sanity check, say) it is only printed ("Exception
    ignored in ...") and the job would go on. So while a job runs, the SIGINT handler also
    notes the request, a KeyboardInterrupt that could not be raised is noted instead of
    printed, and the job checks the note (`check`) at every training and validation batch
    (this callback, in each round's trainer), every rollout step and between a round's
    phases."""

    requested = False

    @classmethod
    @contextmanager
    def installed(cls) -> Iterator[None]:
        """The handler and hook while the job runs (main thread only: where signals arrive)."""
        cls.requested = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous_handler = signal.signal(signal.SIGINT, cls._on_sigint)
        previous_hook = sys.unraisablehook

        def unraisable(info: Any) -> None:
            if isinstance(info.exc_value, KeyboardInterrupt):
                cls.requested = True
            else:
                previous_hook(info)

        sys.unraisablehook = unraisable
        try:
            yield
        finally:
            sys.unraisablehook = previous_hook
            signal.signal(signal.SIGINT, previous_handler)  # Lightning leaves it ignored

    @classmethod
    def _on_sigint(cls, signum: int, frame: Any) -> None:
        cls.requested = True
        raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed and not yet acted on."""
        if cls.requested:
            raise KeyboardInterrupt

    def on_train_batch_start(self, *args: Any) -> None:
        self.check()

    def on_validation_batch_start(self, *args: Any) -> None:
        self.check()

    def on_sanity_check_end(self, *args: Any) -> None:
        self.check()

    def on_train_epoch_end(self, *args: Any) -> None:
        self.check()


@dataclass
class Settings:
    """conf/dagger.yaml's DAgger keys, checked (each error names its key)."""

    rounds: int
    track: str
    demo_laps: float
    demo_rows: int | None
    round_rows: int
    beta: list[float]
    label_budget: int | None
    warm_start: bool
    expert_speed_mph: float | None
    set_speed: float
    speed_source: str
    max_time_factor: float

    @classmethod
    def of(cls, cfg: DictConfig) -> "Settings":
        """The DAgger keys of `cfg`; their types are checked by the schema
        (`bc.core.configs.DaggerConfig`) as the config is composed, their ranges here."""
        settings = cls(**{key: cfg[key] for key in cls.__dataclass_fields__})
        settings.beta = list(settings.beta)
        for key, ok, expected in (
            ("rounds", lambda v: v >= 0,
             "an integer >= 0 (rounds after the expert's demonstrations)"),
            ("track", bool, "a track name"),
            ("demo_laps", lambda v: v > 0, "> 0"),
            ("demo_rows", lambda v: v is None or v >= 1, ">= 1 (or null: demo_laps laps)"),
            ("round_rows", lambda v: v >= 1, "an integer >= 1"),
            ("beta", lambda values: values and all(0 <= v <= 1 for v in values),
             "probabilities in [0, 1], one per round (the last one repeats)"),
            ("label_budget", lambda v: v is None or v >= 1, ">= 1 (or null: no budget)"),
            ("expert_speed_mph", lambda v: v is None or v > 0,
             "> 0 (or null: the expert's own pace)"),
            ("set_speed", lambda v: 0 < v <= udacity.TOP_SPEED_MPH,
             f"a speed in (0, {udacity.TOP_SPEED_MPH}] mph"),
            ("speed_source", lambda v: v in SPEED_SOURCES, ", ".join(SPEED_SOURCES)),
            ("max_time_factor", lambda v: v > 1, "a number > 1"),
        ):
            if not ok(getattr(settings, key)):
                raise ConfigError(f"{key}: expected {expected}, got {getattr(settings, key)!r}")
        return settings

    def beta_of(self, round_index: int) -> float:
        return self.beta[min(round_index, len(self.beta)) - 1]


# --------------------------------------------------------------------------------------------
# One job


def run_dagger(cfg: DictConfig) -> str:
    """Run (or resume) the DAgger job of `cfg` (module doc); returns the parent run id."""
    with open_dict(cfg):
        cfg.tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    with CtrlC.installed():
        job = Job.resume(cfg) if cfg.resume not in (None, False) else Job.start(cfg)
        return job.run()


class Job:
    """The parent run, the output folder and the completed rounds (`state.json`)."""

    def __init__(self, cfg: DictConfig, out: Path, parent: str, rounds: list[dict[str, Any]]):
        self.cfg, self.out, self.parent, self.rounds = cfg, out, parent, rounds
        self.settings = Settings.of(cfg)
        self.uri = str(cfg.tracking_uri)
        self.client = tracking.client(self.uri)

        self.scorer = Scorer(list(cfg.eval_tracks or []), self.settings.max_time_factor)

    # -- the parent run -----------------------------------------------------------------------
    @classmethod
    def start(cls, cfg: DictConfig) -> "Job":
        Settings.of(cfg)  # every DAgger key checked before a run or a folder exists
        out = Path(str(cfg.out)).expanduser().resolve()
        if (out / STATE_FILE).exists():
            raise ConfigError(f"out: {out} already holds a DAgger job; resume it with "
                              f"resume=true, or choose another out")
        out.mkdir(parents=True, exist_ok=True)
        uri = str(cfg.tracking_uri)
        experiment = tracking.get_or_create_experiment(str(cfg.experiment_name), uri)
        tracking.mark_dead_runs(experiment, uri)
        name = cfg.run_name or f"dagger-{time.strftime('%Y%m%d-%H%M%S')}"
        with open_dict(cfg):
            cfg.output_dir = str(out)  # the rounds train in out/round<i>/train
        client = tracking.client(uri)
        run = client.create_run(experiment, run_name=name, tags={
            TAG_ROLE: "parent", TAG_OUT: str(out), **tracking.process_tags(),
            "model": str(cfg.model._target_)})
        text = OmegaConf.to_yaml(cfg, resolve=True)
        (out / CONFIG_FILE).write_text(text)
        client.log_text(run.info.run_id, text, CONFIG_FILE)
        for key in DAGGER_KEYS:
            if key in cfg and key not in ("noise", "recovery", "eval_tracks"):
                client.log_param(run.info.run_id, f"dagger.{key}", json.dumps(
                    OmegaConf.to_container(cfg, resolve=True)[key])[:500])
        job = cls(cfg, out, run.info.run_id, [])
        job.save()
        print(f"DAgger job: parent MLflow run {job.parent} (experiment "
              f"{cfg.experiment_name!r}), outputs in {out}", flush=True)
        return job

    @classmethod
    def resume(cls, cfg: DictConfig) -> "Job":
        """The unfinished job `resume` names (true: the newest of `experiment_name`), with its
        own config (only `tracking_uri` is taken from this command)."""
        uri, client = str(cfg.tracking_uri), tracking.client(str(cfg.tracking_uri))
        parent = _find_parent(cfg.resume, str(cfg.experiment_name), uri)
        run = client.get_run(parent)
        out = Path(run.data.tags[TAG_OUT])
        state_path = out / STATE_FILE
        if not state_path.is_file():
            raise ConfigError(f"resume: DAgger run {parent} kept its rounds in {state_path}, "
                              f"which is gone")

        stored = load_stored_config(out / CONFIG_FILE, f"resume: DAgger job {parent}'s {out / CONFIG_FILE}")
        with open_dict(stored):
            stored.tracking_uri, stored.resume = uri, None
        state = json.loads(state_path.read_text())
        client.update_run(parent, status="RUNNING")
        for key, value in tracking.process_tags().items():
            client.set_tag(parent, key, value)
        print(f"DAgger job {parent}: resuming after {len(state['rounds'])} complete round(s)",
              flush=True)
        return cls(stored, out, parent, state["rounds"])

    def save(self) -> None:
        """state.json (written whole, then renamed: a kill never leaves half of it)."""
        path = self.out / STATE_FILE
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({"parent": self.parent, "rounds": self.rounds}, indent=2))
        os.replace(partial, path)

    # -- the rounds ---------------------------------------------------------------------------
    @property
    def labels(self) -> int:
        return sum(item["rows"] for item in self.rounds)

    def run(self) -> str:
        """Every round not done yet; the parent ends FINISHED with the final model, or KILLED
        on Ctrl-C (complete rounds kept), or FAILED."""
        status = "FAILED"
        try:
            while True:
                index = len(self.rounds)
                rows = self.rows_for(index)
                if index > self.settings.rounds or rows == 0:
                    break
                self.do_round(index, rows)
                CtrlC.check()
            self.finish()
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            print(f"DAgger interrupted: {len(self.rounds)} complete round(s) kept in {self.out}."
                  f"\nContinue it: python scripts/dagger.py resume={self.parent}", flush=True)
            raise
        finally:
            self.client.set_terminated(self.parent, status)
        return self.parent

    def rows_for(self, index: int) -> int | None:
        """Labelled frames round `index` may collect: `round_rows` (round 0: `demo_rows`, None
        for `demo_laps` laps), within what is left of `label_budget`."""
        wanted = self.settings.round_rows if index else self.settings.demo_rows
        if self.settings.label_budget is None:
            return wanted
        left = max(0, self.settings.label_budget - self.labels)
        return left if wanted is None else min(wanted, left)

    def do_round(self, index: int, rows: int | None) -> None:
        folder = self.out / f"round{index}"
        data = self.out / "data" / f"round{index}"
        for path in (folder, data):  # what an interrupted attempt left
            shutil.rmtree(path, ignore_errors=True)
        started = time.monotonic()
        if index == 0:
            collected = self.record_demos(data, rows)
        else:
            collected = self.collect(index, data, rows)
        CtrlC.check()
        collect_s = time.monotonic() - started
        paths = [item["data"] for item in self.rounds] + [str(data)]
        started = time.monotonic()
        run_id = self.train_round(index, paths, folder)
        CtrlC.check()
        train_s = time.monotonic() - started
        model_dir = self.download_model(run_id, folder / "model")
        scores = self.evaluate(run_id, model_dir)
        CtrlC.check()
        total = self.labels + collected["rows"]
        row = {"round": index, "data": str(data), "run_id": run_id, "model": str(model_dir),
               **collected, "labels_total": total, "collect_s": collect_s, "train_s": train_s,
               "val_loss_best": self.client.get_run(run_id).data.metrics.get("val/loss_best"),
               **{key: value for key, value in scores.items()}}
        self.rounds.append(row)
        self.save()
        self.log_round(row)

    def record_demos(self, data: Path, rows: int | None) -> dict[str, Any]:
        """Round 0: the noisy expert's demonstrations (scripts/simulate.py's recorder)."""

        noise, recovery = (OmegaConf.to_container(self.cfg[key], resolve=True)
                           if isinstance(self.cfg[key], DictConfig) else self.cfg[key]
                           for key in ("noise", "recovery"))  # a mapping, false or null
        recorder = Recorder(laps=self.settings.demo_laps, seed=int(self.cfg.seed),
                            speed_mph=self.settings.expert_speed_mph, noise=noise,
                            recovery=recovery, max_rows=rows,
                            progress=False)
        log_path = recorder.record(self.settings.track, data)
        count = sum(1 for line in log_path.read_text().splitlines() if line.strip())
        print(f"round 0: {count} rows of the noisy expert on {self.settings.track}", flush=True)
        return {"rows": count, "beta": 1.0, "expert_share": 1.0, "interventions": 0}

    def learner(self, model_dir: Path) -> Any:

        model = artifact.load_model_folder(model_dir)
        source = ("model" if self.settings.speed_source == "model" and "speed" in model.outputs
                  else self.settings.speed_source)
        return ModelPolicy(model, self.settings.set_speed, source)

    def collect(self, index: int, data: Path, rows: int) -> dict[str, Any]:
        """Round `index`: the previous round's model drives, the expert takes over with
        probability beta and labels every state; `rows` rows written to `data`."""

        beta = self.settings.beta_of(index)
        learner = self.learner(Path(self.rounds[-1]["model"]))
        rng = random.Random(int(self.cfg.seed) * 1000 + index)
        expert_steps = interventions = 0
        expert = ExpertPolicy(self.settings.expert_speed_mph,
                              label_speed="target" if learner.predicts_speed else "measured")
        policy = MixedPolicy(learner, expert, beta, rng)
        base = EpisodeSpec(self.settings.track, laps=None, lighting=int(self.cfg.seed),
                           cameras=CAMERAS)
        planner = Expert(base.road, speed_mph=self.settings.expert_speed_mph,
                         car=car_model(None), dt=base.dt)

        def record(slot: int, info: Mapping[str, Any], executed: Any) -> None:
            nonlocal expert_steps
            CtrlC.check()
            writer.write(info["frames"], *expert.labels[slot])
            expert_steps += tuple(executed) != policy.learner_actions[slot]

        with RecordingWriter(data) as writer:
            while writer.rows < rows:  # episodes from random points, at the expert's speed there
                start_s = rng.uniform(0.0, base.road.length)
                spec = dataclasses.replace(
                    base, start_s=start_s, max_steps=rows - writer.rows,
                    start_speed_mph=min(self.settings.set_speed,
                                        planner.target_speed(start_s) / MPS_PER_MPH))
                result, = drive([spec], policy, on_step=record)
                interventions += len(result.intervention_steps)
        print(f"round {index}: {writer.rows} rows driven by round {index - 1}'s model with "
              f"beta {beta:g} (expert executed {expert_steps}, {interventions} interventions), "
              f"labelled by the expert", flush=True)
        return {"rows": writer.rows, "beta": beta, "expert_share": expert_steps / writer.rows,
                "interventions": interventions}

    def train_round(self, index: int, paths: Sequence[str], folder: Path) -> str:
        """Train.py's recipe on every recording so far, as a run nested under the parent."""

        cfg = copy.deepcopy(self.cfg)
        with open_dict(cfg):
            for key in DAGGER_KEYS:
                cfg.pop(key, None)
            cfg.data.paths = list(paths)
            if cfg.data.get("cache_dir") is None:
                cfg.data.cache_dir = str(self.out / "frame_cache")
            cfg.output_dir = str(folder / "train")
            cfg.resume = None
            cfg.run_name = f"{self.client.get_run(self.parent).info.run_name}-round{index}"
            cfg.logger.mlflow.tags = {PARENT_TAG: self.parent, TAG_ROUND: str(index),
                                      TAG_ROLE: "round"}
            if cfg.callbacks is None:
                cfg.callbacks = {}
            cfg.callbacks.ctrl_c = {"_target_": "bc.experiments.dagger.CtrlC"}
            if self.settings.warm_start and index > 0:
                cfg.callbacks.warm_start = {
                    "_target_": "bc.experiments.dagger.WarmStart",
                    "weights": str(Path(self.rounds[-1]["model"]) / artifact.WEIGHTS_FILE)}
        print(f"round {index}: training on {len(paths)} recording(s)", flush=True)
        return train(cfg)

    def download_model(self, run_id: str, folder: Path) -> Path:
        from mlflow.artifacts import download_artifacts

        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            local = download_artifacts(run_id=run_id, artifact_path=artifact.MODEL_ARTIFACT_DIR,
                                       tracking_uri=self.uri, dst_path=tmp)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.move(local, folder)
        return folder

    def evaluate(self, run_id: str, model_dir: Path) -> dict[str, float]:
        """The round's model on `eval_tracks` in-process; eval/* logged to its run."""
        from mlflow.entities import Metric


        metrics = eval_metrics(self.scorer.score(self.learner(model_dir)))
        now = int(time.time() * 1000)
        model_id = logged_model_of(self.client, run_id)  # the model's page shows its score too
        self.client.log_batch(run_id, metrics=[Metric(key, value, now, 0, model_id=model_id)
                                               for key, value in metrics.items()])
        return metrics

    def log_round(self, row: Mapping[str, Any]) -> None:
        """The parent's round/* metrics at step = round, and the table so far."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        numbers = {key: value for key, value in row.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)
                   and key != "round" and math.isfinite(value)}
        self.client.log_batch(self.parent, metrics=[
            Metric(f"round/{key}", float(value), now, int(row["round"]))
            for key, value in numbers.items()])
        self.client.log_text(self.parent, json.dumps(self.rounds, indent=2), f"{ROUNDS_TABLE}.json")
        self.client.log_text(self.parent, rounds_markdown(self.rounds), f"{ROUNDS_TABLE}.md")
        print(rounds_markdown([row]).splitlines()[-1], flush=True)

    def finish(self) -> None:
        """The final round's model and its closed-loop metrics become the parent's."""
        from mlflow.entities import Metric

        if not self.rounds:
            return
        last = self.rounds[-1]
        self.client.log_artifacts(self.parent, last["model"], artifact.MODEL_ARTIFACT_DIR)
        now = int(time.time() * 1000)
        metrics = {key: value for key, value in last.items() if key.startswith("eval/")}
        metrics["labels_total"] = last["labels_total"]
        self.client.log_batch(self.parent, metrics=[Metric(key, float(value), now, 0)
                                                    for key, value in metrics.items()])
        print(rounds_markdown(self.rounds), flush=True)
        print(f"DAgger finished: {len(self.rounds)} round(s), {self.labels} labelled frames; "
              f"drive the final model: python scripts/drive.py run_id={self.parent}", flush=True)


def rounds_markdown(rounds: Sequence[Mapping[str, Any]]) -> str:
    """The per-round table."""
    lines = ["| round | beta | rows | labels | expert share | val/loss_best | eval/score | run |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rounds:
        loss = row.get("val_loss_best")
        lines.append(f"| {row['round']} | {row['beta']:g} | {row['rows']} | {row['labels_total']} "
                     f"| {row['expert_share']:.2f} | {'-' if loss is None else f'{loss:.4g}'} "
                     f"| {row.get('eval/score', float('nan')):.1f} | {row['run_id']} |")
    return "\n".join(lines) + "\n"


def _find_parent(resume: Any, experiment: str, uri: str) -> str:
    """The parent run `resume` names: a run id, or true: the newest unfinished one."""
    client = tracking.client(uri)
    if tracking.is_run_id(resume):
        run = client.get_run(resume)
        if run.data.tags.get(TAG_ROLE) != "parent":
            raise ConfigError(f"resume: run {resume} is not a DAgger job's parent run")
        status = run.info.status
    elif resume is True:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ConfigError(f"resume: no MLflow experiment {experiment!r} in {uri}")
        tracking.mark_dead_runs(found.experiment_id, uri)
        runs = client.search_runs([found.experiment_id],
                                  filter_string=f"tags.`{TAG_ROLE}` = 'parent'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise ConfigError(f"resume: no DAgger job in experiment {experiment!r}")
        resume, status = runs[0].info.run_id, runs[0].info.status
    else:
        raise ConfigError(f"resume: expected true or a DAgger parent run id, got {resume!r}")
    if status == "FINISHED":
        raise ConfigError(f"resume: DAgger job {resume} is FINISHED; nothing to resume")
    if status == "RUNNING":
        tags = client.get_run(resume).data.tags
        raise ConfigError(f"resume: DAgger job {resume} is RUNNING (pid "
                          f"{tags.get(tracking.TAG_PID, '?')}); stop that process first")
    return resume
