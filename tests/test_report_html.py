"""report.html and comparison.html: Jinja2 templates, escaping, embedded figures."""

import json
import re
from dataclasses import replace

import pandas as pd
import pytest
import torch
from linear_gaussian import LinearGaussian

from pyrocollapse import diagnose
from pyrocollapse.comparison import summarize_runs
from pyrocollapse.diagnostics.causes import Cause, CauseAnalysis, Remedy
from pyrocollapse.experiment import RunConfig
from pyrocollapse.report_folder import (
    _causes_section,
    history_figures,
    render_comparison_html,
    render_html,
    report_figures,
    rerender,
    write_comparison_html,
    write_figures,
    write_html,
)
from pyrocollapse.testing import tiny_config
from pyrocollapse.train import EpochRecord, History

EVIL = "<script>alert(1)</script>"
EVIL_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def report():
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, 0.2], [0.0, 0.0, 0.0]])
    sigma = torch.tensor([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 2.0]])
    lg = LinearGaussian(A, torch.tensor([0.5, 0.8, 1.0]), sigma)
    return diagnose(
        lg.model,
        lg.guide,
        lg.sample_data(150),
        estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw", "psis"),
        importance_samples=60,
        bootstrap=20,
    )


def analysis(text=""):
    """A hand-made cause analysis; ``text`` goes into every free-text field."""
    return CauseAnalysis(
        ["z"],
        [
            Cause(
                "prior mismatch",
                0.81,
                {"marginal_kl/z": 0.4, "posterior_mean_lag/z": [0.25, 0.42], "kl_fell/z": None},
                f"the marginal KL is 0.40 nats{text}",
            ),
            Cause("decoder capacity", float("nan"), {}, "not measured"),
        ],
        [
            Remedy(
                "prior mismatch",
                f"a mixture prior{text}",
                "--prior mixture --prior-option n_components=2",
                "MixturePrior(latent_dim, n_components=2)",
                {"prior": "mixture", "prior_options": {"n_components": 2}},
            )
        ],
        {f"context gain{text}": "the model has no inputs"},
        ("standard", "elbo"),
    )


CONFIG = RunConfig(
    dataset="digits",
    dataset_options={"binarize": True},
    model="mlp",
    latent_dim=3,
    model_options={"hidden": (32, 16)},
    prior="mixture",
    prior_options={"n_components": 7},
    elbo="annealed",
    elbo_options={"num_particles": 2},
    schedule="cyclical",
    schedule_options={"n_cycles": 4},
    epochs=17,
    batch_size=96,
    lr=0.00123,
    seed=41,
    estimators=("kl", "au", "mi"),
).to_dict()


