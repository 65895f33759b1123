"""Resuming runs no code from a store: a resumed run's (or DAgger job's) stored config is data.

Anyone who can write to a shared MLflow store can edit a killed run's `config.yaml`; Hydra's
own blocklist stops `os.system` but not `torch.load` of a pickle. Every `_target_` a stored
config reaches must be one bc's config groups build, with only the Hydra keys conf/ uses.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from bc import tracking
from bc.experiments.dagger import STATE_FILE, TAG_OUT, TAG_ROLE, run_dagger
from bc.errors import ConfigError
from bc.training.instantiators import TRAINING_GROUPS, buildable_targets, check_stored_config
from bc.training.train import build, prepare
from conftest import CONF_DIR, REPO, compose_config


class CreatesFile:
    """Unpickling this creates `path`: the stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def evil(tmp_path: Path) -> dict:
    """finding 1's payload: `torch.load` of a real pickle that creates the marker file."""
    pickled = tmp_path / "evil.pkl"
    pickled.write_bytes(pickle.dumps(CreatesFile(tmp_path / "payload-ran")))
    return {"_target_": "torch.load", "f": str(pickled), "weights_only": False}


def stored_config(tmp_path: Path, recording: Path | None = None) -> dict:
    """A real training config as a run stores it (resolved), small and quick."""
    cfg = compose_config("train", ["model=small", "data.num_workers=0", "trainer.max_epochs=1",
                                   f"data.paths=[{recording or tmp_path / 'rec'}]",
                                   f"output_dir={tmp_path / 'out'}", "data.block_rows=10",
                                   f"data.cache_dir={tmp_path / 'cache'}",
                                   "model.preprocess.frame_width=320",
                                   "model.preprocess.frame_height=160"])
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def killed_run(tmp_path: Path, config: dict) -> tuple[str, str]:
    """A KILLED run whose config.yaml is `config`, with a checkpoint to resume from."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(tracking.get_or_create_experiment("bc", uri)).info.run_id
    client.log_text(run_id, yaml.safe_dump(config), "config.yaml")
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"not reached")
    client.set_tag(run_id, "last_checkpoint", str(checkpoint))
    client.set_terminated(run_id, "KILLED")
    return uri, run_id


def variants(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """(stored config, the key the refusal names) for the payload in each place it can hide."""
    payload = evil(tmp_path)
    base = stored_config(tmp_path)

    def with_(path: str, value) -> dict:
        config = json.loads(json.dumps(base))
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
        return config

    return {
        "loss": (with_("loss", payload), r"loss\._target_: 'torch\.load'"),
        "deep in a list": (with_("data.paths", [str(tmp_path), {"x": payload}]),
                           r"data\.paths\[1\]\.x\._target_"),
        "inside an allowed target": (with_("callbacks.model_checkpoint.dirpath", payload),
                                     r"callbacks\.model_checkpoint\.dirpath\._target_"),
        "positional args": (with_("optimizer._args_", [payload]), r"optimizer\._args_"),
        "partial": (with_("loss._partial_", True), r"loss\._partial_"),
        "a key without target": (with_("loss", {"_args_": [payload]}), r"loss\._target_: no _target_"),
    }


@pytest.mark.parametrize("shape", ["loss", "deep in a list", "inside an allowed target",
                                   "positional args", "partial", "a key without target"])
def test_resume_refuses_a_stored_config_with_foreign_targets(tmp_path: Path, shape: str) -> None:
    config, named = variants(tmp_path)[shape]
    uri, run_id = killed_run(tmp_path, config)
    cfg = compose_config("train", [f"resume={run_id}", f"tracking_uri={uri}",
                                   f"output_dir={tmp_path / 'resumed'}"])
    with pytest.raises(ConfigError, match=rf"^resume: run {run_id}'s config\.yaml: {named}") as error:
        build(prepare(cfg)[0])  # what train() does with it, up to the fit
    assert "\n" not in str(error.value)
    assert not (tmp_path / "payload-ran").exists()
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "KILLED"


@pytest.mark.slow  # ~10 s of train.py start-up; the same refusal runs in-process in the default suite (above)
def test_train_py_resume_with_finding_1s_payload_is_one_line_and_runs_nothing(tmp_path: Path) -> None:
    config, _ = variants(tmp_path)["loss"]
    uri, run_id = killed_run(tmp_path, config)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), f"resume={run_id}",
                             f"tracking_uri={uri}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**__import__("os").environ, "HYDRA_FULL_ERROR": "0"})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: resume: run ") \
        and "loss._target_: 'torch.load'" in lines[0], result.stderr
    assert not (tmp_path / "payload-ran").exists()


def test_dagger_resume_refuses_a_stored_config_with_foreign_targets(tmp_path: Path) -> None:
    config = {**stored_config(tmp_path), "loss": evil(tmp_path), "rounds": 0, "demo_rows": 5,
              "track": "lake", "seed": 0, "experiment_name": "dagger"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    out = tmp_path / "dagger"
    out.mkdir()
    parent = client.create_run(tracking.get_or_create_experiment("dagger", uri), tags={
        TAG_ROLE: "parent", TAG_OUT: str(out)}).info.run_id
    client.set_terminated(parent, "KILLED")
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    (out / STATE_FILE).write_text(json.dumps({"parent": parent, "rounds": []}))
    with pytest.raises(ConfigError, match=r"^resume: DAgger job .*config\.yaml: loss\._target_"):
        run_dagger(compose_config("dagger", [f"resume={parent}", f"tracking_uri={uri}"]))
    assert not (tmp_path / "payload-ran").exists()
    assert client.get_run(parent).info.status == "KILLED"


def test_every_target_of_the_training_groups_is_allowed_and_nothing_else() -> None:
    """The allow-list is conf/'s: a stored config of every option of every group passes."""
    allowed = buildable_targets()
    assert "torch.load" not in allowed and "os.system" not in allowed
    assert "_partial_" in allowed["torch.optim.Adam"] and "_partial_" not in allowed["torch.nn.MSELoss"]
    for group in TRAINING_GROUPS:
        for option in sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml")):
            cfg = compose_config("train", [f"{group}={option}", "output_dir=/tmp/x"])
            check_stored_config(cfg, f"{group}={option}")
