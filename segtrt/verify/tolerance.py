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


#: Limits per precision, from measurements (README "Tolerance policy" has the table and commands).
#: fp32: the largest fp32 error measured is ONNX Runtime's CPU provider against torch fp32 on real scans:
#: max|c - r| = 6.7e-3 max|ref| on the bundled DICOM series (1.6e-4 on the bundled CT), where torch fp32
#: itself is within 4.5e-6 max|ref| of a float64 run of the same network. The error is ONNX Runtime's
#: CPU InstanceNormalization, which loses precision when a channel's mean is large against its spread
#: (measured alone: 1e-3 at mean/std = 1000); patches mostly made of padding are such a case. GPU runs
#: (ONNX Runtime CUDA, TensorRT, TF32 off) stay under 8.8e-6. The limit, 2e-2 max|ref| + 1e-3 |ref|,
#: leaves 3x headroom over the worst measurement; a backend with one wrong layer, a constant offset or
#: a dropped mirror fails by orders of magnitude. It does not separate TF32 (3e-4 to 3e-3) from fp32.
#: Argmax flips count only where the reference margin is >= 2e-2 max|ref| (the allowed error).
#: fp16: the worst fp16 error measured (GPU fp16 arithmetic in torch and ONNX Runtime CUDA,
#: trained and untrained nets, noise, smooth and CT patches) is 1.04e-2 max|ref| (nnU-Net's own
#: autocast: 1.04e-2), worst ratio to these limits 0.55; decided-voxel margin 1e-2 max|ref| = that
#: worst error, and every measured variant agreed on 100% of the decided voxels.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(rtol=1e-3, scaled_atol=2e-2, min_argmax_agreement=0.9999, argmax_margin=2e-2),
    "fp16": Tolerance(rtol=1e-2, scaled_atol=2.5e-2, min_argmax_agreement=0.999, argmax_margin=1e-2),
}


def tolerance_for(precision: str) -> Tolerance:
    """The default ``Tolerance`` for ``precision`` ('fp32' or 'fp16')."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise SegtrtError(f"precision must be one of {', '.join(TOLERANCES)}, got {precision!r}") from None
