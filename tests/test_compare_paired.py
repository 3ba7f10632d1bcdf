"""The comparison's paired differences against a baseline, its ranking with ties, and
its figure: fixed tables built by hand, no training."""

import io
import math

import numpy as np
import pandas as pd
import pytest

from pyrocollapse.comparison import (
    PAIRED_METRICS,
    RANKING,
    compare,
    format_summary,
    summarize_runs,
)
from pyrocollapse.experiment import RunConfig

#: t quantile at 0.975 with 2 degrees of freedom (three paired seeds), from a t table.
T_975_2 = 4.302652729911275
#: A shared seed effect: every cell's held-out log-likelihood moves with the split.
SEED_EFFECT = [0.0, 3.0, -2.5]
BASE_LL = [-100.0 + e for e in SEED_EFFECT]


def _table(cells, seeds=(0, 1, 2), failed=()):
    """A runs table like ``_run_grid``'s: ``cells`` maps (prior, objective) to per-seed
    ``iw_log_likelihood`` and ``mi`` lists; ``failed`` names (prior, objective, seed)."""
    rows = []
    for (prior, objective), values in cells.items():
        for i, seed in enumerate(seeds):
            rid = f"{prior}__{objective}__seed{seed}"
            if (prior, objective, seed) in failed:
                rows.append(
                    {"run": rid, "prior": prior, "objective": objective, "seed": seed,
                     "status": "failed", "error": "FloatingPointError: loss is nan",
                     "resumed": False, "redone": ""}
                )  # fmt: skip
                continue
            ll = values["ll"][i]
            mi = values.get("mi", [1.0] * len(seeds))[i]
            rows.append(
                {
                    "run": rid,
                    "prior": prior,
                    "objective": objective,
                    "seed": seed,
                    "active_units": values.get("au", [2] * len(seeds))[i],
                    "mi": mi,
                    "kl": 3.0 + 0.1 * i,
                    "elbo": ll - 1.0,
                    "iw_log_likelihood": ll,
                    "wall_time": 1.5,
                    "verdict": "healthy",
                    "status": "ok",
                    "resumed": False,
                    "redone": "",
                }
            )
    return pd.DataFrame(rows)


def _row(summary, prior, objective):
    return summary[(summary.prior == prior) & (summary.objective == objective)].iloc[0]


