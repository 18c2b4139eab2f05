"""Top-label beta calibration: checked against a numpy/scipy implementation written here (the
multiclass NLL of the calibrated probabilities, minimised by scipy), on logits generated with a
miscalibration that one temperature cannot remove."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize, minimize_scalar

from softcal.calibration.calibrators import calibrator_from_state, make_calibrator
from softcal.calibration.run_calibration import RunCalibration
from softcal.calibration.top_label import MARGIN, PRIOR_SD
from softcal.errors import SoftcalError
from tests.test_calibrators import np_ece, np_nll, np_softmax

METHOD = "top_label_beta"


def s_shaped(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(true logits) - which are calibrated by construction - and
    reported logits sharpened where the true confidence is high and softened where it is low:
    overconfident at the top, underconfident at the bottom, an S-shaped reliability curve."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, k, generator=g) * (0.5 + 4.0 * torch.rand(n, 1, generator=g))
    labels = torch.multinomial(F.softmax(true, dim=1), 1, generator=g).squeeze(1)
    confidence = F.softmax(true, dim=1).max(dim=1).values
    return (true * torch.exp(1.5 * (confidence - 0.5))[:, None]).float(), labels


def np_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """The NLL-minimising T, by scipy's bounded search over log T."""
    fit = minimize_scalar(
        lambda log_t: np_nll(np_softmax(z / np.exp(log_t)), y),
        bounds=(np.log(1e-2), np.log(1e2)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(np.exp(fit.x))


def np_top_label_beta(
    z: np.ndarray, t: float, a: float, b: float, m: float, keep_top: bool = True
) -> np.ndarray:
    """softmax(z / T); the top probability c -> f = sigmoid(a log c - b log(1 - c) + m) (with
    ``keep_top``, f raised until the top leads the runner-up by MARGIN in the logits); every other
    class scaled by (1 - f) / (1 - c)."""
    p = np_softmax(z / t)
    rows, top = np.arange(len(p)), p.argmax(axis=1)
    c = p[rows, top]
    logit_f = a * np.log(c) - b * np.log1p(-c) + m
    if keep_top:
        second = np.where(np.arange(p.shape[1]) == top[:, None], -1.0, p).max(axis=1)
        logit_f = np.maximum(logit_f, np.log(second / (1 - c)) + MARGIN)
    f = 1 / (1 + np.exp(-logit_f))
    out = p * ((1 - f) / (1 - c))[:, None]
    out[rows, top] = f
    return out


def np_fit(z: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """(T, a, b, m): T by scipy, then (a, b, m) minimising the mean multiclass NLL of the
    calibrated probabilities plus the Gaussian prior around (1, 1, 0), by L-BFGS-B with a, b >= 0."""
    t = np_temperature(z, y)

    def objective(theta: np.ndarray) -> float:
        probs = np_top_label_beta(z, t, *theta, keep_top=False)
        prior = ((theta[0] - 1) ** 2 + (theta[1] - 1) ** 2 + theta[2] ** 2) / (2 * PRIOR_SD**2 * len(y))
        return np_nll(probs, y) + prior

    fit = minimize(
        objective,
        np.array([1.0, 1.0, 0.0]),
        method="L-BFGS-B",
        bounds=[(0, None), (0, None), (None, None)],
        options={"ftol": 1e-15, "gtol": 1e-11},
    )
    return (t, *fit.x)


@pytest.fixture(scope="module")
def s_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"val": s_shaped(3000, 20, seed=0), "test": s_shaped(6000, 20, seed=1)}


def test_it_straightens_what_temperature_scaling_cannot(s_data):
    """Fitted on the validation logits, scored on the test logits: ECE, NLL and Brier all lower
    than temperature scaling's, the predictions unchanged, and the state rebuilds it exactly."""
    (zv, yv), (zt, yt) = s_data["val"], s_data["test"]
    labels = yt.numpy()
    scaling = make_calibrator("temperature", 20).fit(zv, yv)
    ours = make_calibrator(METHOD, 20).fit(zv, yv)
    with torch.no_grad():
        p_t, p_ours = scaling(zt).double().numpy(), ours(zt).double().numpy()
    ece_t, ece_ours = np_ece(p_t, labels), np_ece(p_ours, labels)
    # Measured: ECE 6.9% (temperature scaling; the raw softmax 6.5%) -> 2.5%, NLL 1.721 -> 1.692,
    # Brier 0.665 -> 0.661; T = 1.086, a = 0.76, b = 0.53, m = 0.21.
    assert ece_t > 0.05 and ece_ours < 0.5 * ece_t, (ece_t, ece_ours)
    assert np_nll(p_ours, labels) < np_nll(p_t, labels) - 0.01
    brier = [((p - np.eye(20)[labels]) ** 2).sum(axis=1).mean() for p in (p_t, p_ours)]
    assert brier[1] < brier[0]
    assert np.array_equal(p_ours.argmax(axis=1), zt.argmax(dim=1).numpy())
    assert ours.temperature == scaling.temperature  # the same T, then the top-label map
    rebuilt = calibrator_from_state(ours.get_extra_state())
    assert type(rebuilt) is type(ours) and torch.equal(rebuilt(zt), ours(zt))


def test_the_fit_is_the_penalised_nll_minimum_and_forward_matches_numpy():
    """The code fits (a, b, m) by the log-loss of "the top class is right"; the reference here
    minimises the multiclass NLL of the calibrated probabilities. They differ by a term that does
    not depend on (a, b, m), so both reach the same parameters and probabilities."""
    (zv, yv), (zt, _) = s_shaped(600, 6, seed=2), s_shaped(300, 6, seed=3)
    calibrator = make_calibrator(METHOD, 6).fit(zv, yv)
    t, a, b, m = np_fit(zv.double().numpy(), yv.numpy())
    assert calibrator.temperature == pytest.approx(t, rel=1e-5)
    np.testing.assert_allclose([calibrator.a, calibrator.b, calibrator.m], [a, b, m], atol=1e-4)
    for z in (zv, zt):
        want = np_top_label_beta(z.double().numpy(), t, a, b, m)
        np.testing.assert_allclose(calibrator(z).numpy(), want, atol=1e-5)
    assert "\n" not in calibrator.describe() and calibrator.describe().startswith(
        "top-label beta calibration (T="
    )


def set_map(temperature: float, a: float, b: float, m: float, k: int = 5) -> torch.nn.Module:
    """A fitted calibrator holding the given map (to test maps a fit would not produce)."""
    calibrator = make_calibrator(METHOD, k)
    state = {
        "method": METHOD,
        "num_classes": k,
        "fitted": True,
        "temperature": temperature,
        "a": a,
        "b": b,
        "m": m,
    }
    calibrator.set_extra_state(state)
    return calibrator


def test_the_identity_map_is_temperature_scaling():
    z = s_shaped(200, 5, seed=4)[0]
    torch.testing.assert_close(
        set_map(1.7, 1.0, 1.0, 0.0)(z), torch.softmax(z / 1.7, dim=1), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_calibrated_logits_are_exportable_logits(s_data, dtype):
    """Their softmax is the forward, their log-sum-exp that of z / T (energy keeps its scale),
    computed in float32 for float32 logits and in float64 for float64 ones."""
    calibrator = make_calibrator(METHOD, 20).fit(*s_data["val"])
    z = s_data["test"][0].to(dtype)
    logits = calibrator.calibrated_logits(z)
    assert logits.dtype == dtype
    torch.testing.assert_close(torch.softmax(logits, dim=1).float(), calibrator(z), atol=1e-7, rtol=0)
    lse = torch.logsumexp(z / calibrator.temperature, dim=1)
    torch.testing.assert_close(torch.logsumexp(logits, dim=1), lse, atol=1e-5, rtol=0)


def test_the_predicted_class_never_changes_even_where_the_map_would_demote_it():
    """A map that sends every top probability towards 0, on logits with exact ties at the top and
    of magnitude 1e3 in float32: each row's first largest logit stays its largest probability,
    ahead of the runner-up by MARGIN in the calibrated logits; the rows stay finite distributions."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(400, 5, generator=g) * torch.tensor([1.0, 1e3]).repeat(200)[:, None]
    top = z.argmax(dim=1)
    z[::7, (top[::7] + 1) % 5] = z[::7].max(dim=1).values  # the runner-up tied with the top
    for dtype in (torch.float32, torch.float64):
        calibrator = set_map(0.5, 0.05, 0.05, -8.0)
        x = z.to(dtype)
        probs, logits = calibrator(x), calibrator.calibrated_logits(x)
        assert torch.isfinite(probs).all() and torch.isfinite(logits).all()
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(400), atol=1e-6, rtol=0)
        assert torch.equal(probs.argmax(dim=1), x.argmax(dim=1))
        lead = logits.topk(2, dim=1).values.diff(dim=1).neg().squeeze(1)
        assert float(lead.min()) > 0.5 * MARGIN
    # Where the map leaves the top ahead, it is the plain map (the reference without the floor):
    # the rows of unit scale without a tie.
    plain = z[(torch.arange(400) % 2 == 0) & (torch.arange(400) % 7 != 0)].double()
    want = np_top_label_beta(plain.numpy(), 1.0, 0.8, 0.7, 0.1, keep_top=False)
    np.testing.assert_allclose(set_map(1.0, 0.8, 0.7, 0.1)(plain).numpy(), want, atol=1e-6)


def test_a_calibrated_net_keeps_nearly_the_identity_map():
    """Labels drawn from softmax(z): temperature scaling is already right, and the prior keeps the
    map near the identity instead of fitting noise."""
    g = torch.Generator().manual_seed(6)
    z = torch.randn(3000, 10, generator=g) * (0.5 + 3 * torch.rand(3000, 1, generator=g))
    y = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    calibrator = make_calibrator(METHOD, 10).fit(z, y)
    assert abs(calibrator.temperature - 1) < 0.05
    assert max(abs(calibrator.a - 1), abs(calibrator.b - 1), abs(calibrator.m)) < 0.1, calibrator.describe()


def test_the_run_calibration_stores_and_applies_it(s_data):
    (zv, yv), (zt, _) = s_data["val"], s_data["test"]
    calibration = RunCalibration(20)
    calibration.fit(zv, yv, METHOD)
    assert calibration.method == METHOD and calibration.exportable and calibration.label() == METHOD
    assert calibration.describe().startswith("top-label beta calibration (T=")
    copy = RunCalibration(20)
    copy.set_extra_state(calibration.get_extra_state())
    assert torch.equal(copy.probabilities(zt), calibration.probabilities(zt))
    torch.testing.assert_close(torch.softmax(copy.calibrated_logits(zt), dim=1), copy.probabilities(zt))


def test_one_class_and_bad_shapes():
    one = make_calibrator(METHOD, 1).fit(torch.randn(10, 1), torch.zeros(10, dtype=torch.long))
    assert one.fitted and torch.equal(one(torch.randn(4, 1)), torch.ones(4, 1))
    calibrator = make_calibrator(METHOD, 5).fit(*s_shaped(100, 5, seed=7))
    with pytest.raises(SoftcalError) as caught:
        calibrator(torch.zeros(4, 3))
    assert str(caught.value) == (
        "calibrator: logits of shape (4, 3) do not match 5 classes; apply it to the (N, num_classes)"
        " logits of the model it was fitted on"
    )
