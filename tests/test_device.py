"""Devices: models and priors move with ``.to()``, and every diagnostic takes ``device=``.

Most of this file needs no accelerator. Three CPU checks catch the tensors that a move
to another device would leave behind:

* attributes: every tensor a model or prior holds is a parameter or a buffer (a plain
  tensor attribute would not follow ``.to(device)``);
* dtype: a model moved with ``.to(torch.float64)`` computes in float64 throughout, so a
  tensor that did not follow the move (or one made without the parameters' dtype)
  shows up as a float32 result or a dtype error;
* factories: a torch function mode records every tensor factory (``torch.zeros``,
  ``torch.full``, ``torch.arange`` ...) that pyrocollapse code calls without ``device=``
  while the programs and diagnostics run; on an accelerator each would make a host
  tensor.

The last tests run the same on CUDA when torch finds a GPU, and are skipped otherwise.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from model_cases import CASE_IDS, CASES, INCOMPATIBLE
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.overrides import TorchFunctionMode

import pyrocollapse
import pyrocollapse.models
from pyrocollapse import diagnostics as dg
from pyrocollapse._validation import check_device, module_device
from pyrocollapse.diagnostics import diagnose
from pyrocollapse.models import MLPVAE, LinearVAE
from pyrocollapse.priors import PRIORS, HierarchicalPrior, StandardNormalPrior
from pyrocollapse.summaries import summarize, to_inference_data

CUDA = torch.cuda.is_available()
PAIRS = [
    pytest.param(case, name, id=f"{case.id}-{name}")
    for case in CASES
    for name in PRIORS.names()
    if (case.registry_name, name) not in INCOMPATIBLE
]


def _build(case, prior_name):
    top = list(case.latent_dims.values())[-1] if case.registry_name == "ladder" else 2
    return case.build(PRIORS.get(prior_name).from_options(top, input_shape=case.input_shape))


def _float64(x: torch.Tensor) -> torch.Tensor:
    return x.double() if x.is_floating_point() else x


# -- the factory audit -------------------------------------------------------------------
_ROOTS = tuple(str(Path(m.__file__).resolve().parent) for m in (pyrocollapse, pyrocollapse.models))
_FACTORIES = {
    torch.arange,
    torch.as_tensor,
    torch.empty,
    torch.eye,
    torch.full,
    torch.linspace,
    torch.ones,
    torch.rand,
    torch.randint,
    torch.randn,
    torch.randperm,
    torch.tensor,
    torch.zeros,
}


class DevicelessFactories(TorchFunctionMode):
    """Records ``file:line function`` of factory calls without ``device=`` made by
    pyrocollapse code (``torch.tensor(t)`` of a tensor keeps its device and is fine)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        copies = func in (torch.tensor, torch.as_tensor) and args and torch.is_tensor(args[0])
        if func in _FACTORIES and kwargs.get("device") is None and not copies:
            frame = sys._getframe(1)
            while frame is not None and f"{Path('torch')}/" in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None:
                where = str(Path(frame.f_code.co_filename).resolve())
                if where.startswith(_ROOTS):
                    self.calls.add(f"{where}:{frame.f_lineno} torch.{func.__name__}")
        return func(*args, **kwargs)


# ======================================================================================
# Models and priors
# ======================================================================================
@pytest.mark.parametrize(("case", "prior_name"), PAIRS)
def test_every_tensor_a_model_holds_is_a_parameter_or_a_buffer(case, prior_name):
    vae = _build(case, prior_name)
    # references to registered tensors (e.g. an RNN's _flat_weights) follow the move
    registered = {id(t) for t in (*vae.parameters(), *vae.buffers())}
    loose = []
    for mod_name, module in vae.named_modules():
        for attr, value in vars(module).items():
            if attr in ("_parameters", "_buffers"):
                continue
            items = value if isinstance(value, (list, tuple)) else [value]
            for item in items:
                parts = item if isinstance(item, tuple) else (item,)
                if any(torch.is_tensor(p) and id(p) not in registered for p in parts):
                    loose.append(f"{mod_name or type(vae).__name__}.{attr}")
    assert not loose, f"tensors that .to(device) would leave behind: {loose}"


@pytest.mark.parametrize(("case", "prior_name"), PAIRS)
def test_a_model_moved_to_float64_runs_in_float64_and_makes_no_host_tensors(case, prior_name):
    vae = _build(case, prior_name).to(torch.float64)
    x = _float64(case.data())
    audit = DevicelessFactories()
    with audit:
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        for tr in (model_tr, guide_tr):
            for name, site in tr.nodes.items():
                if site["type"] == "sample" and not site_is_subsample(site):
                    assert site["log_prob"].dtype == torch.float64, name
                    if site["value"].is_floating_point():
                        assert site["value"].dtype == torch.float64, name
        samples = vae.sample(3)
        recon = vae.reconstruct(x)
        z = vae.prior.sample(4)
        lp = vae.prior.log_prob(z)
    assert not audit.calls, sorted(audit.calls)
    assert samples.dtype == x.dtype and recon.dtype == x.dtype
    assert z.dtype == torch.float64 and lp.dtype == torch.float64
    assert vae.device == torch.device("cpu") and vae.prior.device == torch.device("cpu")


