"""segtrt.verify.model, ``segtrt verify`` and segtrt.testing on the bundled sample model and real scans.

The real-data rows (the sample CT, the bundled DICOM series) are the numbers behind the fp32
tolerance (README, "Tolerance policy"); a deliberately broken ONNX file must fail on the same data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from segtrt.cli import main
from segtrt.config import DEFAULT_MODEL_DIR
from segtrt.testing import assert_model_matches
from segtrt.verify import Tolerance

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
SAMPLE_CT = SAMPLE / "example_ct.nii.gz"
DICOM = SAMPLE / "example_ct_dicom"


@pytest.fixture(scope="module")
def sample_onnx(tmp_path_factory) -> Path:
    """The sample model's fold 0 as a dynamic-batch fp32 ONNX file (exported once for the module)."""
    path = tmp_path_factory.mktemp("onnx") / "sample.onnx"
    assert main(["-q", "export", "-o", str(path), "--dynamic-batch", "--no-check"]) == 0
    return path


@pytest.fixture(scope="module")
def broken_onnx(sample_onnx, tmp_path_factory) -> Path:
    """The same file with noise of 20% of the weights' spread added to the middle convolution: a wrongly
    converted network (measured on noise patches: 4.4e-2 max|ref|, worst ratio 2.2; 5% noise gives
    1.1e-2, inside the fp32 limit that ONNX Runtime's own CPU error sets, see README). Scaling a weight
    would not do: the instance norm after it undoes a scale."""
    model = onnx.load(str(sample_onnx))
    convs = [node.input[1] for node in model.graph.node if node.op_type == "Conv"]
    target = next(t for t in model.graph.initializer if t.name == convs[len(convs) // 2])
    weights = numpy_helper.to_array(target)
    noise = np.random.default_rng(0).standard_normal(weights.shape).astype(np.float32) * 0.2 * weights.std()
    target.CopyFrom(numpy_helper.from_array(weights + noise, target.name))
    path = tmp_path_factory.mktemp("broken") / "broken.onnx"
    onnx.save(model, str(path))
    return path


def _verify(tmp_path: Path, scan: Path, onnx_path: Path) -> tuple[int, dict]:
    report_path = tmp_path / "verify.json"
    code = main(["-q", "verify", str(scan), "--onnx", str(onnx_path), "--device", "cpu", "--patches", "2",
                 "--json", str(report_path)])
    return code, json.loads(report_path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("scan", [SAMPLE_CT, DICOM], ids=["sample-ct", "dicom-series"])
def test_verify_passes_on_real_scans(scan, sample_onnx, tmp_path, capsys):
    code, report = _verify(tmp_path, scan, sample_onnx)
    assert code == 0, capsys.readouterr().out
    synthetic, patches = report["patches"]
    assert "synthetic patches" in synthetic["label"] and "scan patches" in patches["label"]
    # measured (ONNX Runtime CPU vs torch CPU): synthetic 1.2e-5, scan patches 1.6e-4 (CT) / 6.7e-3 (DICOM)
    assert synthetic["max_rel"] < 5e-5 and synthetic["tolerance"]["scaled_atol"] == 1e-4
    assert patches["max_rel"] < 1e-2 and patches["worst_ratio"] < 0.5
    assert patches["nonfinite"] == 0 and patches["reference_nonfinite"] == 0
    assert patches["decided_agreement"] >= 0.9999
    assert report["cases"]["cases"][0]["agreement"] >= 0.9999


@pytest.mark.slow
def test_broken_backend_fails_on_the_dicom_series(broken_onnx, tmp_path, capsys):
    code, report = _verify(tmp_path, DICOM, broken_onnx)
    assert code == 1 and "FAILED" in capsys.readouterr().out
    assert all(p["worst_ratio"] > 1.0 for p in report["patches"])


def test_assert_model_matches_passes_and_raises_with_the_table(sample_onnx, broken_onnx):
    report = assert_model_matches(DEFAULT_MODEL_DIR, onnx=[sample_onnx], device="cpu", patches=1)
    assert report.passed and report.patches[0].num_values > 0
    with pytest.raises(AssertionError, match=r"(?s)past tolerance.*worst \|diff\|"):
        assert_model_matches(DEFAULT_MODEL_DIR, onnx=[broken_onnx], device="cpu", patches=1)
    exact = Tolerance(rtol=0.0, scaled_atol=0.0, min_argmax_agreement=1.0)
    with pytest.raises(AssertionError, match="FAILED"):  # fp32 rounding differs: a zero tolerance must fail
        assert_model_matches(DEFAULT_MODEL_DIR, onnx=[sample_onnx], device="cpu", patches=1, tolerance=exact)
