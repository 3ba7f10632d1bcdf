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


# --------------------------------------------------------------------------------------
# Disentanglement on the run page, model variants on the comparison page
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def disentangled():
    """A real disentanglement result of a 3-d code against two factors (one named
    ``EVIL``): z[2] follows the discrete factor, z[0] the continuous one, z[1] is noise."""
    import numpy as np

    from pyrocollapse.diagnostics.disentanglement import disentanglement

    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, 4, 300), rng.uniform(0, 1, 300)], 1).astype(float)
    noise = 0.01 * rng.normal(size=(300, 2))
    codes = np.stack(
        [factors[:, 1] + noise[:, 0], rng.normal(size=300), factors[:, 0] + noise[:, 1]], 1
    )
    return disentanglement(
        codes, factors, discrete_factors=[True, False], factor_names=["shape", EVIL],
        regressor="lasso",
    )  # fmt: skip


def _section(page, heading):
    """The HTML between ``<h2>heading</h2>`` and the next ``<h2>``."""
    return page.split(f"<h2>{heading}</h2>")[1].split("<h2>")[0]


def _body_rows(html):
    """The cells of every ``<tbody>`` row of ``html``, one list per table."""
    return [
        [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr[^>]*>(.*?)</tr>", body)]
        for body in re.findall(r"<tbody>(.*?)</tbody>", html, flags=re.S)
    ]


def test_run_page_shows_disentanglement_scores_per_factor_and_heat_maps(
    tmp_path, report, disentangled
):
    config = {**CONFIG, "disentanglement_options": {"regressor": "lasso", "max_points": 300}}
    folder = make_folder(
        tmp_path / "run",
        replace(report, disentanglement={"z": disentangled}),
        metrics={"config": config},
        figures=False,
    )
    page = render_html(folder)
    assert "<script" not in page.lower() and EVIL_ESCAPED in page
    row = '<tr><td class="text">disentanglement options</td><td class="text">'
    assert row + "regressor=lasso, max_points=300</td>" in page
    d = disentangled.to_dict()
    section = _section(page, "Disentanglement")
    assert "<h3>site <code>z</code></h3>" in section
    assert f"factors shape, {EVIL_ESCAPED}; 300 points scored; 3 code dimensions" in section
    scores, per_factor, importance, mig_matrix = _body_rows(section)
    s = d["scores"]
    keys = ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness")
    assert scores == [[*(f"{s[k]:.3f}" for k in keys), f"{s['factorvae_score']:.3f}", "300"]]
    headers = re.findall(r"<th[^>]*>([^<]+)</th>", section.split("</table>")[0])
    assert headers == ["MIG", "SAP", "DCI D", "DCI C", "DCI I", "FactorVAE", "points"]
    # one row per factor: kind, MIG's best dimension, and each metric's part for it
    assert [r[:3] for r in per_factor] == [
        ["shape", "discrete", "z[2]"],
        [EVIL_ESCAPED, "continuous", "z[0]"],
    ]
    for r, name in zip(per_factor, ["shape", EVIL]):
        assert r[3:] == [
            f"{d['mig']['per_factor'][name]:.3f}",
            f"{d['sap']['per_factor'][name]:.3f}",
            f"{d['dci']['per_factor_completeness'][name]:.3f}",
            f"{d['dci']['per_factor_informativeness'][name]:.3f}",
        ]
    # heat maps: a row per code dimension, the largest entry fully shaded
    for table, matrix in ((importance, d["dci"]["importance"]), (mig_matrix, d["mig"]["matrix"])):
        assert [r[0] for r in table] == ["z[0]", "z[1]", "z[2]"]
        assert [r[1:] for r in table] == [[f"{v:.3g}" for v in row] for row in matrix]
    top = max(max(row) for row in d["dci"]["importance"])
    assert f'style="background:rgba(33, 102, 172, 1.00)">{top:.3g}</td>' in section
    assert "1 by construction" not in section


def test_run_page_with_a_single_factor_hides_dci_d_and_factorvae(tmp_path, report):
    import numpy as np

    from pyrocollapse.diagnostics.disentanglement import disentanglement

    rng = np.random.default_rng(1)
    label = rng.integers(0, 3, 200).astype(float)
    codes = np.stack([label + 0.1 * rng.normal(size=200), rng.normal(size=200)], 1)
    result = disentanglement(codes, label[:, None], discrete_factors=[True], factor_names=["label"],
                             regressor="lasso")  # fmt: skip
    folder = make_folder(
        tmp_path / "run", replace(report, disentanglement={"z": result}), figures=False
    )
    section = _section(render_html(folder), "Disentanglement")
    headers = re.findall(r"<th[^>]*>([^<]+)</th>", section.split("</table>")[0])
    assert headers == ["MIG", "SAP", "DCI C", "DCI I", "points"]
    assert "not shown: 1 by construction with a single factor" in section


def test_run_page_says_why_disentanglement_was_not_computed(tmp_path, report, disentangled):
    reason = "the data set has no known factors"
    rep = replace(report, unavailable={**report.unavailable, "disentanglement": reason})
    assert rep.to_dict()["disentanglement"] == {"unavailable": reason}
    page = render_html(make_folder(tmp_path / "run", rep, figures=False))
    section = _section(page, "Disentanglement")
    assert f"<p>disentanglement not computed: {reason}</p>" in section
    assert "<table>" not in section
    # one site scored, another left out: its scores and why the other is missing
    why = f"site {EVIL!r} has 10 posterior means for 20 points"
    rep = replace(
        report,
        disentanglement={"z": disentangled},
        unavailable={**report.unavailable, f"disentanglement of {EVIL!r}": why},
    )
    section = _section(
        render_html(make_folder(tmp_path / "two", rep, figures=False)), "Disentanglement"
    )
    assert "<h3>site <code>z</code></h3>" in section and "<script" not in section.lower()
    assert (
        f"<p>disentanglement of &#39;{EVIL_ESCAPED}&#39; not computed: site &#39;{EVIL_ESCAPED}"
        "&#39; has 10 posterior means for 20 points</p>" in section
    )
    assert "disentanglement not computed" not in section


def test_old_run_folders_without_disentanglement_render_as_before(tmp_path, report):
    d = report.to_dict()
    del d["disentanglement"]
    config = {k: v for k, v in CONFIG.items() if k != "disentanglement_options"}
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"report": d, "config": config}))
    page = render_html(folder)
    assert "Disentanglement" not in page and "disentanglement" not in page
    assert "<h2>Latent sites</h2>" in page and "<h2>Run configuration</h2>" in page
    # a report whose ``disentanglement`` is null (not asked for) renders the same way
    d["disentanglement"] = None
    (folder / "metrics.json").write_text(json.dumps({"report": d, "config": config}))
    assert render_html(folder) == page


