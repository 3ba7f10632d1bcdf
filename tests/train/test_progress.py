"""fit's progress: bars within epochs on a terminal, periodic log lines elsewhere,
nothing with progress=False (issue 18, item 7)."""

from __future__ import annotations

import io
import logging

import pyro
import pytest

from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.train import EpochRecord, PrintProgress, _epoch_line, fit
from pyrocollapse.train import progress as train_progress  # fit reads PROGRESS_INTERVAL there


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (tqdm then draws its bars)."""

    def isatty(self) -> bool:
        return True


def _fit(data, **kwargs):
    pyro.set_rng_seed(0)
    vae = MLPVAE(64, 2, hidden=(16,))
    options = {"loss": PlainELBO(), "epochs": 2, "batch_size": 50, "seed": 0, **kwargs}
    return fit(vae.model, vae.guide, data, **options)


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "pyrocollapse.train"]


def test_progress_false_prints_and_logs_nothing(digits, monkeypatch, capsys, caplog):
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr(train_progress, "PROGRESS_INTERVAL", 0.0)
    with caplog.at_level(logging.DEBUG, logger="pyrocollapse"):
        _fit(digits[:200], progress=False, aggressive=True, aggressive_max_inner=3)
    assert err.getvalue() == ""
    assert capsys.readouterr() == ("", "")
    assert _lines(caplog) == []


def test_off_a_terminal_progress_is_periodic_log_lines(digits, monkeypatch, capsys, caplog):
    err = io.StringIO()  # not a terminal: no bar
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr(train_progress, "PROGRESS_INTERVAL", 0.0)  # a line after every step
    with caplog.at_level(logging.INFO, logger="pyrocollapse.train"):
        _fit(digits[:200], epochs=2)
    assert err.getvalue() == "" and capsys.readouterr().out == ""
    lines = _lines(caplog)
    assert lines[0] == "training 2 epochs of 4 steps"
    within = [line for line in lines if ": step " in line]
    assert [line.split(",")[0] for line in within] == [
        f"epoch {e}/2: step {s}/4 ({25 * s}%)" for e in (1, 2) for s in (1, 2, 3, 4)
    ]
    assert all("s into the epoch" in line for line in within)
    summaries = [line for line in lines if line.startswith("epoch ") and "ELBO" in line]
    assert [s.split()[1] for s in summaries] == ["1/2", "2/2"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "pyrocollapse.train")


def test_aggressive_inner_steps_show_in_the_log_lines(digits, monkeypatch, caplog):
    # the encoder-only steps between two decoder steps can run for minutes: each one
    # checks whether a line is due
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr(train_progress, "PROGRESS_INTERVAL", 0.0)
    with caplog.at_level(logging.INFO, logger="pyrocollapse.train"):
        _fit(digits[:200], epochs=1, aggressive=True, aggressive_max_inner=3, aggressive_window=5)
    lines = _lines(caplog)
    # 4 outer steps, each after 3 encoder steps: lines counting 1..12 encoder steps
    counts = [
        int(line.split("aggressive mode: ")[1].split()[0])
        for line in lines
        if "aggressive mode:" in line
    ]
    assert counts[-1] == 12 and sorted(set(counts)) == list(range(1, 13))
    assert "[aggressive: 3 encoder steps per step]" in lines[-1]


def test_log_lines_are_rate_limited(digits, monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr(train_progress, "PROGRESS_INTERVAL", 3600.0)
    with caplog.at_level(logging.INFO, logger="pyrocollapse.train"):
        _fit(digits[:200], epochs=20)
    lines = _lines(caplog)
    assert not any(": step " in line for line in lines)  # no epoch lasts an hour
    # the start line, then every tenth of the 20 epochs (2, 4, ...) and the last
    epochs = [int(line.split()[1].split("/")[0]) for line in lines[1:]]
    assert epochs == list(range(2, 21, 2))


def test_on_a_terminal_steps_within_the_epoch_get_a_bar(digits, monkeypatch, caplog):
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr(train_progress, "_BAR_REFRESH", 0.0)
    with caplog.at_level(logging.INFO, logger="pyrocollapse.train"):
        _fit(digits[:200], epochs=2, aggressive=True, aggressive_max_inner=3, aggressive_window=5)
    out = err.getvalue()
    assert "training" in out and "/2 [" in out  # the bar over epochs
    assert "epoch 1" in out and "epoch 2" in out and "/4 [" in out  # steps within each
    assert "encoder steps" in out  # aggressive mode's inner steps move the postfix
    assert _lines(caplog) == []  # a bar, no log lines


def test_a_loader_without_length_logs_steps_without_a_total(digits, monkeypatch, caplog):
    class Batches:
        def __iter__(self):
            return iter(digits[:200].split(50))

    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr(train_progress, "PROGRESS_INTERVAL", 0.0)
    with caplog.at_level(logging.INFO, logger="pyrocollapse.train"):
        _fit(Batches(), epochs=1, batch_size=None)
    lines = _lines(caplog)
    assert lines[0] == "training 1 epochs"
    assert "epoch 1/1: step 4, " in "\n".join(lines)


def test_print_progress_keeps_its_line_and_tolerates_missing_columns(capsys):
    record = EpochRecord(
        3,
        {"elbo": -1.0, "reconstruction": -0.5, "kl": 0.5, "kl_weight": 1.0, "time": 2.0},
    )

    class State:
        epochs = 3

    PrintProgress().on_epoch_end(State(), record)
    assert capsys.readouterr().out == (
        "epoch    3/3  ELBO -1.000  recon -0.500  KL 0.500  beta 1.000  (2.0s)\n"
    )
    # a stock Pyro ELBO records no reconstruction or KL: the line says what there is
    assert _epoch_line(EpochRecord(1, {"elbo": -2.0, "time": 1.0}), 5) == (
        "epoch    1/5  ELBO -2.000  (1.0s)"
    )


def test_resume_says_where_it_resumes(digits, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    _fit(digits[:200], epochs=1, progress=False, checkpoint_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="pyrocollapse.train"):
        _fit(digits[:200], epochs=2, checkpoint_dir=tmp_path, resume=True)
    assert _lines(caplog)[0] == "training 2 epochs of 4 steps, resuming after epoch 1"


@pytest.mark.parametrize("progress", [1, "yes"])
def test_progress_must_be_a_bool(digits, progress):
    with pytest.raises(TypeError, match="progress"):
        _fit(digits[:200], progress=progress)


def test_progress_off_does_no_work_per_step():
    shown = train_progress._Progress(False, 10, 1, 100)
    for _ in range(1000):
        shown.outer_step()
        shown.inner_step()
    assert shown.mode == "off" and shown.step == shown.inner == 0
