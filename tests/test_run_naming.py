"""How runs tell themselves apart in the MLflow UI: names and descriptions from the overrides
that differ from the defaults (a sweep's swept values), paths as tags rather than params."""

from __future__ import annotations

from bc.training.mlflow_run import default_run_name, run_description, split_config, swept_keys
from conftest import compose_config

CFG = compose_config("train", ["model=small"])


def test_a_sweep_is_named_by_its_swept_values_and_described_by_all_overrides() -> None:
    overrides = ["model=small", "optimizer.lr=0.003", "data.num_workers=0", "data.paths=[/data/lake]",
                 "register=lake-pilot", "trainer.max_epochs=3"]
    swept = swept_keys({}, ["-m", "model=small", "optimizer.lr=0.003,0.0003", "data.paths=[/a,/b]",
                            "trainer.max_epochs=range(1,4)"])
    assert swept == {"optimizer.lr", "trainer.max_epochs"}  # a list value is one value
    assert swept_keys({"data.batch_size": "choice(32,64)"}, []) == {"data.batch_size"}  # optuna's space
    context = {"tags": {"job": "1", "sweep": "/runs/multirun/x"}, "overrides": overrides,
               "model_choice": "small", "swept": swept}
    assert default_run_name(CFG, context).startswith("small lr=0.003 max_epochs=3-")
    assert default_run_name(CFG, context).endswith("-job1")
    single = {"tags": {}, "overrides": overrides, "model_choice": "small"}
    assert default_run_name(CFG, single).startswith("small lr=0.003 max_epochs=3-")  # no num_workers, paths
    description = run_description(context)
    assert "`model=small`, `optimizer.lr=0.003`, `data.num_workers=0`, `trainer.max_epochs=3`" in description
    assert "Job 1 of the sweep in `/runs/multirun/x`" in description and "/data/lake" not in description
    assert run_description({"tags": {}, "overrides": []}).startswith("Overrides of the defaults: none")


def test_paths_of_the_machine_and_run_are_tags_not_params() -> None:
    params, tags = split_config({"optimizer.lr": "0.001", "output_dir": "/o", "data.paths": '["/d"]',
                                 "callbacks.model_checkpoint.dirpath": "/o/checkpoints",
                                 "callbacks.insight_plots.folder": "/o/plots", "data.cache_dir": "null",
                                 "tracking_uri": "sqlite:///m.db"})
    assert params == {"optimizer.lr": "0.001"}
    assert tags["config.callbacks.model_checkpoint.dirpath"] == "/o/checkpoints" and len(tags) == 5  # not null ones