def variant_grid_folder(path, *, variant_b="skip"):
    """A grid by hand with one prior and objective and two model variants over three
    seeds, with disentanglement scores (no FactorVAE score): the second variant's MIG is
    higher by 0.2 + 0.02 * (seed - 1) on seed ``seed``."""
    rows = []
    for variant, shift in (("plain", 0.0), (variant_b, 0.2)):
        for seed in range(3):
            run = f"standard__elbo__{variant}__seed{seed}"
            rows.append(
                {
                    "run": run, "prior": "standard", "objective": "elbo", "variant": variant,
                    "seed": seed, "status": "ok", "active_units": 2, "mi": 1.0 + 0.1 * seed,
                    "kl": 3.0, "elbo": -51.0 + seed, "iw_log_likelihood": -50.0 + seed,
                    "wall_time": 2.0, "verdict": "partial collapse", "error": None,
                    "resumed": False, "redone": "", "mig": 0.3 + shift + 0.01 * (seed - 1) * (1 + 10 * shift),
                    "sap": 0.2, "dci_disentanglement": 0.5, "dci_completeness": 0.4,
                    "dci_informativeness": 0.9, "factorvae_score": float("nan"),
                }
            )  # fmt: skip
    runs = pd.DataFrame(rows)
    summary = summarize_runs(runs)
    path.mkdir()
    runs.to_csv(path / "runs.csv", index=False)
    summary.to_csv(path / "comparison.csv", index=False)
    for r in rows:
        if "<" not in r["run"]:
            (path / "runs" / r["run"]).mkdir(parents=True)
            (path / "runs" / r["run"] / "report.html").write_text("<!DOCTYPE html>")
    grid = {"priors": ["standard"], "elbos": ["elbo"], "seeds": [0, 1, 2],
            "variants": ["plain", variant_b], "variant_options": {variant_b: {"skip": True}}}  # fmt: skip
    (path / "grid.json").write_text(json.dumps(grid))
    return path, summary