@pytest.mark.parametrize("prior_name", PRIORS.names())
def test_diagnostics_and_summaries_in_float64_make_no_host_tensors(prior_name):
    case = next(c for c in CASES if c.id == "mlp")
    vae = _build(case, prior_name).to(torch.float64)
    x = _float64(case.data())
    audit = DevicelessFactories()
    with audit:
        report = diagnose(
            vae.model,
            vae.guide,
            x,
            None,
            estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw", "psis"),
            importance_samples=50,
            bootstrap=5,
        )
        idata = to_inference_data(vae.model, vae.guide, x, 4, prior_samples=20)
    assert not audit.calls, sorted(audit.calls)
    for site in report.sites.values():
        assert isinstance(site.kl_per_dim, np.ndarray) and np.isfinite(site.kl_per_dim).all()
    assert math.isfinite(report.elbo["log_likelihood"])
    assert idata.posterior["z"].dtype == np.float64
    dims = sum(idata.posterior[v].shape[-1] for v in idata.posterior.data_vars)
    assert summarize(idata).shape[0] == dims


# ======================================================================================
# device= of the diagnostics
# ======================================================================================
@pytest.fixture
def trained():
    pyro.set_rng_seed(0)
    vae = MLPVAE(6, 2, hidden=(8,), likelihood="gaussian")
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(2))
    return vae, x


ENTRY_POINTS = {
    "kl_per_dimension": lambda v, x, **kw: dg.kl_per_dimension(v.model, v.guide, x, **kw).per_point,
    "active_units": lambda v, x, **kw: (
        dg.active_units(v.model, v.guide, x, bootstrap=4, **kw).variance
    ),
    "mutual_information": lambda v, x, **kw: (
        dg.mutual_information(v.model, v.guide, x, num_samples=2, **kw).per_dim
    ),
    "aggregate_posterior_kl": lambda v, x, **kw: dg.aggregate_posterior_kl(
        v.model, v.guide, x, **kw
    ),
    "iw_log_likelihood": lambda v, x, **kw: (
        dg.iw_log_likelihood(v.model, v.guide, x, num_samples=8, **kw).per_point
    ),
    "psis_khat": lambda v, x, **kw: dg.psis_khat(v.model, v.guide, x, num_samples=50, **kw).khat,
    "decoder_sensitivity": lambda v, x, **kw: (
        dg.decoder_sensitivity(v.model, v.guide, x, **kw).per_dim
    ),
    "datapoint_rhat": lambda v, x, **kw: dg.datapoint_rhat(v.model, v.guide, x, **kw).per_dim,
    "posterior_mean_space": lambda v, x, **kw: (
        dg.posterior_mean_space(v.model, v.guide, x, num_samples=8, **kw).model
    ),
    "posterior_densities": lambda v, x, **kw: (
        dg.posterior_densities(v.model, v.guide, x, **kw).posterior
    ),
    "reconstruction_means": lambda v, x, **kw: dg.reconstruction_means(v.model, v.guide, x, **kw),
    "latent_traversal": lambda v, x, **kw: dg.latent_traversal(v.model, v.guide, x[:1], **kw).means,
    "latent_site_names": lambda v, x, **kw: np.array(
        dg.latent_site_names(v.model, v.guide, x, **kw)
    ),
    "diagnose": lambda v, x, **kw: diagnose(
        v.model, v.guide, x, estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw"), **kw
    ).to_dict(),
    "to_inference_data": lambda v, x, **kw: (
        to_inference_data(v.model, v.guide, x, 3, prior_samples=5, **kw).posterior["z"].values
    ),
}


def _run_seeded(fn, vae, x, **kw):
    pyro.set_rng_seed(5)
    return fn(vae, x, **kw)


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_device_cpu_gives_the_same_results_as_none_on_the_host(name, trained):
    vae, x = trained
    fn = ENTRY_POINTS[name]
    default = _run_seeded(fn, vae, x)
    if isinstance(default, dict):  # a report: its settings record the device
        assert default["settings"].pop("device") is None
    for device in ("cpu", torch.device("cpu")):
        again = _run_seeded(fn, vae, x, device=device)
        if isinstance(default, dict):
            assert again["settings"].pop("device") == "cpu"
        np.testing.assert_equal(again, default)
    if not isinstance(default, (dict, float)):
        assert isinstance(default, np.ndarray)


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("bogus", r"device 'bogus' is not a torch device"),
        pytest.param(
            "cuda",
            r"device 'cuda' is not available: torch finds no CUDA device",
            marks=pytest.mark.skipif(CUDA, reason="this machine has CUDA"),
        ),
        ("meta", r"device 'meta' holds no values"),
    ],
)
def test_an_unavailable_device_is_refused_before_any_work(name, device, match, trained):
    vae, x = trained
    with pytest.raises(ValueError, match=match):
        ENTRY_POINTS[name](vae, x, device=device)