def make_folder(path, report, *, metrics=None, figures=True):
    path.mkdir()
    metrics = {
        "report": report.to_dict(),
        "dataset": {"name": "digits", "kind": "unit_interval", "n": 1797},
        "config": CONFIG,
        "train_seconds": 3.5,
        **(metrics or {}),
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    if figures:
        hist = History()
        for epoch in (1, 2):
            values = {"elbo": -5.0 + epoch, "reconstruction": -4.0, "kl": 1.0, "kl_weight": 1.0}
            hist.append(EpochRecord(epoch, values, {"z": torch.tensor([0.5, 0.2, 0.0]).numpy()}))
        hist.to_csv(str(path / "history.csv"))
        figs = report_figures(report)
        figs.update(history_figures(hist, list(report.sites)))
        write_figures(path, figs)
    return path


def test_page_shows_the_run_configuration(tmp_path, report):
    page = render_html(make_folder(tmp_path / "run", report))
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<h2>Run configuration</h2>" in page
    for label, value in (
        ("epochs", "17"),
        ("learning rate", "0.00123"),
        ("KL schedule", "cyclical"),
        ("KL schedule options", "n_cycles=4"),
        ("batch size", "96"),
        ("prior", "mixture"),
        ("prior options", "n_components=7"),
        ("objective", "annealed"),
        ("objective options", "num_particles=2"),
        ("model options", "hidden=[32, 16]"),
        ("seed", "41"),
        ("dataset", "digits"),
        ("dataset options", "binarize=yes"),
        ("estimators", "kl, au, mi"),
    ):
        row = f'<tr><td class="text">{label}</td><td class="text">{value}</td>'
        assert row in page, row
    assert "1797 observations" in page  # the data set as loaded
    assert f'class="verdict partial">{report.verdict}</span>' in page
    assert "trained in 3.5 s" in page


def test_schedule_left_to_the_objective_names_the_one_it_used(tmp_path, report):
    config = {**CONFIG, "schedule": None, "schedule_options": {}}
    objective = {"class": "AnnealedELBO", "kl_weight": {"name": "linear", "warmup_steps": 9}}
    folder = make_folder(
        tmp_path / "run", report, metrics={"config": config, "objective": objective}, figures=False
    )
    page = render_html(folder)
    assert "none (the objective&#39;s own: linear (warmup_steps=9))" in page
    assert "AnnealedELBO: kl_weight=linear (warmup_steps=9)" in page


def test_every_column_of_the_site_table_has_a_caption(tmp_path, report):
    page = render_html(make_folder(tmp_path / "run", report, figures=False))
    headers = re.findall(r"<th[^>]*>([^<]+)</th>", page.split("<h2>Latent sites</h2>")[1])
    table = headers[: headers.index("sens") + 1]
    assert table == [
        "status",
        "dim",
        "KL",
        "frac. KL&lt;0.01",
        "AU variance",
        "AU interval",
        "P(active)",
        "MI",
        "MI s.e.",
        "R-hat",
        "sens",
    ]
    captions = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", page))
    assert set(table) <= set(captions)
    assert captions["sens"].startswith(
        "decoder sensitivity: the Fisher information of the likelihood in z_d, nats per squared"
    )
    assert captions["R-hat"].startswith("datapoints-as-chains R-hat")
    assert "~1 when q(z_d|x) ignores x" in captions["R-hat"]
    assert captions["AU interval"].startswith("bootstrap 95% interval of the AU variance")
    assert "Monte Carlo standard error" in captions["MI s.e."]
    assert captions["status"].startswith("status per the stated rule")
    assert "<b>Rule.</b> status from the information" in page
    # every dimension is one row with its status as the row's class
    assert page.count('<tr class="active">') + page.count('<tr class="collapsed">') == 3


def test_columns_not_computed_are_left_out_and_named(tmp_path, report):
    d = report.to_dict()
    for key in ("rhat", "sensitivity"):
        d["sites"]["z"][key] = None
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"report": d}))
    page = render_html(folder)
    assert "<th" in page and ">R-hat</th>" not in page and ">sens</th>" not in page
    assert "Not computed in this run" in page and "R-hat, sens." in page
    assert "No run configuration in" in page


def test_causes_and_next_steps_are_shown_when_present(tmp_path, report):
    folder = make_folder(tmp_path / "run", replace(report, causes=analysis()), figures=False)
    page = render_html(folder)
    assert "<h2>Why it collapsed</h2>" in page and "<h2>What to try next</h2>" in page
    assert "<td>0.81</td>" in page and "<td>n/a</td>" in page  # the evidence scores
    assert "the marginal KL is 0.40 nats" in page  # the evidence in words ...
    assert "marginal_kl/z = 0.4; posterior_mean_lag/z = [0.25, 0.42]" in page  # ... and numbers
    assert "pyrocollapse run --prior mixture --prior-option n_components=2" in page
    assert "MixturePrior(latent_dim, n_components=2)" in page
    assert "pyrocollapse compare --from-run RUN_FOLDER</code> (priors standard, mixture" in page
    assert "context gain not measured: the model has no inputs" in page
    # the section alone, as before
    assert _causes_section(analysis()) in page
    assert _causes_section(None) == ""
    # a report without causes has no such section
    plain = render_html(make_folder(tmp_path / "plain", report, figures=False))
    assert "Why it collapsed" not in plain


