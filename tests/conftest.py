"""Shared test setup: quiet, offline third-party libraries and an isolated MLflow store."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)

from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


def compose_config(config_name: str, overrides: list[str] | tuple[str, ...] = ()):
    """The project's real Hydra config `conf/<config_name>.yaml` with `overrides` (no Hydra app)."""
    from hydra import compose, initialize_config_dir

    import bc.core.configs  # noqa: F401  (registers the schemas that conf/*.yaml name)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture
def compose() -> Callable:
    """`compose("train", ["model=small", ...])`: the one way tests build a config."""
    return compose_config


@pytest.fixture(autouse=True)
def isolated_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees another's MLflow store: Lightning's MLflow logger exports
    MLFLOW_TRACKING_URI, and MLflow keeps a process-wide URI once one is set."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # so that teardown removes what a test exported
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    import sys

    if "mlflow" in sys.modules:
        from mlflow.tracking._tracking_service import utils

        monkeypatch.setattr(utils, "_tracking_uri", None)


# The files whose tests take longest (end-to-end runs of the scripts), longest first. `make test`
# hands whole files to its two workers in collection order; starting these first keeps one
# worker from finishing a long file alone at the end while the other waits.
LONGEST_FILES_FIRST = [
    "test_docs_commands.py", "test_benchmarks.py", "test_train_resume.py", "test_end_to_end.py",
    "test_drive_server.py", "test_tracking_concurrency.py", "test_speed_output.py", "test_train.py",
    "test_mlflow_server.py", "test_evaluate_signals.py", "test_scale_servers.py", "test_evaluation.py",
    "test_registry.py", "test_dagger_signals.py", "test_stored_config_safety.py",
    "test_bad_inputs_bounded.py",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
    order = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), order[id(item)]))
