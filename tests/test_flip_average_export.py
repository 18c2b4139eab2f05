"""Test-time view averaging (mirror, one-pixel shifts) lives inside WhitenedCNN, so the exported
model returns the same calibrated probabilities as the net does in evaluation (the CIFAR-10
recipe's promise)."""

from __future__ import annotations

import pytest
import torch

from softcal.apps.export import ProbabilityModel, export_onnx
from softcal.calibration.run_calibration import RunCalibration
from softcal.model.whitened_cnn import WhitenedCNN

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.mark.slow
@pytest.mark.parametrize("translate", [False, True], ids=["mirror", "mirror-and-shifts"])
def test_onnx_export_keeps_the_test_time_views(tmp_path, translate):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = WhitenedCNN(3, 10, widths=(8, 16, 16), translate_average=translate)
    net.fit_whitening(torch.randn(64, 3, 32, 32))
    calibration = RunCalibration(10)
    calibration.use_temperature(0.9)
    model = ProbabilityModel(net, MEAN, STD, calibration).eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
        normalised = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        views = net.test_views(normalised)
        assert len(views) == (6 if translate else 2)
        both = torch.stack([net.logits(v) for v in views]).mean(0)
    assert torch.allclose(expected, torch.softmax(both / 0.9, 1), atol=1e-5)  # averaging is in
    path = export_onnx(model, images[:2], tmp_path / "model.onnx", {"temperature": "0.9"})
    session = ort.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert abs(got - expected.numpy()).max() < 1e-5
