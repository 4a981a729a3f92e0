#!/usr/bin/python3
"""make_inception_reference.py: the FID Inception-v3 in PyTorch at reduced width,
with random weights, and what tests/test_inception.c and tests/test_fid.c check
the C code against.

The network is written here from pytorch-fid's architecture (its InceptionV3
wrapper over torchvision's Inception3 with the FID blocks: FIDInceptionA, C,
E_1 and E_2): every BasicConv2d is a conv without bias, BatchNorm with eps 0.001
and ReLU; the average pools of the A, C and E_1 blocks exclude the padding
(count_include_pad=False) and E_2's pool branch is a 3x3 max pool, stride 1,
padding 1. Inputs in [0, 1] are resized to 299x299 (bilinear, align_corners
False), mapped to [-1, 1] by 2x - 1, and the features are the global average
of Mixed_7c's output. Every channel count of the real network is divided by
WIDTH_DIV (so 2048 features become 2048 / WIDTH_DIV); the C code takes the
widths from the weights' shapes, so the same reader and forward run both.

Outputs (in tests/data/inception/, or the folder given as the first argument):
  inception_w16.pth        the reduced network's state_dict, torch.save (zip format),
                           with torchvision's names (Conv2d_1a_3x3.conv.weight,
                           ...bn.running_var, ...bn.num_batches_tracked as int64,
                           fc.weight and fc.bias: ignored by ddpm)
  misshaped.pth            Conv2d_1a_3x3.conv.weight of shape [8, 2, 3, 3] alone
  small_zip.pth, small_legacy.pth   a three-tensor state_dict in the zip and in
                           the legacy (pre-1.6, _use_new_zipfile_serialization
                           False) format, for the reader's own tests
  reference.safetensors    F32 tensors:
      img<k>   [H, W, C]   the test images' pixels (0..255)
      feat     [n, D]      their features, network run in float64
      rs<k>    [C, h, w]   img<k> / 255 resized to (h, w) by torch's bilinear
                           (align_corners False); h, w in the metadata
      rs299    [3, 43, 43] rows and columns 0, 7, 14, ... of img0 resized to 299
      fa [Na, d], fb [Nb, d]   two feature sets for the FID/KID checks
    __metadata__ (strings): "sizes" JSON list of [h, w] for rs<k>; "fid_scipy"
      (pytorch-fid's formula with scipy.linalg.sqrtm), "fid_eigen" (the same
      with the trace of the square root from eigenvalues), "kid_full" (the
      unbiased MMD^2 of fa[:Nk] and fb[:Nk] with the cubic kernel, one subset
      holding every row), "float32_gap" (how far PyTorch's own float32 run is
      from the float64 features, relative to the largest feature: the noise
      floor of the C test's tolerance); 17 significant digits.

Run with Debian's PyTorch (CI does not; it runs the C tests on these files):
    /usr/bin/python3 tests/reference/make_inception_reference.py
"""

import collections
import json
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTH_DIV = 16


def w(c):
    return max(1, c // WIDTH_DIV)


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg_pool_exclusive(x, count_include_pad=False):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=count_include_pad)


