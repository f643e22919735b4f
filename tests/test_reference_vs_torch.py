"""The numpy reference against torch's own operators (skipped without torch).

This pins the reading of docs/architecture.md that the ONNX graph is checked
against to the operators the encoder trains with: transposed convolution,
replicate padding and F.interpolate(align_corners=False).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from coolchic.decoder_runtime.reference_numpy import conv2d_replicate, resize, up2_1d
from coolchic.decoder_runtime.upsampling_kernels import default_upsampling_kernels

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize("k", [4, 6, 8, 12])
def test_up2_matches_conv_transpose(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((2, 11))
    t = rng.standard_normal(k)
    pad = math.ceil(k / 4)
    xt = F.pad(torch.tensor(x)[:, None], (pad, pad), mode="replicate")
    y = F.conv_transpose1d(xt, torch.tensor(t).view(1, 1, -1), stride=2)[:, 0]
    c = k // 2 - 1 + 2 * pad
    np.testing.assert_allclose(up2_1d(x, t, 1), y[:, c:c + 22].numpy(), atol=1e-12)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("src,dst", [((9, 12), (33, 47)), ((5, 6), (17, 24)), ((3, 3), (10, 11))])
def test_final_resize_matches_interpolate(mode, src, dst):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *src))
    want = F.interpolate(torch.tensor(x)[None], size=dst, mode=mode,
                         **({} if mode == "nearest" else {"align_corners": False}))[0].numpy()
    np.testing.assert_allclose(resize(x, dst, mode), want, atol=1e-10)


def test_replicate_conv_matches_torch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 9, 13))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    want = F.conv2d(F.pad(torch.tensor(x)[None], (1, 1, 1, 1), mode="replicate"), torch.tensor(w), torch.tensor(b))
    np.testing.assert_allclose(conv2d_replicate(x, w, b), want[0].numpy(), atol=1e-10)


def test_default_bicubic_matches_torch_upsampling_of_the_interior():
    # Away from the borders, upsampling with the default K=8 kernel is torch's
    # bicubic 2x interpolation.
    t, _ = default_upsampling_kernels(8, 1)
    x = np.random.default_rng(3).standard_normal((1, 16))
    want = F.interpolate(torch.tensor(x)[None, :, None], size=(1, 32), mode="bicubic", align_corners=False)[0, :, 0]
    np.testing.assert_allclose(up2_1d(x, t.astype(np.float64), 1)[:, 4:-4], want[:, 4:-4].numpy(), atol=1e-6)
