"""Bad values are refused before training, and a diverging run stops instead of returning NaN (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sd_inspire as si
from sd_inspire.model import InspireModel


@pytest.fixture(scope="module")
def tiny():
    adata = si.datasets.simulate(
        2, n_spots=120, n_genes=80, n_cell_types=4, n_domains=3, output="anndata", random_state=5
    )
    si.pp.preprocess(adata, n_top_genes=60)
    si.gr.spatial_neighbors(adata)
    return adata


@pytest.mark.parametrize("value", [np.nan, np.inf, -2.0])
def test_invalid_counts_of_a_preprocessed_table_are_named(tiny, value):
    adata = tiny.copy()
    gene = int(np.flatnonzero(adata.var["highly_variable"].to_numpy())[3])
    counts = adata.layers["counts"].tolil()
    counts[7, gene] = value
    adata.layers["counts"] = counts.tocsr()
    with pytest.raises(ValueError, match=r"layers\['counts'\] holds 1 negative, NaN or infinite") as info:
        InspireModel(adata, n_factors=3)
    assert repr(adata.obs_names[7]) in str(info.value)
    assert repr(str(adata.var_names[gene])) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_weights": {"adversarial": float("nan")}}, r"`loss_weights\['adversarial'\]` must be a finite number"),
        ({"loss_weights": {"poisson": -1}}, r"`loss_weights\['poisson'\]` must be at least 0.0"),
        ({"loss_weights": {"prior": "4"}}, r"`loss_weights\['prior'\]` must be a finite number"),
        ({"batch_size": 0}, "`batch_size` must be at least 1, got 0"),
        ({"batch_size": 64.0}, "`batch_size` must be an integer, got 64.0"),
        ({"lr": -1e-3}, "`lr` must be positive"),
        ({"lr": float("inf")}, "`lr` must be a finite number"),
    ],
)
def test_bad_training_arguments_are_refused_before_training(tiny, kwargs, match):
    model = InspireModel(tiny, n_factors=3, n_latent=4, n_hidden=16)
    with pytest.raises(ValueError, match=match):
        model.train(max_steps=5, show_progress_bar=False, **kwargs)
    assert not model.is_trained


def test_a_diverging_run_stops_with_the_step_and_term(tiny):
    model = InspireModel(tiny, n_factors=3, n_latent=4, n_hidden=16)
    with torch.no_grad():
        model.module.loading_logits[0, 0] = float("nan")  # as a diverged update would leave it
    with pytest.raises(FloatingPointError, match=r"diverged at step 1 of 5: the loss term\(s\) \['poisson'\]"):
        model.train(max_steps=5, show_progress_bar=False)
    assert not model.is_trained
    with pytest.raises(RuntimeError, match="not trained"):
        model.get_latent()


def test_integrate_writes_nothing_when_training_diverges(tiny, monkeypatch):
    from sd_inspire.model import _trainer

    def diverge(self):
        raise FloatingPointError("Training diverged at step 1 of 5: the loss term(s) ['poisson'] are not finite.")

    monkeypatch.setattr(_trainer.Trainer, "train_step", diverge)
    adata = tiny.copy()
    before = set(adata.obsm) | set(adata.uns) | set(adata.obs.columns)
    with pytest.raises(FloatingPointError, match="diverged"):
        si.tl.integrate(adata, max_steps=5, show_progress_bar=False)
    assert set(adata.obsm) | set(adata.uns) | set(adata.obs.columns) == before


KW = {"n_factors": 3, "n_latent": 4, "n_hidden": 16}
RUN = {"max_steps": 12, "batch_size": 64, "show_progress_bar": False, "checkpoint_every": 5}


@pytest.mark.parametrize(
    ("model_kw", "train_kw", "needle"),
    [
        ({"random_state": 9}, {}, "seed"),
        ({}, {"lr": 1e-2}, "lr"),
        ({}, {"max_steps": 20}, "n_steps"),
        ({}, {"batch_size": 32}, "per_slice"),
        ({}, {"loss_weights": {"adversarial": 0.5}}, "loss_weights"),
        ({}, {"early_stopping": True}, "early_stopping"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused(tiny, tmp_path, model_kw, train_kw, needle):
    InspireModel(tiny, **KW, random_state=1).train(**RUN, checkpoint_dir=tmp_path)  # a finished run
    other = InspireModel(tiny, **KW, **{"random_state": 1, **model_kw})
    with pytest.raises(ValueError, match=rf"checkpoint of a run with other training settings \({needle}: "):
        other.train(**{**RUN, **train_kw}, checkpoint_dir=tmp_path)
    assert not other.is_trained


def test_same_settings_resume_and_checkpoint_every_is_not_a_setting(tiny, tmp_path):
    first = InspireModel(tiny, **KW, random_state=1)
    first.train(**RUN, checkpoint_dir=tmp_path)
    again = InspireModel(tiny, **KW, random_state=1)
    again.train(**{**RUN, "checkpoint_every": 3}, checkpoint_dir=tmp_path)  # finished: nothing left to train
    np.testing.assert_array_equal(again.get_latent(), first.get_latent())
    with pytest.raises(ValueError, match="`checkpoint_every` must be at least 1"):
        InspireModel(tiny, **KW).train(**{**RUN, "checkpoint_every": 0}, checkpoint_dir=tmp_path / "x")


def test_early_stopping_resumes_as_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    from sd_inspire.model._trainer import Trainer

    run = {**RUN, "max_steps": 60, "early_stopping": True, "patience": 4, "warmup_fraction": 0.1}
    full = InspireModel(tiny, **KW, random_state=4)
    full.train(**run)
    n_full = len(full.history["loss"])
    assert n_full < 60  # it stopped early: the state that decides when must survive a restart
    original = Trainer.train_step

    def crash(self):
        if self.step == n_full - 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash)
    killed = InspireModel(tiny, **KW, random_state=4)
    with pytest.raises(KeyboardInterrupt):
        killed.train(**{**run, "checkpoint_every": 1}, checkpoint_dir=tmp_path)
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = InspireModel(tiny, **KW, random_state=4)
    resumed.train(**{**run, "checkpoint_every": 1}, checkpoint_dir=tmp_path)
    assert len(resumed.history["loss"]) == n_full
    np.testing.assert_allclose(resumed.get_latent(), full.get_latent(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model = InspireModel(tiny, **KW)
    model.train(max_steps=5, batch_size=64, show_progress_bar=False)
    model.save(folder)
    return folder


def _copy(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "m")


def test_truncated_weights_name_the_file_without_torch_advice(tiny, saved, tmp_path):
    folder = _copy(saved, tmp_path)
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.pt: not a readable model weights file") as info:
        InspireModel.load(folder, tiny)
    assert "weights_only" not in str(info.value)


def test_a_pickled_object_is_not_loaded(tiny, saved, tmp_path):
    folder = _copy(saved, tmp_path)
    torch.save({"module": InspireModel}, folder / "model.pt")  # needs code to unpickle: refused, not run
    with pytest.raises(ValueError, match=r"model\.pt: not a readable model weights file") as info:
        InspireModel.load(folder, tiny)
    assert "weights_only" not in str(info.value)


@pytest.mark.parametrize("text", ["{not json", '{"params": 3}', "[]", '{"params": {}}'])
def test_bad_metadata_names_the_file(tiny, saved, tmp_path, text):
    folder = _copy(saved, tmp_path)
    (folder / "model.json").write_text(text)
    with pytest.raises(ValueError, match=r"model\.json: not the metadata of a saved model"):
        InspireModel.load(folder, tiny)


def test_non_finite_or_foreign_weights_are_refused(tiny, saved, tmp_path):
    folder = _copy(saved, tmp_path)
    state = torch.load(folder / "model.pt", weights_only=True)
    state["loading_logits"][0, 0] = float("nan")
    torch.save(state, folder / "model.pt")
    with pytest.raises(ValueError, match=r"weight 'loading_logits' holds NaN or infinite values"):
        InspireModel.load(folder, tiny)
    state["loading_logits"] = torch.zeros(2, 2)
    torch.save(state, folder / "model.pt")
    with pytest.raises(ValueError, match=r"weight 'loading_logits' has shape \(2, 2\)"):
        InspireModel.load(folder, tiny)
    del state["loading_logits"]
    torch.save(state, folder / "model.pt")
    with pytest.raises(ValueError, match=r"do not belong to this model \(differing entries: \['loading_logits'\]\)"):
        InspireModel.load(folder, tiny)


def test_damaged_checkpoint_names_the_file(tiny, tmp_path):
    InspireModel(tiny, **KW, random_state=1).train(**RUN, checkpoint_dir=tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: not a readable checkpoint"):
        InspireModel(tiny, **KW, random_state=1).train(**RUN, checkpoint_dir=tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_factors": 2.5}, ValueError, "`n_factors` must be an integer, got 2.5"),
        ({"n_latent": 0}, ValueError, "`n_latent` must be at least 1, got 0"),
        ({"n_hops": True}, ValueError, "`n_hops` must be an integer, got True"),
        ({"random_state": -1}, ValueError, "`random_state` must be a non-negative integer, got -1"),
        ({"random_state": 1.5}, TypeError, "`random_state` must be an int"),
    ],
)
def test_bad_model_arguments_are_named(tiny, kwargs, error, match):
    with pytest.raises(error, match=match):
        InspireModel(tiny, **kwargs)


def test_convergence_compares_the_last_two_tenths_of_the_loss():
    from sd_inspire._utils import convergence

    flat = np.r_[np.linspace(10.0, 5.0, 80), np.full(20, 5.0)]
    assert convergence(flat) == {"converged": True, "loss_change": 0.0, "window": 10, "tolerance": 0.01}
    falling = np.linspace(10.0, 5.0, 100)  # the last tenth is 0.5 / 5.5 lower than the one before
    check = convergence(falling)
    assert not check["converged"]
    assert check["loss_change"] == pytest.approx(-(falling[80:90].mean() - falling[90:].mean()) / falling[80:90].mean())
    assert convergence(falling, tolerance=0.2)["converged"]
    rising = falling[::-1]  # a loss that rises again has stopped falling: no more steps would help it
    assert convergence(rising)["converged"]
    noisy = 5.0 + np.random.default_rng(0).normal(0, 0.1, 200)  # minibatch noise (2%, twice the measured): means
    assert convergence(noisy)["converged"]
    short = convergence(np.arange(10.0))
    assert not short["converged"]
    assert np.isnan(short["loss_change"])


def test_training_that_has_not_converged_is_said_so(tiny, caplog):
    model = InspireModel(tiny, n_factors=3, n_latent=4, n_hidden=16)
    with caplog.at_level("WARNING", logger="sd_inspire"):
        model.train(max_steps=30, show_progress_bar=False)  # stopped while the count model's fit still improves
    refit = model.history["factor_refit"]
    assert len(refit) == 90  # three times the training's steps
    check = model.convergence
    assert check == si._utils.convergence(refit)  # judged on the final fit of the count model
    assert check["window"] == 9
    assert not check["converged"]
    assert check["loss_change"] < -0.01
    assert "The final fit of the factors may not have converged" in caplog.text
    assert f"changed by {100 * check['loss_change']:.1f}%" in caplog.text
    assert "last tenth of the 90 steps" in caplog.text  # the final fit's steps, which it judged
    assert "(`max_steps=60`)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sd_inspire"):
        InspireModel(tiny, n_factors=3, n_latent=4, n_hidden=16).train(max_steps=5, show_progress_bar=False)
    # the count of the curve it judged: the final fit's 15 steps (three times the training's 5)
    assert "The final fit of the factors ran 15 steps, too few to tell whether it converged" in caplog.text


def test_the_final_fit_of_the_factors_leaves_the_latent_space_as_trained(tiny, monkeypatch):
    from sd_inspire.model import _model

    def run():
        model = InspireModel(tiny, n_factors=3, n_latent=4, n_hidden=16, random_state=2)
        model.train(max_steps=40, show_progress_bar=False)
        return model

    fitted, again = run(), run()
    refit = np.asarray(fitted.history["factor_refit"])
    assert refit[-10:].mean() < refit[:10].mean()  # the deviance fell
    np.testing.assert_array_equal(again.get_factors(), fitted.get_factors())  # seeded: the same fit each time
    monkeypatch.setattr(_model, "refit_count_model", lambda *args, **kwargs: [])  # training alone
    trained = run()
    np.testing.assert_array_equal(trained.get_latent_representation(), fitted.get_latent_representation())
    assert not np.allclose(trained.get_factors(), fitted.get_factors(), atol=1e-3)
    assert not np.allclose(trained.get_loadings(), fitted.get_loadings(), atol=1e-4)


def test_the_final_fit_of_the_factors_leaves_the_usage_prior_out(tiny):
    """On fixed codes the prior would ask every factor for the same mean share, splitting cell types over factors."""
    import copy

    from sd_inspire.model._distributed import World
    from sd_inspire.model._module import LossWeights
    from sd_inspire.model._trainer import refit_count_model

    model = InspireModel(tiny, n_factors=4, n_latent=4, n_hidden=16, random_state=0)
    model.train(max_steps=20, show_progress_bar=False)
    latent, start = model.get_latent_representation(), copy.deepcopy(model.module.state_dict())
    start_factors = model.get_factors()

    def fit(prior: float) -> np.ndarray:
        model.module.load_state_dict(start)
        refit_count_model(
            model.module,
            model.data,
            latent,
            n_steps=15,
            per_slice=32,
            lr=1e-2,
            weights=LossWeights(prior=prior),
            rng=np.random.default_rng(0),
            device=torch.device("cpu"),
            world=World(),
            show_progress_bar=False,
        )
        return model.get_factors()

    without = fit(0.0)
    assert not np.allclose(without, start_factors, atol=1e-3)  # the fit moved the factors
    np.testing.assert_array_equal(fit(1000.0), without)  # however heavy the prior, it is not in the fit


def test_the_final_fit_runs_three_times_the_training_steps_within_the_longest_default_training():
    from sd_inspire.model._model import DEFAULT_STEPS, refit_steps

    assert [refit_steps(n) for n in (1, 30, 600, 1000)] == [3, 90, 1800, DEFAULT_STEPS[1]]
    assert refit_steps(DEFAULT_STEPS[1]) == DEFAULT_STEPS[1]  # the largest data: no longer than before
    assert refit_steps(5000) == 5000  # never shorter than a longer training asked for
