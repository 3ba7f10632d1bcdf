"""Sequence models: the SequenceVAE step against a hand-written LSTM VAE step, and the
cost of aggressive training's inner loop.

**Step** (issue #19, item 2: target <= 1.3x). Times, in one run and on the same network,
batch and data, at two sizes (tutorial 6's model, and the ``SequenceVAE`` defaults on
longer rows), one optimisation step of

* a hand-written PyTorch LSTM VAE (the reference): the same modules as the
  ``SequenceVAE`` (deep copies), the encoder over the packed rows, a reparameterised
  draw, the decoder with z in its initial state and at every input, the masked
  next-token cross-entropy (``<pad>``/``<bos>`` never next), the closed-form KL, one
  ``torch.optim.Adam(fused=True)``;
* the step ``pyrocollapse.train.fit`` runs (``_train_step`` on a ``TrainState`` built as
  ``fit`` builds it) with ``PlainELBO``, on a ``SequenceVAE`` with and without word
  dropout (0.25; the hand-written step has none);
* stock Pyro ``Trace_ELBO`` through ``pyro.infer.SVI``, for comparison.

Every entry is warmed up, then the entries are timed in interleaved rounds so that
load from other processes falls on all of them alike; the table gives the median and
the fastest step, and their ratios to the hand-written step. Validation is off (as in
``fit`` after its first step).

**Aggressive mode** (issue #19, item 2). Trains tutorial 6's ``SequenceVAE`` with ``fit``
for a few epochs with ``aggressive=True`` (monitor on, so that the mode can end) and the same
number with ``aggressive=False``, and reports per aggressive epoch its time, the
encoder-only (inner) steps per outer step, and the time per step (inner and outer) as a
ratio to a plain epoch's time per step. An aggressive epoch of ``B`` outer steps takes
``B * (1 + k)`` steps, ``k`` the mean inner steps per outer step, which
``aggressive_max_inner`` caps; its cost is therefore bounded by its settings at
``(1 + aggressive_max_inner)`` plain epochs when an inner step costs no more than an
outer one. Target: time per step in an aggressive epoch at most 1.3x a plain epoch's
(monitor excluded from both: ``epoch_time``).

Usage::

    python benchmarks/sequence.py             # both sizes, 5 rounds of 20 steps; 3 + 3 epochs
    python benchmarks/sequence.py --quick     # tutorial 6's size, 3 rounds of 8; 2 + 2 epochs
    python benchmarks/sequence.py --threads 2 # torch intra-op threads (default 1)
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from _common import arguments, context, load_average, set_threads
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pyrocollapse import load_dataset
from pyrocollapse.data import BOS_ID, EOS_ID, PAD_ID
from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import SequenceVAE
from pyrocollapse.program_data import ProgramArgs
from pyrocollapse.train import History, TrainState, _train_step, collect_params, fit, make_optimizer

#: Ratio targets: the fit step to the hand-written step; an aggressive epoch's time per
#: step to a plain epoch's.
STEP_TARGET, AGGRESSIVE_TARGET = 1.3, 1.3


@dataclass(frozen=True)
class Size:
    """Model and data sizes of one step benchmark."""

    name: str
    vocab: int
    max_len: int
    latent: int
    embed: int
    hidden: int
    batch: int


#: Tutorial 6's model (``embed=32, hidden=64``, 24 tokens of up to 12), where Pyro's
#: fixed cost per step weighs most, and the SequenceVAE's defaults on longer rows.
SIZES = (
    Size("tutorial 6", 24, 12, 4, 32, 64, 32),
    Size("defaults", 100, 24, 16, 64, 128, 64),
)


@dataclass
class Entry:
    """One timed row: its label, its step function and whether it has a target."""

    label: str
    step: Callable[[], Any]
    target: float | None = None
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


class TorchSequenceVAE(nn.Module):
    """The hand-written reference: the ``SequenceVAE``'s modules, its computation, no Pyro."""

    def __init__(self, vae: SequenceVAE) -> None:
        super().__init__()
        for name in (
            "encoder_embedding",
            "encoder_rnn",
            "encoder_head",
            "decoder_embedding",
            "decoder_rnn",
            "latent_to_hidden",
            "output",
        ):
            setattr(self, name, copy.deepcopy(getattr(vae, name)))
        self.min_scale = vae.min_scale
        self.register_buffer("never", torch.tensor([PAD_ID, BOS_ID]))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        is_eos = (x == EOS_ID).long()
        valid = (is_eos.cumsum(1) - is_eos) == 0
        lengths = valid.sum(1)
        packed = pack_padded_sequence(
            self.encoder_embedding(x), lengths, batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.encoder_rnn(packed)
        loc, raw = self.encoder_head(h[-1]).chunk(2, -1)
        scale = nn.functional.softplus(raw) + self.min_scale
        z = loc + scale * torch.randn_like(loc)
        inputs = x[:, :-1]
        emb = torch.cat(
            [self.decoder_embedding(inputs), z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], -1
        )
        h0 = torch.tanh(self.latent_to_hidden(z)).unsqueeze(0)
        out, _ = self.decoder_rnn(emb, (h0, torch.zeros_like(h0)))
        logits = self.output(out).index_fill(-1, self.never, float("-inf"))
        scored = valid[:, 1:]
        targets = x[:, 1:].masked_fill(~scored, PAD_ID)
        nll = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        )
        rec = nll.masked_fill(~scored.reshape(-1), 0.0).sum()
        kl = 0.5 * (scale**2 + loc**2 - 1).sum() - scale.log().sum()
        return rec + kl


