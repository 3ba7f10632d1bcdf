"""Progress bars and periodic log lines while :func:`~pyrocollapse.train.fit` trains."""

from __future__ import annotations

import logging
import time
from typing import Any

from pyrocollapse.train.callback import _epoch_line
from pyrocollapse.train.history import EpochRecord

#: Seconds between the plain progress lines ``fit(progress=True)`` logs when its output
#: is not a terminal (at most one line per interval within an epoch).
PROGRESS_INTERVAL = 30.0
#: How often (seconds) a terminal's step bar is redrawn during aggressive mode's
#: encoder-only steps, which do not move the bar.
_BAR_REFRESH = 0.5
_progress_log = logging.getLogger("pyrocollapse.train")


class _Progress:
    """What ``fit`` shows while it trains.

    * ``"bar"`` (``progress=True`` with output on a terminal, as tqdm decides): a bar
      over epochs and, below it, one over the steps of the current epoch, whose
      postfix counts aggressive mode's encoder-only steps;
    * ``"log"`` (``progress=True`` elsewhere: a log file, a pipe): INFO records of the
      ``"pyrocollapse.train"`` logger: one when training starts; within an epoch, at
      most one every :data:`PROGRESS_INTERVAL` seconds, checked after every step
      (encoder-only ones included), saying where the epoch is; and the
      :func:`_epoch_line` of every tenth of the epochs, of the last one, and of any
      epoch that ends :data:`PROGRESS_INTERVAL` seconds or more after the previous line;
    * ``"off"`` (``progress=False``): nothing.
    """

    def __init__(self, enabled: bool, epochs: int, first_epoch: int, steps: int | None) -> None:
        self.epochs, self.steps = epochs, steps
        self.mode = "off"
        self.bar: Any = None
        self.step_bar: Any = None
        self.epoch = first_epoch
        self.step = 0  # outer steps done in the current epoch
        self.inner = 0  # encoder-only steps done in the current epoch
        self.epoch_start = self.last_line = self.last_refresh = time.monotonic()
        self.every = max(1, epochs // 10)
        if not enabled:
            return
        from tqdm.auto import tqdm

        bar = tqdm(
            total=epochs,
            initial=first_epoch - 1,
            desc="training",
            unit="epoch",
            disable=None,  # tqdm's own test: on only when its output is a terminal
            leave=True,
        )
        if bar.disable:
            bar.close()
            self.mode = "log"
            done = f", resuming after epoch {first_epoch - 1}" if first_epoch > 1 else ""
            each = f" of {steps} steps" if steps is not None else ""
            _progress_log.info("training %d epochs%s%s", epochs, each, done)
            return
        self.mode, self.bar = "bar", bar
        self.step_bar = tqdm(total=steps, desc=f"epoch {first_epoch}", unit="step", leave=False)

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.step, self.inner = epoch, 0, 0
        self.epoch_start = time.monotonic()
        if self.step_bar is not None:
            self.step_bar.set_description_str(f"epoch {epoch}", refresh=False)
            self.step_bar.set_postfix_str("", refresh=False)
            self.step_bar.reset(total=self.steps)  # redraws

    def outer_step(self) -> None:
        """After each decoder (or joint) step."""
        if self.mode == "off":
            return
        self.step += 1
        if self.step_bar is not None:
            self.step_bar.update(1)
        else:
            self._maybe_line()

    def inner_step(self) -> None:
        """After each encoder-only step of aggressive mode."""
        if self.mode == "off":
            return
        self.inner += 1
        if self.step_bar is not None:
            now = time.monotonic()
            if now - self.last_refresh >= _BAR_REFRESH:
                self.last_refresh = now
                self.step_bar.set_postfix_str(f"{self.inner} encoder steps", refresh=False)
                self.step_bar.refresh()
        else:
            self._maybe_line()

    def _maybe_line(self) -> None:
        now = time.monotonic()
        if now - self.last_line < PROGRESS_INTERVAL:
            return
        self.last_line = now
        into = now - self.epoch_start
        if self.steps:
            where = f"step {self.step}/{self.steps} ({100 * self.step / self.steps:.0f}%)"
        else:
            where = f"step {self.step}"
        text = f"epoch {self.epoch}/{self.epochs}: {where}, {into:.0f}s into the epoch"
        if self.steps and self.step:
            text += f", about {into / self.step * (self.steps - self.step):.0f}s left"
        if self.inner:
            text += f"; aggressive mode: {self.inner} encoder steps so far this epoch"
        _progress_log.info("%s", text)

    def end_epoch(self, record: EpochRecord, last: bool) -> None:
        """After the epoch's callbacks; ``last``: no epoch follows."""
        if self.bar is not None:
            self.bar.update(1)
            v = record.values
            self.bar.set_postfix({k: f"{v[k]:.2f}" for k in ("elbo", "kl") if k in v})
        elif self.mode == "log":
            now = time.monotonic()
            due = record.epoch % self.every == 0 or now - self.last_line >= PROGRESS_INTERVAL
            if last or due:
                self.last_line = now
                _progress_log.info("%s", _epoch_line(record, self.epochs))

    def close(self) -> None:
        for bar in (self.step_bar, self.bar):
            if bar is not None:
                bar.close()
        self.step_bar = self.bar = None
