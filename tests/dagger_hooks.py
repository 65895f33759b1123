"""Callbacks the Ctrl-C tests put into a DAgger job (`+callbacks.pause._target_=...`) so that the
test's real SIGINT lands at a chosen point of the job."""

from __future__ import annotations

import time
import weakref
from pathlib import Path

from pytorch_lightning import Callback

WAIT_S = 60.0


def _wait() -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.05)


def _wait_inside_a_weakref_callback() -> None:
    """Wait where Python cannot raise: a KeyboardInterrupt here is only printed ("Exception
    ignored in ...") and the code after it goes on, as in finding 5 (garbage collection)."""
    class Thing:
        pass

    thing = Thing()
    reference = weakref.ref(thing, lambda _: _wait())
    del thing  # CPython runs the callback now
    assert reference() is None


class PauseAt(Callback):
    """At `hook` (sanity_check or batch: the second training batch), once per job (the marker
    says it happened): touch `marker` and wait there for the test's SIGINT (`swallowed`:
    inside a weakref callback)."""

    def __init__(self, marker: str, hook: str, swallowed: bool = False) -> None:
        self.marker, self.hook, self.swallowed = Path(marker), hook, swallowed

    def _pause(self) -> None:
        if self.marker.exists():
            return
        self.marker.touch()
        (_wait_inside_a_weakref_callback if self.swallowed else _wait)()

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        if self.hook == "sanity_check":
            self._pause()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.hook == "batch" and batch_idx == 1:
            self._pause()