def make_vae(size: Size, word_dropout: float = 0.0) -> SequenceVAE:
    pyro.set_rng_seed(0)
    return SequenceVAE(
        size.vocab,
        size.latent,
        embed=size.embed,
        hidden=size.hidden,
        word_dropout=word_dropout,
        max_len=size.max_len,
    )


def make_data(size: Size, n: int) -> torch.Tensor:
    return load_dataset(
        "sequences", n=n, vocab_size=size.vocab, max_len=size.max_len, n_topics=4, seed=0
    ).data


def torch_step(vae: SequenceVAE, x: torch.Tensor) -> Callable[[], None]:
    ref = TorchSequenceVAE(vae)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        ref.loss(x).backward()
        opt.step()

    return step


def fit_step(vae: SequenceVAE, x: torch.Tensor) -> Callable[[], None]:
    """``fit``'s own step (``_train_step``) on a ``TrainState`` built as ``fit`` builds it."""
    guide_params, model_params = collect_params(vae.model, vae.guide, x)
    optimizer = make_optimizer(None, guide_params + model_params)
    state = TrainState(
        vae.model,
        vae.guide,
        PlainELBO(),
        optimizer,
        History(),
        epochs=1,
        guide_params=guide_params,
        model_params=model_params,
    )
    state.epoch = 1
    batch = ProgramArgs((x,), {}, int(x.shape[0]))
    return lambda: _train_step(state, batch, None)


def svi_step(vae: SequenceVAE, x: torch.Tensor) -> Callable[[], None]:
    svi = pyro.infer.SVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO()
    )
    return lambda: svi.step(x)


def bench_steps(size: Size, rounds: int, steps: int) -> list[Entry]:
    pyro.enable_validation(False)
    pyro.clear_param_store()
    x = make_data(size, size.batch)
    reference = make_vae(size)
    entries = [
        Entry("hand-written PyTorch LSTM VAE step", torch_step(reference, x)),
        Entry("SequenceVAE, fit step", fit_step(make_vae(size), x), STEP_TARGET),
        Entry("SequenceVAE (word dropout 0.25), fit step", fit_step(make_vae(size, 0.25), x)),
        Entry("SequenceVAE, pyro Trace_ELBO (SVI)", svi_step(make_vae(size), x)),
    ]
    for e in entries:
        for _ in range(5):
            e.step()
    for _ in range(rounds):
        for e in entries:
            for _ in range(steps):
                t0 = time.perf_counter()
                e.step()
                e.times.append(time.perf_counter() - t0)
    hand, hand_best = entries[0].median, entries[0].best
    print(
        f"\n== step, {size.name}: batch {tuple(x.shape)} token ids, vocabulary {size.vocab}, "
        f"LSTM embed {size.embed}, hidden {size.hidden}, latent {size.latent} =="
    )
    print(f"{'step':44s} {'median':>7s} {'x hand':>7s} {'best':>7s} {'x hand':>7s}  target")
    print(f"{'':44s} {'ms':>7s} {'':>7s} {'ms':>7s}")
    for e in entries:
        verdict = ""
        if e.target is not None:
            ok = e.median / hand <= e.target
            verdict = f"<= {e.target}x: " + ("met" if ok else "MISSED")
        print(
            f"{e.label:44s} {1e3 * e.median:7.2f} {e.median / hand:7.2f} {1e3 * e.best:7.2f} "
            f"{e.best / hand_best:7.2f}  {verdict}"
        )
    print(f"(medians of {rounds} x {steps} steps per entry, interleaved)")
    return entries