def test_all_text_from_the_run_is_escaped(tmp_path, report):
    d = replace(report, causes=analysis(EVIL), skipped={EVIL: "a note " + EVIL}).to_dict()
    d["sites"] = {EVIL: {**d["sites"]["z"], "site": EVIL}}
    config = {**CONFIG, "dataset": EVIL, "model_options": {"hidden": EVIL}, EVIL: EVIL}
    folder = tmp_path / "evil"
    folder.mkdir()
    metrics = {"report": d, "dataset": {"name": EVIL, "kind": EVIL}, "config": config}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    page = render_html(folder)
    assert "<script" not in page.lower()
    assert page.count(EVIL_ESCAPED) >= 10
    assert f"site &#39;{EVIL_ESCAPED}&#39; not diagnosed: a note {EVIL_ESCAPED}" in page  # a note


def test_self_contained_page_embeds_every_figure(tmp_path, report):
    folder = make_folder(tmp_path / "run", report)
    linked = write_html(folder).read_text()
    assert "data:image/png;base64," not in linked
    n = len(list((folder / "figures").glob("*.png")))
    assert linked.count('<img src="figures/') == n > 0
    path = write_html(folder, self_contained=True)
    assert path == folder / "report.html"
    page = path.read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == n
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert 'src="figures/' not in page and "figures/" not in "".join(sources)
    import base64

    first = base64.b64decode(sources[0].split(",", 1)[1])
    assert first.startswith(b"\x89PNG")
    # rerender can write it too; nothing temporary is left behind
    page_path, rebuilt = rerender(folder, figures=False, self_contained=True)
    assert rebuilt == [] and page_path.read_text().count("data:image/png;base64,") == n
    assert not list(folder.rglob(".*.tmp"))
    with pytest.raises(TypeError, match="self_contained must be a bool"):
        write_html(folder, self_contained="yes")


# --------------------------------------------------------------------------------------
# The comparison page
# --------------------------------------------------------------------------------------
def grid_folder(path, *, prior_b="mixture"):
    """A grid folder by hand: three cells x three seeds; the mixture cell beats the others
    on every seed, the two others are tied; one run failed."""
    rows = []
    ll = {
        "standard": [-50.0, -51.0, -49.0],
        prior_b: [-45.0, -45.5, -44.2],
        "vamp": [-50.1, -50.8, -49.3],
    }
    for prior, values in ll.items():
        for seed, v in enumerate(values):
            run = f"{prior}__elbo__seed{seed}"
            failed = prior == "vamp" and seed == 2
            rows.append(
                {
                    "run": run,
                    "prior": prior,
                    "objective": "elbo",
                    "seed": seed,
                    "status": "failed" if failed else "ok",
                    "active_units": None if failed else 2 + (prior == prior_b),
                    "mi": None if failed else 1.0 + 0.1 * seed,
                    "kl": None if failed else 3.0,
                    "elbo": None if failed else v - 1.0,
                    "iw_log_likelihood": None if failed else v,
                    "wall_time": None if failed else 2.0,
                    "verdict": None if failed else "partial collapse",
                    "error": "FloatingPointError: loss is nan" if failed else None,
                    "resumed": False,
                    "redone": "",
                }
            )
    runs = pd.DataFrame(rows)
    summary = summarize_runs(runs)
    path.mkdir()
    runs.to_csv(path / "runs.csv", index=False)
    summary.to_csv(path / "comparison.csv", index=False)
    for r in rows:
        if r["status"] == "ok" and "<" not in r["run"]:
            (path / "runs" / r["run"]).mkdir(parents=True)
            (path / "runs" / r["run"] / "report.html").write_text("<!DOCTYPE html>")
    (path / "runs" / "vamp__elbo__seed2.error.json").write_text("{}")
    return path, summary