def _table_lines(text):
    """The printed table's header and rows: ``{objective: line}`` for the ``standard``
    prior's rows and ``{"prior:objective": line}`` for the others."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rank "))
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("note:"):
            break
        if "first error" in line:
            continue
        prior, objective = line.split()[1:3]
        rows[objective if prior == "standard" else f"{prior}:{objective}"] = line
    return lines[start], rows


def test_paired_differences_are_the_mean_and_t_interval_of_per_seed_differences():
    per_seed = [0.40, 0.30, 0.53]
    mi_diff = [0.2, 0.25, 0.15]
    table = _table(
        {
            ("standard", "elbo"): {"ll": BASE_LL, "mi": [1.0, 1.1, 0.9]},
            ("standard", "freebits"): {
                "ll": [b + d for b, d in zip(BASE_LL, per_seed)],
                "mi": [m + d for m, d in zip([1.0, 1.1, 0.9], mi_diff)],
            },
        }
    )
    summary = summarize_runs(table)
    row = _row(summary, "standard", "freebits")
    mean = sum(per_seed) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in per_seed) / 2)
    half = T_975_2 * sd / math.sqrt(3)
    assert row["iw_log_likelihood_diff"] == pytest.approx(0.41)
    assert row["iw_log_likelihood_diff_lo"] == pytest.approx(mean - half)
    assert row["iw_log_likelihood_diff_hi"] == pytest.approx(mean + half)
    assert (mean - half, mean + half) == pytest.approx((0.1235, 0.6965), abs=1e-4)
    mi_sd = math.sqrt(sum((d - 0.2) ** 2 for d in mi_diff) / 2)
    assert row["mi_diff"] == pytest.approx(0.2)
    assert row["mi_diff_hi"] - row["mi_diff"] == pytest.approx(T_975_2 * mi_sd / math.sqrt(3))
    assert row["elbo_diff"] == pytest.approx(0.41)  # elbo = ll - 1 in every run
    assert row["active_units_diff"] == 0 and row["n_paired"] == 3
    assert not row["baseline"]
    base = _row(summary, "standard", "elbo")
    assert base["baseline"] and base["iw_log_likelihood_diff"] == 0.0
    # every existing column is kept, and every paired metric has its three columns
    for col in ("n_ok", "n_failed", "error", "iw_log_likelihood_mean", "wall_time_std"):
        assert col in summary
    for m in PAIRED_METRICS:
        assert {f"{m}_diff", f"{m}_diff_lo", f"{m}_diff_hi"} <= set(summary.columns)
    text = format_summary(summary)
    header, rows = _table_lines(text)
    assert "Δ IW log p(x)" in header and "Δ MI" in header
    assert "+0.41 [+0.12, +0.70]" in rows["freebits"]
    assert "+0.20 [" in rows["freebits"]
    assert rows["elbo"].count("baseline") == 2  # the baseline row is marked
    assert "baseline: standard + elbo" in text


def test_split_to_split_variation_cancels_in_the_paired_difference():
    # a large seed (split) effect shared by both cells: the spread over seeds is large,
    # the paired difference is tight and excludes 0
    table = _table(
        {
            ("standard", "elbo"): {"ll": BASE_LL},
            ("standard", "annealed"): {"ll": [b + d for b, d in zip(BASE_LL, [0.1, 0.12, 0.11])]},
        }
    )
    summary = summarize_runs(table)
    row = _row(summary, "standard", "annealed")
    assert row["iw_log_likelihood_std"] > 2.5  # unpaired: the seed effect dominates
    lo, hi = row["iw_log_likelihood_diff_lo"], row["iw_log_likelihood_diff_hi"]
    assert 0 < lo < row["iw_log_likelihood_diff"] < hi and hi - lo < 0.1
    # ... so annealed beats the baseline, which an unpaired comparison could not tell
    assert summary[["objective", "rank", "tied"]].values.tolist() == [
        ["annealed", 1, False],
        ["elbo", 2, False],
    ]


def test_cells_0008_nats_apart_are_tied_and_a_clearly_worse_cell_ranks_third():
    table = _table(
        {
            ("standard", "elbo"): {"ll": BASE_LL},
            ("standard", "annealed"): {
                "ll": [b + d for b, d in zip(BASE_LL, [0.02, -0.015, 0.019])]
            },
            ("standard", "beta"): {"ll": [b + d for b, d in zip(BASE_LL, [-1.0, -1.1, -0.9])]},
        }
    )
    summary = summarize_runs(table)
    annealed = _row(summary, "standard", "annealed")
    assert annealed["iw_log_likelihood_diff"] == pytest.approx(0.008)
    assert annealed["iw_log_likelihood_diff_lo"] < 0 < annealed["iw_log_likelihood_diff_hi"]
    assert summary["objective"].tolist() == ["annealed", "elbo", "beta"]  # by mean within a rank
    assert summary["rank"].tolist() == [1, 1, 3]
    assert summary["tied"].tolist() == [True, True, False]
    assert str(summary["rank"].dtype) == "Int64"
    text = format_summary(summary)
    assert text.startswith("ranked by held-out importance-weighted log-likelihood")
    _, rows = _table_lines(text)
    assert [rows[o].split()[0] for o in ("annealed", "elbo", "beta")] == ["=1", "=1", "3"]
    assert "note: one seed" not in text
    # the CSV round trip (comparison.csv) prints the same table
    again = pd.read_csv(io.StringIO(summary.to_csv(index=False)))
    assert format_summary(again) == text


def test_rank_counts_the_cells_that_beat_a_cell_pairwise_not_only_the_baseline():
    # the baseline is noisy against both others, so neither differs from it; but C beats
    # B on every seed by a steady margin
    b = [x + d for x, d in zip(BASE_LL, [1.0, -1.0, 0.5])]
    c = [x + d for x, d in zip(b, [0.3, 0.32, 0.29])]
    table = _table(
        {
            ("standard", "elbo"): {"ll": BASE_LL},
            ("standard", "beta"): {"ll": b},
            ("standard", "mi"): {"ll": c},
        }
    )
    summary = summarize_runs(table)
    for name in ("beta", "mi"):
        row = _row(summary, "standard", name)
        assert row["iw_log_likelihood_diff_lo"] < 0 < row["iw_log_likelihood_diff_hi"]
    ranks = dict(zip(summary["objective"], summary["rank"]))
    assert ranks == {"mi": 1, "elbo": 1, "beta": 2}
    assert dict(zip(summary["objective"], summary["tied"])) == {
        "mi": True,
        "elbo": True,
        "beta": False,
    }


def test_one_seed_prints_every_cell_tied_with_a_note():
    table = _table(
        {
            ("standard", "elbo"): {"ll": [-100.0]},
            ("standard", "annealed"): {"ll": [-99.0]},
            ("mixture", "elbo"): {"ll": [-120.0]},
        },
        seeds=(0,),
    )
    summary = summarize_runs(table)
    assert summary["rank"].tolist() == [1, 1, 1] and summary["tied"].all()
    row = _row(summary, "standard", "annealed")
    assert row["iw_log_likelihood_diff"] == pytest.approx(1.0) and row["n_paired"] == 1
    assert np.isnan(row["iw_log_likelihood_diff_lo"]) and np.isnan(row["iw_log_likelihood_diff_hi"])
    text = format_summary(summary)
    _, rows = _table_lines(text)
    assert all(line.split()[0] == "=1" for line in rows.values()) and len(rows) == 3
    assert "+1.00 (1 seed)" in rows["annealed"]
    assert "one seed gives no interval" in text and "--seeds 3 or more" in text


def test_failed_runs_are_left_out_of_the_pairs_and_an_all_failed_cell_is_unranked():
    table = _table(
        {
            ("standard", "elbo"): {"ll": BASE_LL},
            ("standard", "annealed"): {"ll": [x + 0.5 for x in BASE_LL]},
            ("standard", "beta"): {"ll": BASE_LL},
        },
        failed={("standard", "annealed", 1), *(("standard", "beta", s) for s in range(3))},
    )
    summary = summarize_runs(table)
    annealed = _row(summary, "standard", "annealed")
    assert annealed["n_ok"] == 2 and annealed["n_failed"] == 1 and annealed["n_paired"] == 2
    assert annealed["iw_log_likelihood_diff"] == pytest.approx(0.5)
    beta = _row(summary, "standard", "beta")
    assert pd.isna(beta["rank"]) and not beta["tied"] and beta["n_paired"] == 0
    assert np.isnan(beta["iw_log_likelihood_diff"])
    assert summary["objective"].iloc[-1] == "beta"  # unranked cells last
    text = format_summary(summary)
    _, rows = _table_lines(text)
    assert rows["beta"].split()[0] == "-" and "n/a" in rows["beta"]
    assert "first error: FloatingPointError: loss is nan" in text


def test_baseline_default_choice_and_bad_values():
    cells = {
        ("standard", "elbo"): {"ll": BASE_LL},
        ("standard", "annealed"): {"ll": [x + 0.5 for x in BASE_LL]},
        ("mixture", "elbo"): {"ll": [x + 1.0 for x in BASE_LL]},
    }
    table = _table(cells)
    summary = summarize_runs(table)  # default: the first cell (first prior, first objective)
    assert _row(summary, "standard", "elbo")["baseline"] and summary["baseline"].sum() == 1
    for chosen in ("mixture:elbo", ("mixture", "elbo")):
        s = summarize_runs(table, baseline=chosen)
        assert _row(s, "mixture", "elbo")["baseline"]
        assert _row(s, "standard", "elbo")["iw_log_likelihood_diff"] == pytest.approx(-1.0)
        assert "baseline: mixture + elbo" in format_summary(s)
    accepted = "standard:elbo, standard:annealed, mixture:elbo"
    for bad in ("mixture:annealed", "standard", "vamp:elbo"):
        with pytest.raises(ValueError, match=f"not a cell of this grid.*{accepted}"):
            summarize_runs(table, baseline=bad)
    with pytest.raises(TypeError, match="baseline must be 'PRIOR:OBJECTIVE'"):
        summarize_runs(table, baseline=3)


def test_compare_refuses_a_bad_baseline_before_any_work(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"baseline 'mixture:elbo' is not a cell of this grid; "
        r"accepted \(PRIOR:OBJECTIVE\): standard:elbo, standard:annealed$",
    ):
        compare(
            priors=["standard"],
            elbos=["elbo", "annealed"],
            seeds=2,
            out=tmp_path / "g",
            base=RunConfig(epochs=1),
            baseline="mixture:elbo",
            progress=False,
        )
    assert not (tmp_path / "g").exists()


def _t_quantile_2df(level: float) -> float:
    """Two-sided ``level`` quantile of Student's t with 2 degrees of freedom, in closed
    form: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so t = a sqrt(2 / (1 - a^2)) at a = level."""
    return level * math.sqrt(2.0 / (1.0 - level**2))


def test_bonferroni_intervals_hold_jointly_over_the_comparisons_with_the_baseline():
    per_seed = [0.40, 0.30, 0.53]
    cells = {("standard", "elbo"): {"ll": BASE_LL}}
    for name, shift in (("annealed", 0.0), ("beta", 1.0), ("mi", 2.0)):
        cells[("standard", name)] = {"ll": [b + d + shift for b, d in zip(BASE_LL, per_seed)]}
    table = _table(cells)
    assert _t_quantile_2df(0.95) == pytest.approx(T_975_2)
    plain = summarize_runs(table)
    adjusted = summarize_runs(table, adjust="bonferroni")
    level = 1 - 0.05 / 3  # three comparisons with the baseline
    assert adjusted["interval_level"].tolist() == pytest.approx([level] * 4)
    assert set(plain["interval_level"]) == {0.95} and set(plain["adjust"]) == {"none"}
    sd = float(np.std(per_seed, ddof=1))
    for name in ("annealed", "beta", "mi"):
        a, p = _row(adjusted, "standard", name), _row(plain, "standard", name)
        assert a["iw_log_likelihood_diff"] == p["iw_log_likelihood_diff"]
        half = a["iw_log_likelihood_diff_hi"] - a["iw_log_likelihood_diff"]
        assert half == pytest.approx(_t_quantile_2df(level) * sd / math.sqrt(3))
        assert p["iw_log_likelihood_diff_hi"] - p["iw_log_likelihood_diff"] == pytest.approx(
            T_975_2 * sd / math.sqrt(3)
        )
    text = " ".join(format_summary(adjusted).split())  # the header wraps at 100 columns
    assert "98.333% t-intervals: Bonferroni, jointly 95% over the 3 comparisons" in text
    assert "each pairwise test at 99.167%, jointly 95% over 6 pairs" in text
    assert "note: each interval" not in text
    plain_text = " ".join(format_summary(plain).split())
    assert "[95% t-interval]" in plain_text
    assert "6 pairwise tests holds at 95% on its own" in plain_text
    with pytest.raises(ValueError, match=r"adjust must be one of .*'none', 'bonferroni'.*'holm'"):
        summarize_runs(table, adjust="holm")


def test_bonferroni_ties_a_win_that_only_holds_test_by_test():
    # mi beats beta on every seed (t = 8.7 with 2 df): above the 95% quantile (4.30), below
    # the Bonferroni one over the 6 pairs of 4 cells (10.9), so the win does not survive
    noisy = [x + d for x, d in zip(BASE_LL, [5.0, -5.0, 0.0])]
    beta = [x + d for x, d in zip(BASE_LL, [0.0, 6.0, -6.0])]
    mi = [x + d for x, d in zip(beta, [1.0, 1.2, 0.8])]
    table = _table(
        {
            ("standard", "elbo"): {"ll": noisy},
            ("standard", "annealed"): {"ll": [x + 30.0 for x in BASE_LL]},
            ("standard", "beta"): {"ll": beta},
            ("standard", "mi"): {"ll": mi},
        }
    )
    assert 4.30 < 1.0 / (0.2 / math.sqrt(3)) < _t_quantile_2df(1 - 0.05 / 6)
    plain = dict(zip(summarize_runs(table)["objective"], summarize_runs(table)["rank"]))
    adjusted = summarize_runs(table, adjust="bonferroni")
    assert plain["beta"] > plain["mi"]
    ranks = dict(zip(adjusted["objective"], adjusted["rank"]))
    assert ranks["beta"] == ranks["mi"]
    assert adjusted["rank_level"].tolist() == pytest.approx([1 - 0.05 / 6] * 4)


def test_compare_refuses_an_unknown_adjustment_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"^adjust must be one of .*'none', 'bonferroni'"):
        compare(
            priors=["standard"],
            elbos=["elbo"],
            seeds=2,
            out=tmp_path / "g",
            base=RunConfig(epochs=1),
            adjust="fdr",
            progress=False,
        )
    assert not (tmp_path / "g").exists()


def test_ranking_text_states_the_rule():
    assert RANKING.startswith("held-out importance-weighted log-likelihood")
    assert "paired" in RANKING and "=k" in RANKING


def test_plot_comparison_draws_active_units_and_mi_against_nll():
    from matplotlib.figure import Figure

    from pyrocollapse import plots

    table = _table(
        {
            ("standard", "elbo"): {"ll": BASE_LL, "mi": [0.1, 0.2, 0.1]},
            ("standard", "freebits"): {"ll": [x + 0.4 for x in BASE_LL], "mi": [2.0, 2.1, 1.9]},
        }
    )
    summary = summarize_runs(table)
    fig = plots.plot_comparison(summary)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    au_ax, mi_ax = fig.axes
    assert "active units" in au_ax.get_ylabel() and "MI" in mi_ax.get_ylabel()
    assert "NLL" in au_ax.get_xlabel() and "NLL" in mi_ax.get_xlabel()
    labels = au_ax.get_legend_handles_labels()[1]
    assert labels == ["standard + freebits", "standard + elbo (baseline)"]
    # the MI panel's points are the cells' mean MI (error bars: std over seeds)
    ys = sorted(float(c.lines[0].get_ydata()[0]) for c in mi_ax.containers)
    assert ys == pytest.approx(sorted([2.0, 0.4 / 3]))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")
    # two given axes are drawn into; one is refused
    fig2 = Figure()
    axes = fig2.subplots(1, 2)
    assert plots.plot_comparison(summary, ax=axes) is fig2
    with pytest.raises(TypeError, match="two matplotlib Axes"):
        plots.plot_comparison(summary, ax=axes[0])
    with pytest.raises(ValueError, match="lacks the column"):
        plots.plot_comparison(summary.drop(columns=["mi_std"]))