@pytest.mark.parametrize("name", ["diagnose", "kl_per_dimension", "to_inference_data"])
def test_a_device_of_the_wrong_type_is_refused(name, trained):
    vae, x = trained
    with pytest.raises(TypeError, match="device must be None, a str"):
        ENTRY_POINTS[name](vae, x, device=0)


@pytest.mark.parametrize("name", ["diagnose", "iw_log_likelihood", "to_inference_data"])
def test_a_model_on_another_device_than_the_chunks_is_refused(name, trained):
    vae, x = trained
    vae.to("meta")  # a second device every machine has
    with pytest.raises(
        ValueError,
        match=r"model's parameters are on meta but the data chunks go "
        r"to cpu(.|\n)*vae.to\('cpu'\)",
    ):
        ENTRY_POINTS[name](vae, x)


def test_check_device_accepts_devices_and_names_the_argument():
    assert check_device("device", None) is None
    assert check_device("device", "cpu") == torch.device("cpu")
    assert check_device("device", torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^where 'nope' is not a torch device"):
        check_device("where", "nope")
    with pytest.raises(TypeError, match=r"^where must be None, a str .* got int 1"):
        check_device("where", 1)
    if not CUDA:
        with pytest.raises(ValueError, match=r"where 'cuda:1' is not available"):
            check_device("where", "cuda:1")
    vae = MLPVAE(4, 2, hidden=(3,))
    assert module_device(vae.model) == torch.device("cpu") == module_device(vae)
    assert module_device(lambda x: x) is None


# ======================================================================================
# Models on a device: the device property and inputs elsewhere
# ======================================================================================
def test_model_and_prior_report_their_device_and_refuse_inputs_from_elsewhere():
    vae = MLPVAE(4, 2, hidden=(3,))
    assert vae.device == torch.device("cpu") and vae.prior.device == torch.device("cpu")
    vae.to("meta")
    assert vae.device == torch.device("meta") and vae.prior.device == torch.device("meta")
    with pytest.raises(
        ValueError,
        match=r"x is on cpu but the model is on meta; move it with "
        r"x.to\(vae.device\)",
    ):
        vae.check_input(torch.rand(3, 4))
    with pytest.raises(ValueError, match="z is on cpu but the model is on meta"):
        vae.generate(torch.zeros(2, 2))


def test_priors_built_around_an_encoder_follow_its_device():
    vae = LinearVAE(6, 2).to(torch.float64)
    prior = PRIORS.get("vamp")(vae.encode, 3, (6,))
    assert prior.raw_pseudo.dtype == torch.float64 and prior.pseudo_inputs.shape == (3, 6)
    assert prior.raw_pseudo.device == vae.device and prior.latent_dim == 2


# ======================================================================================
# On CUDA (skipped without a GPU)
# ======================================================================================
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_models_run_and_are_diagnosed_on_cuda(case):
    vae = case.build(HierarchicalPrior(2) if case.registry_name != "ladder" else None).to("cuda")
    x = case.data()
    xc = x.to("cuda")
    guide_tr = poutine.trace(vae.guide).get_trace(xc)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(xc)
    assert torch.isfinite(model_tr.log_prob_sum())
    assert vae.sample(3).device.type == "cuda" and vae.reconstruct(xc).device.type == "cuda"
    report = diagnose(vae.model, vae.guide, x, vae.latent_sites, device="cuda")
    again = diagnose(vae.model, vae.guide, xc, vae.latent_sites)
    assert report.settings["device"] == "cuda" and again.settings["device"] is None
    for site in vae.latent_sites:
        assert isinstance(report.sites[site].kl_per_dim, np.ndarray)
        assert np.isfinite(report.sites[site].kl_per_dim).all()
    idata = to_inference_data(vae.model, vae.guide, x, 3, prior_samples=5, device="cuda")
    assert isinstance(idata.posterior[vae.latent_sites[0]].values, np.ndarray)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_every_prior_samples_and_scores_on_cuda():
    for name in PRIORS.names():
        vae = _build(next(c for c in CASES if c.id == "mlp"), name).to("cuda")
        z = vae.prior.sample(5)
        assert z.device.type == "cuda" and vae.prior.log_prob(z).device.type == "cuda"


def test_standard_prior_constants_are_buffers():
    prior = StandardNormalPrior(3).to(torch.float64)
    d = prior.distribution()
    assert isinstance(d, dist.Independent) and d.mean.dtype == torch.float64
