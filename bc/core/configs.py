"""The schemas of the configs in conf/: one dataclass per settings block, registered in Hydra's
ConfigStore so that OmegaConf checks every key's name and type while the config is composed.

`data.batch_size=abc` or `port=x` then fails before any work starts, as one line naming the
key (`bc.cli.command`). The values and their documentation stay in conf/*.yaml: a schema field
has a type and no default (`???`), so a value is defined once, in YAML. Value ranges that a type
cannot say (a TCP port, a speed in (0, 30] mph) are checked where the setting is used, and those
errors name the field too.

A primary config picks its schema first in its defaults list (`- drive_schema`). The keys that
choose a model, shared by every command that picks one, are typed once (`RunSelection`, which
those commands' schemas extend) and set once, by the `run` group (conf/run/default.yaml, placed
at the root so that `run_id=...` stays the command line's spelling).

Typing conventions: `Optional[...]` where YAML allows `null`; `Any` for keys that take several
shapes (a track or a list of tracks, `noise: false` or a mapping) and for the config groups and
`_target_` blocks whose keys are the built object's arguments (checked by that object).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

# Hydra's ConfigStore names of the primary configs' schemas (conf/<name>.yaml lists
# `- <name>_schema` first in its defaults).
SCHEMA_SUFFIX = "_schema"

# Keys that no config has any more -> what to write instead (bc.cli reports it in one line).
RETIRED_KEYS = {"slow_in_bends": "speed_source=bends (set_speed lowered with |steering|)"}


# --------------------------------------------------------------------------------------------
# Choosing a model: drive, evaluate, video (conf/run/default.yaml)


@dataclass
class RunSelection:
    """Which model a command uses: a logged run, a registered version, found in a store."""

    run_id: Optional[str] = MISSING  # a run id or name, latest, best
    model_uri: Optional[str] = MISSING  # models:/<name>@<alias> | models:/<name>/<version>
    runtime: str = MISSING  # torch | onnx
    experiment_name: str = MISSING  # where latest / best / <run name> are looked up
    metric: str = MISSING  # for run_id=best
    mode: str = MISSING  # min | max
    tracking_uri: Optional[str] = MISSING


# --------------------------------------------------------------------------------------------
# Training (conf/train.yaml) and its data group (conf/data/)


@dataclass
class BalanceConfig:
    enabled: bool = MISSING
    bins: int = MISSING
    max_per_bin: float = MISSING
    cap: Optional[int] = MISSING
    zero_threshold: Optional[float] = MISSING


@dataclass
class DataConfig:
    """conf/data/: the `bc.data.datamodule.DrivingDataModule` settings."""

    _target_: str = MISSING
    _convert_: str = MISSING
    paths: List[str] = MISSING
    preprocess: Any = MISSING  # the model's (interpolated)
    outputs: Any = MISSING  # the model's (interpolated)
    batch_size: int = MISSING
    num_workers: int = MISSING
    val_fraction: float = MISSING
    split: str = MISSING
    block_seconds: float = MISSING
    block_rows: Optional[int] = MISSING
    cameras: List[str] = MISSING
    steering_correction: float = MISSING
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    seed: int = MISSING
    on_bad_row: str = MISSING
    verify_images: bool = MISSING
    cache: str = MISSING
    cache_dir: Optional[str] = MISSING
    pin_memory: bool = MISSING
    augment_on: str = MISSING
    drop_last: bool = MISSING


@dataclass
class ClosedLoopConfig:
    """conf/callbacks/default.yaml `closed_loop`: `bc.evaluation.callback.ClosedLoopEval`."""

    _target_: str = MISSING
    every_n_epochs: int = MISSING
    tracks: List[Any] = MISSING  # a track name or {track, laps, reverse, lighting, label}
    set_speed: float = MISSING
    speed_source: str = MISSING
    max_time_factor: float = MISSING
    jpeg: bool = MISSING
    vectorization: Optional[str] = MISSING  # sync | async | None (bc.evaluation.episodes)


@dataclass
class TrainConfig:
    """conf/train.yaml: the keys of its own and its config groups."""

    seed: int = MISSING
    speed_loss_weight: float = MISSING
    experiment_name: str = MISSING
    run_name: Optional[str] = MISSING
    register: Optional[str] = MISSING
    tracking_uri: Optional[str] = MISSING
    output_dir: Optional[str] = MISSING  # None only where Hydra has no run folder (--cfg)
    optimized_metric: Optional[str] = MISSING
    # a run id or a checkpoint path; Any because DAgger's resume (its schema extends this one,
    # and a subclass cannot retype a field) is also true / false
    resume: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = MISSING
    augmentation: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    callbacks: Dict[str, Any] = MISSING  # closed_loop: ClosedLoopConfig (conf/callbacks/)


# --------------------------------------------------------------------------------------------
# DAgger (conf/dagger.yaml): training's keys and its own


@dataclass
class DaggerConfig(TrainConfig):
    track: str = MISSING
    demo_laps: float = MISSING
    demo_rows: Optional[int] = MISSING
    expert_speed_mph: Optional[float] = MISSING
    noise: Any = MISSING  # as conf/simulate.yaml
    recovery: Any = MISSING
    rounds: int = MISSING
    round_rows: int = MISSING
    beta: List[float] = MISSING
    label_budget: Optional[int] = MISSING
    warm_start: bool = MISSING
    set_speed: float = MISSING
    speed_source: str = MISSING
    eval_tracks: List[Any] = MISSING
    max_time_factor: float = MISSING
    out: str = MISSING
    # resume (TrainConfig's): false | true | a parent run id


# --------------------------------------------------------------------------------------------
# Serving (conf/drive.yaml)


@dataclass
class SpeedControlConfig:
    """conf/drive.yaml `controller`: `bc.drive.controller.SpeedController`."""

    _target_: str = MISSING
    set_speed: float = MISSING
    speed_source: str = MISSING
    bend_slowdown: float = MISSING
    min_speed: float = MISSING
    kp: float = MISSING
    ki: float = MISSING
    allow_brake: bool = MISSING
    brake_min_speed: float = MISSING
    max_throttle: float = MISSING


@dataclass
class DriveConfig(RunSelection):
    model_path: Optional[str] = MISSING
    host: str = MISSING
    port: int = MISSING
    max_message_bytes: int = MISSING
    max_request_bytes: Optional[int] = MISSING  # None: 4 x max_message_bytes
    idle_timeout_s: float = MISSING
    request_timeout_s: float = MISSING
    num_threads: Optional[int] = MISSING
    speed_source: str = MISSING
    set_speed: float = MISSING
    bend_slowdown: float = MISSING
    image_folder: Optional[str] = MISSING
    overwrite: bool = MISSING
    # what scripts/drive.py builds from the keys above
    listener: Any = MISSING
    controller: SpeedControlConfig = field(default_factory=SpeedControlConfig)
    frames: Any = MISSING
    predictor: Any = MISSING
    server: Any = MISSING


# --------------------------------------------------------------------------------------------
# The built-in simulator (conf/simulate.yaml) and closed-loop evaluation (conf/evaluate.yaml)


@dataclass
class SimulateConfig:
    mode: str = MISSING  # record | autonomous
    track: str = MISSING
    seed: int = MISSING
    laps: float = MISSING
    dt: float = MISSING
    car: Optional[str] = MISSING
    reverse: bool = MISSING
    speed_mph: Optional[float] = MISSING
    out: str = MISSING
    jpeg_quality: int = MISSING
    max_rows: Optional[int] = MISSING
    progress: bool = MISSING
    noise: Any = MISSING  # false | {steering_std, throttle_std, correlation_s}
    recovery: Any = MISSING  # false | {enabled, every_s, drift_s, steering, max_offset}
    host: str = MISSING
    port: int = MISSING
    recorder: Any = MISSING  # what the keys above build (bc.evaluation.recorder.Recorder)
    autonomous: Any = MISSING  # bc.evaluation.autonomous.AutonomousDrive


@dataclass
class EvaluateConfig(RunSelection):
    track: Any = MISSING  # a track or a list of tracks
    laps: float = MISSING
    seed: int = MISSING
    set_speed: float = MISSING
    speed_source: str = MISSING
    realtime: bool = MISSING
    car: Optional[str] = MISSING
    reverse: bool = MISSING
    video: bool = MISSING
    saliency: bool = MISSING
    max_steps: Optional[int] = MISSING
    progress: bool = MISSING
    out: Optional[str] = MISSING
    jobs: int = MISSING
    vectorized: bool = MISSING
    drive_server: List[str] = MISSING  # what the keys above build
    autonomous: Any = MISSING


@dataclass
class VideoConfig(RunSelection):
    folder: str = MISSING
    fps: float = MISSING
    output: Optional[str] = MISSING
    overlay: bool = MISSING
    saliency: bool = MISSING


# The primary configs with a schema: conf/<name>.yaml -> its dataclass.
SCHEMAS: dict[str, type] = {
    "train": TrainConfig,
    "dagger": DaggerConfig,
    "drive": DriveConfig,
    "simulate": SimulateConfig,
    "evaluate": EvaluateConfig,
    "video": VideoConfig,
}


def register() -> None:
    """Put every schema in Hydra's ConfigStore (idempotent, done on import): `<name>_schema`
    for each primary config, `data/schema` (conf/data/default.yaml) and
    `callbacks/closed_loop/schema` (conf/callbacks/default.yaml)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(name=f"{name}{SCHEMA_SUFFIX}", node=schema)
    store.store(group="data", name="schema", node=DataConfig)  # wherever the data group is used
    store.store(group="callbacks/closed_loop", name="schema", node=ClosedLoopConfig)


register()
