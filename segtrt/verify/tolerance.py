"""Pass/fail limits of a logit comparison: ``Tolerance``, the measured defaults per precision
(``TOLERANCES``) and ``tolerance_for``."""

from __future__ import annotations

from dataclasses import dataclass

from segtrt.errors import SegtrtError


@dataclass(frozen=True)
class Tolerance:
    """Limits for a candidate's logits ``c`` against reference logits ``r`` (one batch at a time).

    Values: every value must satisfy ``|c - r| <= scaled_atol * max|r| + rtol * |r|``, i.e.
    numpy.testing.assert_allclose with ``atol = scaled_atol * max|r|``. The absolute part is scaled
    by the batch's largest reference logit because logit scales differ by an order of magnitude
    between networks (3 for an untrained test net, 50-140 for trained ones) while fp16/fp32
    rounding errors grow with that scale.

    Labels: the argmax maps must agree on at least ``min_argmax_agreement`` of the *decided* voxels,
    those whose reference top-1 minus top-2 logit is at least ``argmax_margin * max|r|``. Near-ties
    flip under any change of arithmetic (TF32 alone flips 0.1-0.2% of the voxels of an untrained
    network); a flip where the margin exceeds the worst error the precision allows is a real
    difference. The raw agreement over all voxels is reported too.
    """

    rtol: float
    scaled_atol: float
    min_argmax_agreement: float
    argmax_margin: float = 0.0

    def atol_for(self, scale: float) -> float:
        """The absolute tolerance for a batch whose largest |reference logit| is ``scale``."""
        return self.scaled_atol * scale

    def describe(self) -> str:
        margin = f" where margin >= {self.argmax_margin:g} max|ref|" if self.argmax_margin else ""
        return (
            f"rtol={self.rtol:g}, atol={self.scaled_atol:g} max|ref|, "
            f"argmax agreement >= {self.min_argmax_agreement:g}{margin}"
        )


#: Limits per precision on synthetic patches (noise and smooth fields, ``random_patches``): what the
#: export check and every ``segtrt verify`` run use. README "Tolerance policy" has the table.
#: fp32: ONNX Runtime (CPU, or CUDA with TF32 off) vs torch (CPU, or CUDA with TF32 off) differ by
#: at most 3.4e-5 max|ref| on the bundled model (worst ratio 0.34) and 8.8e-6 on trained 5-stage U-Nets
#: (|logits| up to 140; CUDA vs CUDA 7.6e-7): 1e-4 leaves 3x headroom and still fails on TF32 (3e-4 to
#: 3e-3 max|ref|), on a graph whose logits are 1% off, or any graph difference.
#: fp16: the worst fp16 error measured (GPU fp16 arithmetic in torch and ONNX Runtime CUDA,
#: trained and untrained nets, noise, smooth and CT patches) is 1.04e-2 max|ref| (nnU-Net's own
#: autocast: 1.04e-2), worst ratio to these limits 0.55; decided-voxel margin 1e-2 max|ref| = that
#: worst error, and every measured variant agreed on 100% of the decided voxels.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(rtol=1e-4, scaled_atol=1e-4, min_argmax_agreement=0.9999, argmax_margin=0.0),
    "fp16": Tolerance(rtol=1e-2, scaled_atol=2.5e-2, min_argmax_agreement=0.999, argmax_margin=1e-2),
}

#: Limits per precision on patches cut from real scans (``scan_patches``), used besides the synthetic
#: ones when ``segtrt verify`` is given scans.
#: fp32: the largest fp32 error measured is ONNX Runtime's CPU provider against torch fp32: 6.7e-3
#: max|ref| on the bundled DICOM series (20 slices, so its patches are 60% zero padding), 1.6e-4 on the
#: bundled CT, where torch fp32 itself stays within 4.5e-6 of a float64 run. The cause is ONNX Runtime's
#: float32 reductions in the instance norms over channels that are nearly constant across a padded
#: patch: computing only the means in float64 cuts the error to 1.2e-3-2.0e-3. The limit, 2e-2 max|ref|
#: + 1e-3 |ref|, leaves 3x headroom; argmax flips count only where the reference margin is >= 2e-2
#: max|ref|. The synthetic comparison, which always runs, keeps the tight fp32 limit above.
#: fp16: the same limits as on synthetic patches (they were measured on CT patches too).
SCAN_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(rtol=1e-3, scaled_atol=2e-2, min_argmax_agreement=0.9999, argmax_margin=2e-2),
    "fp16": TOLERANCES["fp16"],
}


def tolerance_for(precision: str, patches: str = "synthetic") -> Tolerance:
    """The default ``Tolerance`` for ``precision`` ('fp32' or 'fp16') on ``patches`` ('synthetic' or
    'scan')."""
    table = {"synthetic": TOLERANCES, "scan": SCAN_TOLERANCES}.get(patches)
    if table is None:
        raise SegtrtError(f"patches must be 'synthetic' or 'scan', got {patches!r}")
    try:
        return table[precision]
    except KeyError:
        raise SegtrtError(f"precision must be one of {', '.join(table)}, got {precision!r}") from None