def test_comparison_page_shows_ranks_ties_and_paired_differences(tmp_path):
    folder, summary = grid_folder(tmp_path / "grid")
    page = render_comparison_html(folder)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "Ranked by held-out importance-weighted log-likelihood" in page
    assert "Baseline: <b>standard + elbo</b>" in page
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", page.split("<tbody>")[1].split("</tbody>")[0])
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    assert [c[0] for c in cells] == ["1", "=2", "=2"]  # mixture wins; the others are tied
    assert [c[1] for c in cells] == ["mixture", "standard", "vamp"]
    best = summary.iloc[0]
    diff = (
        f"{best['iw_log_likelihood_diff']:+.2f} [{best['iw_log_likelihood_diff_lo']:+.2f}, "
        f"{best['iw_log_likelihood_diff_hi']:+.2f}]"
    )
    assert cells[0][8] == diff and '<td class="sig">' + diff in page  # interval above 0
    assert cells[1][8] == "baseline"
    assert '<tr class="baseline">' in page
    # the failed run: counted, its error shown and linked, not linked as a report
    assert cells[2][13] == "2/1"
    assert "vamp + elbo: first error: FloatingPointError: loss is nan" in page
    assert '<a href="runs/vamp__elbo__seed2.error.json">seed 2 (failed)</a>' in page
    # a link to each finished run's report
    for seed in range(3):
        assert f'<a href="runs/mixture__elbo__seed{seed}/report.html">seed {seed}</a>' in page
    assert len(re.findall(r'href="runs/[^"]+/report.html"', page)) == 2 * 8  # table + runs list
    assert "from <code>grid.json</code>" not in page  # there is none here


def test_comparison_page_embeds_the_figure_and_escapes_names(tmp_path):
    from pyrocollapse.plots import plot_comparison, save_figure

    folder, summary = grid_folder(tmp_path / "grid", prior_b=EVIL)
    (folder / "figures").mkdir()
    save_figure(plot_comparison(summary), str(folder / "figures" / "au_vs_nll.png"))
    page = render_comparison_html(folder)
    assert "<script" not in page.lower() and EVIL_ESCAPED in page
    assert '<img src="figures/au_vs_nll.png"' in page
    path = write_comparison_html(folder, self_contained=True)
    assert path == folder / "comparison.html"
    embedded = path.read_text()
    assert re.findall(r'<img src="([^"]{22})', embedded) == ["data:image/png;base64,"]
    assert 'src="figures/' not in embedded
    assert not list(folder.glob(".*.tmp"))


def test_comparison_page_of_a_folder_that_is_not_a_grid(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        render_comparison_html(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a pyrocollapse compare folder"):
        write_comparison_html(tmp_path / "empty")
    (tmp_path / "empty" / "comparison.csv").write_text("prior,objective\na,b\n")
    with pytest.raises(ValueError, match="lacks the column"):
        render_comparison_html(tmp_path / "empty")
    assert not (tmp_path / "empty" / "comparison.html").exists()


def test_compare_writes_the_comparison_page(tmp_path):
    from pyrocollapse.comparison import compare

    base = tiny_config()
    out = tmp_path / "grid"
    compare(priors=["standard"], elbos=["elbo"], seeds=1, out=out, base=base, progress=False)
    page = (out / "comparison.html").read_text()
    assert '<a href="runs/standard__elbo__seed0/report.html">seed 0</a>' in page
    assert (out / "runs" / "standard__elbo__seed0" / "report.html").is_file()
    assert '<img src="figures/au_vs_nll.png"' in page
    assert "Priors: standard. Objectives: elbo. Seeds: 0." in page
    assert '<td class="text">learning rate</td><td class="text">0.002</td>' in page
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