class BlockA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, w(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, w(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(w(48), w(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, w(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)
        self.out_channels = w(64) + w(64) + w(96) + pool_features

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(avg_pool_exclusive(x))
        return torch.cat([a, b, c, d], 1)


class BlockB(nn.Module):  # Mixed_6a (torchvision's InceptionB)
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, w(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, w(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), kernel_size=3, stride=2)
        self.out_channels = w(384) + w(96) + cin

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], 1)


class BlockC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, w(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, w(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, w(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, w(192), kernel_size=1)
        self.out_channels = 4 * w(192)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = m(c)
        d = self.branch_pool(avg_pool_exclusive(x))
        return torch.cat([a, b, c, d], 1)


class BlockD(nn.Module):  # Mixed_7a (torchvision's InceptionD)
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, w(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(w(192), w(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, w(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(w(192), w(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(w(192), w(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(w(192), w(192), kernel_size=3, stride=2)
        self.out_channels = w(320) + w(192) + cin

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for m in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = m(b)
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], 1)


class BlockE(nn.Module):
    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool  # E_2 (Mixed_7c): max pool; E_1: average without padding
        self.branch1x1 = BasicConv2d(cin, w(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, w(384), kernel_size=1)
        self.branch3x3_2a = BasicConv2d(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, w(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(448), w(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, w(192), kernel_size=1)
        self.out_channels = w(320) + 4 * w(384) + w(192)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        if self.max_pool:
            p = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            p = avg_pool_exclusive(x)
        d = self.branch_pool(p)
        return torch.cat([a, b, c, d], 1)


class FIDInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, w(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(w(32), w(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(w(32), w(64), kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(w(64), w(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(w(80), w(192), kernel_size=3)
        self.Mixed_5b = BlockA(w(192), w(32))
        self.Mixed_5c = BlockA(self.Mixed_5b.out_channels, w(64))
        self.Mixed_5d = BlockA(self.Mixed_5c.out_channels, w(64))
        self.Mixed_6a = BlockB(self.Mixed_5d.out_channels)
        self.Mixed_6b = BlockC(self.Mixed_6a.out_channels, w(128))
        self.Mixed_6c = BlockC(self.Mixed_6b.out_channels, w(160))
        self.Mixed_6d = BlockC(self.Mixed_6c.out_channels, w(160))
        self.Mixed_6e = BlockC(self.Mixed_6d.out_channels, w(192))
        self.Mixed_7a = BlockD(self.Mixed_6e.out_channels)
        self.Mixed_7b = BlockE(self.Mixed_7a.out_channels, max_pool=False)
        self.Mixed_7c = BlockE(self.Mixed_7b.out_channels, max_pool=True)
        self.n_features = self.Mixed_7c.out_channels
        # pytorch-fid's weights carry the 1008-class head; the features never use it.
        self.fc = nn.Linear(self.n_features, 8)

    def features(self, x01):
        x = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, "Mixed_" + name)(x)
        return x.mean(dim=(2, 3))


def randomize(model, gen):
    """He-normal convolutions and BatchNorm statistics near (0, 1), so that the
    activations keep their scale through the 94 ReLU layers (no block goes dead,
    none explodes) and a wrong pooling or padding changes the features."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            m.weight.data = torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.8 + 0.4 * torch.rand(n, generator=gen)
            m.bias.data = 0.2 * torch.rand(n, generator=gen) - 0.1
            m.running_mean.data = 0.2 * torch.rand(n, generator=gen) - 0.1
            m.running_var.data = 0.6 + 0.8 * torch.rand(n, generator=gen)
            m.num_batches_tracked.fill_(1000)
        elif isinstance(m, nn.Linear):
            m.weight.data = torch.randn(m.weight.shape, generator=gen) * 0.1
            m.bias.data = torch.zeros(m.bias.shape)


def test_images(rng):
    """Several sizes and channel counts: 28x28 gray (Fashion-MNIST), 32x32 RGB
    (CIFAR), non-square both ways, one larger than 299 (a downscale) and one
    exactly 299 (no resampling); the large ones gray to keep the file small."""
    shapes = [(28, 28, 1), (32, 32, 3), (40, 24, 3), (17, 45, 1), (307, 300, 1), (299, 299, 1)]
    images = []
    for k, (h, w_, c) in enumerate(shapes):
        yy, xx = np.mgrid[0:h, 0:w_]
        base = 127.5 + 100 * np.sin(xx / (3.0 + k) + 0.3 * k) * np.cos(yy / (4.0 + k))
        img = np.stack([base + 40 * rng.standard_normal((h, w_)) for _ in range(c)], axis=2)
        images.append(np.clip(np.round(img), 0, 255).astype(np.float32))
    return images


def resize(img_hwc, h, w_):
    x = torch.from_numpy(img_hwc / np.float32(255)).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(h, w_), mode="bilinear", align_corners=False)[0]


def fid_scipy(a, b):
    """pytorch-fid's calculate_frechet_distance on the statistics of a and b."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_eigen(a, b):
    """Tr((S1 S2)^(1/2)) = sum of sqrt of the eigenvalues of S1^(1/2) S2 S1^(1/2)
    (symmetric, positive semi-definite: the same eigenvalues as S1 S2)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    lam, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(lam, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr = np.sqrt(np.clip(ev, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr)


def mmd2_unbiased(x, y):
    """KID's unbiased MMD^2 (Binkowski et al. 2018) with k(x, y) = (x.y / d + 1)^3."""
    d = x.shape[1]
    m = x.shape[0]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def save_safetensors(path, tensors, meta):
    header = {"__metadata__": meta}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "data" / "inception"
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(24)
    rng = np.random.default_rng(24)

    model = FIDInception()
    randomize(model, gen)
    model.eval()
    torch.save(model.state_dict(), out / "inception_w16.pth")

    small = OrderedDict()
    small["a.weight"] = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4
    small["a.count"] = torch.tensor(7, dtype=torch.int64)
    small["b"] = torch.tensor([-1.5, 2.25, 1e-3], dtype=torch.float32)
    small["c.view"] = torch.arange(12, dtype=torch.float32)[4:10].reshape(3, 2)  # offset into its storage
    torch.save(small, out / "small_zip.pth")
    torch.save(small, out / "small_legacy.pth", _use_new_zipfile_serialization=False)
    # the first tensor the loader reads, with 2 input channels where RGB has 3
    misshaped = collections.OrderedDict()
    misshaped["Conv2d_1a_3x3.conv.weight"] = torch.zeros(8, 2, 3, 3)
    torch.save(misshaped, out / "misshaped.pth")

    images = test_images(rng)
    tensors = OrderedDict()
    feats64, feats32 = [], []
    with torch.no_grad():
        m64 = FIDInception()
        m64.load_state_dict(model.state_dict())
        m64 = m64.double().eval()
        for k, img in enumerate(images):
            tensors["img%d" % k] = img
            x = torch.from_numpy(img.astype(np.float64) / 255).permute(2, 0, 1)[None]
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)  # gray to RGB as PIL's convert("RGB")
            feats64.append(m64.features(x)[0].numpy())
            feats32.append(model.features(x.float())[0].numpy())
    feat = np.stack(feats64)
    gap = float(np.abs(np.stack(feats32) - feat).max() / np.abs(feat).max())
    tensors["feat"] = feat.astype(np.float32)
    print("features: %d per image, max %.4g, min %.4g, mean %.4g; float32 gap %.3g" %
          (feat.shape[1], feat.max(), feat.min(), feat.mean(), gap))

    sizes = [[61, 61], [47, 13], [20, 30], [9, 100], [64, 64], [31, 77]]
    for k, (img, (h, w_)) in enumerate(zip(images, sizes)):
        tensors["rs%d" % k] = resize(img, h, w_).numpy()
    tensors["rs299"] = resize(images[0], 299, 299)[:, ::7, ::7].numpy()

    # Two feature sets with different means and covariances, rank-deficient
    # covariance in fb (more dimensions than rows minus one), as real FID on few images.
    d = 16
    fa = rng.standard_normal((50, d)) @ rng.standard_normal((d, d)) * 0.5 + 1.0
    fb = rng.standard_normal((12, d)) @ rng.standard_normal((d, d)) * 0.7 + 0.8
    fa, fb = fa.astype(np.float32), fb.astype(np.float32)
    tensors["fa"], tensors["fb"] = fa, fb
    a64, b64 = fa.astype(np.float64), fb.astype(np.float64)
    nk = 12
    meta = {
        "sizes": json.dumps(sizes),
        "fid_scipy": "%.17g" % fid_scipy(a64, b64),
        "fid_eigen": "%.17g" % fid_eigen(a64, b64),
        "kid_full": "%.17g" % mmd2_unbiased(a64[:nk], b64[:nk]),
        "kid_rows": str(nk),
        "float32_gap": "%.3g" % gap,
    }
    print("fid scipy %s eigen %s kid %s" % (meta["fid_scipy"], meta["fid_eigen"], meta["kid_full"]))
    save_safetensors(out / "reference.safetensors", tensors, meta)
    print("n_features", model.n_features, "params",
          sum(v.numel() for v in model.state_dict().values()))


if __name__ == "__main__":
    main()