def bench_aggressive(size: Size, n: int, epochs: int, max_inner: int, window: int) -> None:
    """Per-epoch cost of aggressive mode against plain epochs on the same model and data."""
    pyro.enable_validation(False)
    data = make_data(size, n)
    rows = {}
    for aggressive in (False, True):
        pyro.clear_param_store()
        vae = make_vae(size)
        hist = fit(
            vae.model,
            vae.guide,
            data,
            loss=PlainELBO(),
            epochs=epochs,
            batch_size=size.batch,
            seed=0,
            progress=False,
            aggressive=aggressive,
            aggressive_max_inner=max_inner,
            aggressive_window=window,
        )
        rows[aggressive] = hist
    outer = -(-n // size.batch)
    plain = rows[False].column("epoch_time")
    per_step_plain = statistics.median(plain) / outer
    print(
        f"\n== aggressive mode, {size.name}: {n} sequences, batch {size.batch} ({outer} outer steps "
        f"per epoch), aggressive_max_inner={max_inner}, aggressive_window={window} =="
    )
    print(
        f"plain epochs: median {1e3 * statistics.median(plain):.0f} ms "
        f"({1e3 * per_step_plain:.2f} ms per step)"
    )
    print(
        f"{'epoch':>5s} {'aggressive':>10s} {'inner/outer':>11s} {'epoch':>8s} {'bound':>8s} "
        f"{'per step':>8s} {'x plain':>7s}  target"
    )
    print(f"{'':>5s} {'':>10s} {'':>11s} {'ms':>8s} {'ms':>8s} {'ms':>8s}")
    hist = rows[True]
    for record in hist:
        v = record.values
        k = v["inner_steps"]
        steps = outer * (1 + k)
        per_step = v["epoch_time"] / steps
        bound = (1 + max_inner) * per_step_plain * outer
        verdict = ""
        if v["aggressive"]:
            ok = per_step / per_step_plain <= AGGRESSIVE_TARGET
            verdict = f"<= {AGGRESSIVE_TARGET}x: " + ("met" if ok else "MISSED")
        print(
            f"{record.epoch:5d} {'yes' if v['aggressive'] else 'no':>10s} {k:11.1f} "
            f"{1e3 * v['epoch_time']:8.0f} {1e3 * bound:8.0f} {1e3 * per_step:8.2f} "
            f"{per_step / per_step_plain:7.2f}  {verdict}"
        )
    print(
        "(inner/outer: encoder-only steps per outer step, at most aggressive_max_inner; "
        "bound: (1 + aggressive_max_inner) x the plain epoch, what the settings allow; "
        "epoch times exclude the monitor)"
    )


def main() -> None:
    parser = arguments(__doc__, quick="fewer steps and epochs")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per entry and round")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per aggressive run")
    args = parser.parse_args()
    set_threads(parser, args.threads)
    rounds = args.rounds or (3 if args.quick else 5)
    steps = args.steps or (8 if args.quick else 20)
    epochs = args.epochs or (2 if args.quick else 3)
    print(context())
    for size in SIZES[:1] if args.quick else SIZES:
        bench_steps(size, rounds, steps)
    bench_aggressive(
        SIZES[0], 320 if args.quick else 640, epochs, max_inner=20 if args.quick else 50, window=5
    )
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