def test_comparison_page_keeps_model_variants_apart(tmp_path):
    folder, summary = variant_grid_folder(tmp_path / "grid")
    page = render_comparison_html(folder)
    ranked, run_rows = _body_rows(page)
    headers = re.findall(r"<th[^>]*>([^<]+)</th>", page.split("</table>")[0])
    assert headers[:4] == ["rank", "prior", "objective", "variant"]
    assert headers[12:19] == ["MIG", "SAP", "DCI D", "DCI C", "DCI I", "Δ MIG", "paired"]
    assert "FactorVAE" not in headers  # no cell has it
    assert "Not shown, as no cell has them: FactorVAE" in page
    # two cells, one per variant, each linking its own three runs (not six merged)
    assert len(ranked) == 2 and sorted(r[3] for r in ranked) == ["plain", "skip"]
    for r in ranked:
        links = re.findall(r'href="runs/([^/"]+)/report.html"', r[-1])
        assert links == [f"standard__elbo__{r[3]}__seed{k}" for k in range(3)]
        assert r[-2] == "3/0"
    assert "Baseline: <b>standard + elbo + plain</b>" in page
    skip = summary[summary["variant"] == "skip"].iloc[0]
    row = next(r for r in ranked if r[3] == "skip")
    assert row[12] == f"{skip['mig_mean']:.2f} ± {skip['mig_std']:.2f}"
    diff = f"{skip['mig_diff']:+.2f} [{skip['mig_diff_lo']:+.2f}, {skip['mig_diff_hi']:+.2f}]"
    assert skip["mig_diff_lo"] > 0 and row[17] == diff and '<td class="sig">' + diff in page
    assert next(r for r in ranked if r[3] == "plain")[17] == "baseline"
    # the runs table: a variant column and each run's MIG
    assert len(run_rows) == 6 and [r[3] for r in run_rows] == ["plain"] * 3 + ["skip"] * 3
    assert "Model variants: plain, skip (skip=yes)." in page


def test_comparison_page_escapes_variant_names(tmp_path):
    folder, _ = variant_grid_folder(tmp_path / "grid", variant_b=EVIL)
    page = render_comparison_html(folder)
    assert "<script" not in page.lower() and EVIL_ESCAPED in page


def test_old_comparison_folders_have_no_variant_or_disentanglement_columns(tmp_path):
    folder, _ = grid_folder(tmp_path / "grid")
    page = render_comparison_html(folder)
    headers = re.findall(r"<th[^>]*>([^<]+)</th>", page.split("</table>")[0])
    assert "variant" not in headers and "MIG" not in headers and "Δ MIG" not in headers
    assert "Model variants" not in page and "Not shown" not in page


def test_plot_comparison_labels_each_variant():
    import numpy as np

    from pyrocollapse.plots import plot_comparison

    rows = []
    for variant in ("plain", "skip"):
        for seed in range(2):
            rows.append({"run": f"r{variant}{seed}", "prior": "standard", "objective": "elbo",
                         "variant": variant, "seed": seed, "status": "ok", "active_units": 2,
                         "mi": 1.0, "kl": 3.0, "elbo": -51.0 + seed,
                         "iw_log_likelihood": -50.0 + seed + (variant == "skip"),
                         "wall_time": 1.0})  # fmt: skip
    summary = summarize_runs(pd.DataFrame(rows))
    fig = plot_comparison(summary)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert sorted(labels) == ["standard + elbo + plain (baseline)", "standard + elbo + skip"]
    assert np.isfinite(summary["iw_log_likelihood_mean"]).all()
    # without variants the labels are as before
    plain = summarize_runs(pd.DataFrame(rows).drop(columns="variant").iloc[:2])
    assert plot_comparison(plain).axes[0].get_legend_handles_labels()[1] == [
        "standard + elbo (baseline)"
    ]
