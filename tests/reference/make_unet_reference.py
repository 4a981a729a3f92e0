#!/usr/bin/python3
"""make_unet_reference.py: an independent PyTorch build of the docs/design.md, Network
U-Net, used to write tests/data/unet_reference.bin, which tests/test_unet_reference.c
checks the C forward and backward passes against (in the manner of llm.c's
test_gpt2: the C network must BE the specified network, not only agree with its
own finite differences).

The network below is written from docs/design.md, Network alone, with plain nn.Module
code; it does not read any C source. Parameter names follow the docs/design.md table,
and the script asserts they (and their shapes) equal the lists written out by
hand further down.

Run with Debian's PyTorch (CI does not run this; it only runs the C test against
the committed file):
    apt-get install -y python3-torch python3-numpy
    /usr/bin/python3 tests/reference/make_unet_reference.py [out.bin]
The default output is tests/data/unet_reference.bin next to this folder. The
output is deterministic for a given PyTorch build (fixed seeds, CPU, one thread).

What is computed, per case: all parameters random (uniform(-0.3, 0.3); GroupNorm
weights 1 + that), so that no gradient is trivially zero (the docs/design.md init
zeroes every residual branch's last layer); a batch of B = 3 images x_t ~
uniform(-1, 1), step indices t = 0, 417, 999 (0-based, as the network receives
them), eps ~ N(0, 1); eps_pred = net(x_t, t); loss = mean((eps - eps_pred)^2);
every parameter gradient of loss. The stored eps_pred, loss and gradients are
computed in float64 from the float32 inputs and parameters (exactly representable
in float64), then rounded to float32: they are the network's exact values to
float32 precision. The same computation in float32 is run too, and its worst
differences from float64 are printed: that is the float32 noise floor the C
test's tolerances are set from.

File format (all integers little-endian; floats IEEE-754 binary32 little-endian):
    magic     8 bytes  "DDPMREF1"
    version   u32      1
    n_cases   u32
    then n_cases cases, each:
      name          u32 length, then that many bytes (ASCII, no NUL)
      config        24 x i32: in_channels, image_size, ch, n_levels,
                    ch_mult[8] (unused entries 0), num_res_blocks, n_attn,
                    attn_res[8] (unused entries 0), groups, B
      n_tensors     u32
      n_tensors tensors, each:
        name    u32 length, then that many bytes
        dtype   u32: 0 = float32, 1 = int32
        ndim    u32 (0..4)
        dims    ndim x u32
        data    prod(dims) x 4 bytes
Tensors of a case, in this order: "x_t" [B,C,S,S], "t" int32 [B], "eps"
[B,C,S,S], "eps_pred" [B,C,S,S], "loss" [1], every parameter under its docs/design.md
name in module order, then "grad.<name>" for each; a case with dropout on then
has "dropout" [1] (p) and "dropout_seed" int32 [1]; an AdaGN case then
"scale_shift_norm" int32 [1] (1); a class-conditional case then "n_classes"
int32 [1] and "y" int32 [B] (the labels, -1 for "no class"). Its masks are ddpm's: the
ResBlocks in forward order each take the next ceil(n/4) Philox-4x32-10 counters
of (seed, stream 3), counter 0 first, n = B*C*H*W their dropout input's size,
element i from word i % 4 of counter i / 4 (src/ops/dropout.c; reimplemented
below from that description, so that the reference applies the same masks).
"""

import math
import struct
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

MAGIC = b"DDPMREF1"
VERSION = 1
MAX_LEVELS = 8
GN_EPS = 1e-6


# ----------------------------------------------------------------- the network


PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
STREAM_DROPOUT = 3
U32 = 0xFFFFFFFF


def philox4x32_10(seed, stream, counter):
    """Philox-4x32-10 (Salmon et al. 2011) of the 128-bit counter (counter, stream)
    under the 64-bit key seed: four 32-bit words."""
    c0, c1, c2, c3 = counter & U32, counter >> 32, stream & U32, stream >> 32
    k0, k1 = seed & U32, seed >> 32
    for _ in range(10):
        p0, p1 = PHILOX_M0 * c0, PHILOX_M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & U32, p1 & U32, ((p0 >> 32) ^ c3 ^ k1) & U32, p0 & U32
        k0, k1 = (k0 + PHILOX_W0) & U32, (k1 + PHILOX_W1) & U32
    return c0, c1, c2, c3


class PhiloxDropout:
    """Inverted dropout masks drawn as ddpm draws them: u = (24 high bits + 0.5) / 2^24,
    dropped when u < p, kept ones scaled by 1/(1-p) in float32."""

    def __init__(self, p, seed):
        self.p, self.seed, self.counter = p, seed, 0
        p32 = torch.tensor(p, dtype=torch.float32)
        self.keep = (torch.tensor(1.0, dtype=torch.float32) / (1.0 - p32)).item()
        self.p32 = p32.item()

    def next(self, shape):
        n = math.prod(shape)
        m = []
        for blk in range((n + 3) // 4):
            for w in philox4x32_10(self.seed, STREAM_DROPOUT, self.counter + blk):
                u = ((w >> 8) + 0.5) / 16777216.0
                m.append(0.0 if u < self.p32 else self.keep)
        self.counter += (n + 3) // 4
        return torch.tensor(m[:n], dtype=torch.float64).reshape(shape)


def timestep_embedding(t, dim):
    """docs/design.md, Network: half = dim/2, freq_i = exp(-ln(10000) * i/(half-1)),
    emb = [sin(t freq), cos(t freq)], t the 0-based step index. Evaluated in
    float64 whatever the network's dtype (the exact function; t * freq reaches
    ~1000 rad, where float32 arguments would be off by ~6e-5)."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64)
    freq = torch.exp(-math.log(10000.0) * i / (half - 1))
    arg = t.to(torch.float64)[:, None] * freq[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class ResBlock(nn.Module):
    """h = conv3x3(SiLU(GN(x))); h += Linear(SiLU(temb)) over H, W;
    h = conv3x3(Dropout(SiLU(GN(h)))); out = skip(x) + h.
    With scale_shift_norm (AdaGN, docs/design.md): Linear(SiLU(temb)) has 2 cout
    outputs, [scale, shift], nothing is added to h, and the second GN(h) is
    GN(h) * (1 + scale) + shift."""

    def __init__(self, cin, cout, emb, groups, dropout, scale_shift_norm=False):
        super().__init__()
        self.scale_shift_norm = scale_shift_norm
        self.norm1 = nn.GroupNorm(groups, cin, eps=GN_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(emb, 2 * cout if scale_shift_norm else cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=GN_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = dropout
        if cin != cout:
            self.skip = nn.Conv2d(cin, cout, 1)
        else:
            self.skip = None

    def forward(self, x, temb, masks=None):
        h = self.conv1(F.silu(self.norm1(x)))
        proj = self.temb_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift_norm:
            scale, shift = proj.chunk(2, dim=1)
            h = F.silu(self.norm2(h) * (1 + scale) + shift)
        else:
            h = F.silu(self.norm2(h + proj))
        if masks is not None:  # dropout with ddpm's masks
            h = h * masks.next(tuple(h.shape)).to(h.dtype)
        h = self.conv2(h)
        return (self.skip(x) if self.skip is not None else x) + h


class AttnBlock(nn.Module):
    """h = GN(x); q, k, v 1x1 convs; w_ij = softmax_j(q_i . k_j / sqrt(C)) over
    the H*W positions; h_i = sum_j w_ij v_j; out = x + proj(h)."""

    def __init__(self, c, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=GN_EPS)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, C, H * W)
        k = self.k(h).reshape(B, C, H * W)
        v = self.v(h).reshape(B, C, H * W)
        logits = torch.einsum("bci,bcj->bij", q, k) / math.sqrt(C)
        w = torch.softmax(logits, dim=2)  # over j
        h = torch.einsum("bij,bcj->bci", w, v).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        ch, mult, nrb = cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"]
        G, S, p = cfg["groups"], cfg["image_size"], cfg["dropout"]
        E = 4 * ch
        ss = bool(cfg.get("scale_shift_norm", False))
        self.n_classes = cfg.get("n_classes", 0)
        self.temb = nn.Sequential(nn.Linear(ch, E), nn.SiLU(), nn.Linear(E, E))
        if self.n_classes > 0:  # row n_classes: "no class"; added to the timestep embedding
            self.class_emb = nn.Embedding(self.n_classes + 1, E)
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch, 3, padding=1)
        # The modules are created by the same walk as forward() (docs/design.md's
        # loop), tracking channels through the skip stack, and numbered in order.
        self.down = nn.ModuleList()
        hs = [ch]
        c = ch
        for i in range(len(mult)):
            res = S >> i
            for _ in range(nrb):
                self.down.append(ResBlock(c, ch * mult[i], E, G, p, ss))
                c = ch * mult[i]
                if res in cfg["attn_res"]:
                    self.down.append(AttnBlock(c, G))
                hs.append(c)
            if i != len(mult) - 1:
                self.down.append(Downsample(c))
                hs.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, E, G, p, ss), AttnBlock(c, G), ResBlock(c, c, E, G, p, ss)])
        self.up = nn.ModuleList()
        for i in reversed(range(len(mult))):
            res = S >> i
            for _ in range(nrb + 1):
                self.up.append(ResBlock(c + hs.pop(), ch * mult[i], E, G, p, ss))
                c = ch * mult[i]
                if res in cfg["attn_res"]:
                    self.up.append(AttnBlock(c, G))
            if i != 0:
                self.up.append(Upsample(c))
        assert not hs
        self.norm_out = nn.GroupNorm(G, ch, eps=GN_EPS)
        # a learned-variance model (learn_sigma) outputs 2 x in_channels: the prediction, then v
        self.conv_out = nn.Conv2d(ch, cfg.get("out_channels", cfg["in_channels"]), 3, padding=1)

    def forward(self, x, t, masks=None, y=None):
        """y: class labels in 0..n_classes-1, or -1 (or y None) for "no class"."""
        cfg = self.cfg
        mult, nrb, S = cfg["ch_mult"], cfg["num_res_blocks"], cfg["image_size"]
        emb = timestep_embedding(t, cfg["ch"]).to(x.dtype)
        temb = self.temb(emb)
        if self.n_classes > 0:
            labels = torch.full((x.shape[0],), self.n_classes, dtype=torch.int64)
            if y is not None:
                labels = torch.where(y >= 0, y, labels)
            temb = temb + self.class_emb(labels)
        down, up = iter(self.down), iter(self.up)
        h = self.conv_in(x)
        hs = [h]
        for i in range(len(mult)):
            res = S >> i
            for _ in range(nrb):
                h = next(down)(h, temb, masks)
                if res in cfg["attn_res"]:
                    h = next(down)(h)
                hs.append(h)
            if i != len(mult) - 1:
                h = next(down)(h)
                hs.append(h)
        h = self.mid[0](h, temb, masks)
        h = self.mid[1](h)
        h = self.mid[2](h, temb, masks)
        for i in reversed(range(len(mult))):
            res = S >> i
            for _ in range(nrb + 1):
                h = next(up)(torch.cat([h, hs.pop()], dim=1), temb, masks)
                if res in cfg["attn_res"]:
                    h = next(up)(h)
            if i != 0:
                h = next(up)(h)
        assert not hs and next(down, None) is None and next(up, None) is None
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------- the names and shapes, by hand

# Case 1: 8x8 RGB, ch 8, ch_mult 1,2, one res block, attention at 4, 2 groups.
# Walk: conv_in 3->8 | down.0 Res 8->8, down.1 Down 8 (8x8 -> 4x4), down.2 Res
# 8->16 (skip conv), down.3 Attn 16 | mid Res 16, Attn 16, Res 16 | skip stack
# (top first) 16, 8, 8, 8: up.0 Res 16+16->16, up.1 Attn, up.2 Res 16+8->16,
# up.3 Attn, up.4 Up 16 (4x4 -> 8x8), up.5 Res 16+8->8, up.6 Res 8+8->8.
def _res(p, cin, cout, emb):
    r = [
        (p + ".norm1.weight", (cin,)), (p + ".norm1.bias", (cin,)),
        (p + ".conv1.weight", (cout, cin, 3, 3)), (p + ".conv1.bias", (cout,)),
        (p + ".temb_proj.weight", (cout, emb)), (p + ".temb_proj.bias", (cout,)),
        (p + ".norm2.weight", (cout,)), (p + ".norm2.bias", (cout,)),
        (p + ".conv2.weight", (cout, cout, 3, 3)), (p + ".conv2.bias", (cout,)),
    ]
    if cin != cout:
        r += [(p + ".skip.weight", (cout, cin, 1, 1)), (p + ".skip.bias", (cout,))]
    return r


def _attn(p, c):
    r = [(p + ".norm.weight", (c,)), (p + ".norm.bias", (c,))]
    for n in ("q", "k", "v", "proj"):
        r += [(p + "." + n + ".weight", (c, c, 1, 1)), (p + "." + n + ".bias", (c,))]
    return r


def _resample(p, c):
    return [(p + ".conv.weight", (c, c, 3, 3)), (p + ".conv.bias", (c,))]


EXPECTED_CASE1 = [
    ("temb.0.weight", (32, 8)), ("temb.0.bias", (32,)),
    ("temb.2.weight", (32, 32)), ("temb.2.bias", (32,)),
    ("conv_in.weight", (8, 3, 3, 3)), ("conv_in.bias", (8,)),
    ("down.0.norm1.weight", (8,)), ("down.0.norm1.bias", (8,)),
    ("down.0.conv1.weight", (8, 8, 3, 3)), ("down.0.conv1.bias", (8,)),
    ("down.0.temb_proj.weight", (8, 32)), ("down.0.temb_proj.bias", (8,)),
    ("down.0.norm2.weight", (8,)), ("down.0.norm2.bias", (8,)),
    ("down.0.conv2.weight", (8, 8, 3, 3)), ("down.0.conv2.bias", (8,)),
    ("down.1.conv.weight", (8, 8, 3, 3)), ("down.1.conv.bias", (8,)),
    ("down.2.norm1.weight", (8,)), ("down.2.norm1.bias", (8,)),
    ("down.2.conv1.weight", (16, 8, 3, 3)), ("down.2.conv1.bias", (16,)),
    ("down.2.temb_proj.weight", (16, 32)), ("down.2.temb_proj.bias", (16,)),
    ("down.2.norm2.weight", (16,)), ("down.2.norm2.bias", (16,)),
    ("down.2.conv2.weight", (16, 16, 3, 3)), ("down.2.conv2.bias", (16,)),
    ("down.2.skip.weight", (16, 8, 1, 1)), ("down.2.skip.bias", (16,)),
    ("down.3.norm.weight", (16,)), ("down.3.norm.bias", (16,)),
    ("down.3.q.weight", (16, 16, 1, 1)), ("down.3.q.bias", (16,)),
    ("down.3.k.weight", (16, 16, 1, 1)), ("down.3.k.bias", (16,)),
    ("down.3.v.weight", (16, 16, 1, 1)), ("down.3.v.bias", (16,)),
    ("down.3.proj.weight", (16, 16, 1, 1)), ("down.3.proj.bias", (16,)),
    ("mid.0.norm1.weight", (16,)), ("mid.0.norm1.bias", (16,)),
    ("mid.0.conv1.weight", (16, 16, 3, 3)), ("mid.0.conv1.bias", (16,)),
    ("mid.0.temb_proj.weight", (16, 32)), ("mid.0.temb_proj.bias", (16,)),
    ("mid.0.norm2.weight", (16,)), ("mid.0.norm2.bias", (16,)),
    ("mid.0.conv2.weight", (16, 16, 3, 3)), ("mid.0.conv2.bias", (16,)),
    ("mid.1.norm.weight", (16,)), ("mid.1.norm.bias", (16,)),
    ("mid.1.q.weight", (16, 16, 1, 1)), ("mid.1.q.bias", (16,)),
    ("mid.1.k.weight", (16, 16, 1, 1)), ("mid.1.k.bias", (16,)),
    ("mid.1.v.weight", (16, 16, 1, 1)), ("mid.1.v.bias", (16,)),
    ("mid.1.proj.weight", (16, 16, 1, 1)), ("mid.1.proj.bias", (16,)),
    ("mid.2.norm1.weight", (16,)), ("mid.2.norm1.bias", (16,)),
    ("mid.2.conv1.weight", (16, 16, 3, 3)), ("mid.2.conv1.bias", (16,)),
    ("mid.2.temb_proj.weight", (16, 32)), ("mid.2.temb_proj.bias", (16,)),
    ("mid.2.norm2.weight", (16,)), ("mid.2.norm2.bias", (16,)),
    ("mid.2.conv2.weight", (16, 16, 3, 3)), ("mid.2.conv2.bias", (16,)),
    ("up.0.norm1.weight", (32,)), ("up.0.norm1.bias", (32,)),
    ("up.0.conv1.weight", (16, 32, 3, 3)), ("up.0.conv1.bias", (16,)),
    ("up.0.temb_proj.weight", (16, 32)), ("up.0.temb_proj.bias", (16,)),
    ("up.0.norm2.weight", (16,)), ("up.0.norm2.bias", (16,)),
    ("up.0.conv2.weight", (16, 16, 3, 3)), ("up.0.conv2.bias", (16,)),
    ("up.0.skip.weight", (16, 32, 1, 1)), ("up.0.skip.bias", (16,)),
    ("up.1.norm.weight", (16,)), ("up.1.norm.bias", (16,)),
    ("up.1.q.weight", (16, 16, 1, 1)), ("up.1.q.bias", (16,)),
    ("up.1.k.weight", (16, 16, 1, 1)), ("up.1.k.bias", (16,)),
    ("up.1.v.weight", (16, 16, 1, 1)), ("up.1.v.bias", (16,)),
    ("up.1.proj.weight", (16, 16, 1, 1)), ("up.1.proj.bias", (16,)),
    ("up.2.norm1.weight", (24,)), ("up.2.norm1.bias", (24,)),
    ("up.2.conv1.weight", (16, 24, 3, 3)), ("up.2.conv1.bias", (16,)),
    ("up.2.temb_proj.weight", (16, 32)), ("up.2.temb_proj.bias", (16,)),
    ("up.2.norm2.weight", (16,)), ("up.2.norm2.bias", (16,)),
    ("up.2.conv2.weight", (16, 16, 3, 3)), ("up.2.conv2.bias", (16,)),
    ("up.2.skip.weight", (16, 24, 1, 1)), ("up.2.skip.bias", (16,)),
    ("up.3.norm.weight", (16,)), ("up.3.norm.bias", (16,)),
    ("up.3.q.weight", (16, 16, 1, 1)), ("up.3.q.bias", (16,)),
    ("up.3.k.weight", (16, 16, 1, 1)), ("up.3.k.bias", (16,)),
    ("up.3.v.weight", (16, 16, 1, 1)), ("up.3.v.bias", (16,)),
    ("up.3.proj.weight", (16, 16, 1, 1)), ("up.3.proj.bias", (16,)),
    ("up.4.conv.weight", (16, 16, 3, 3)), ("up.4.conv.bias", (16,)),
    ("up.5.norm1.weight", (24,)), ("up.5.norm1.bias", (24,)),
    ("up.5.conv1.weight", (8, 24, 3, 3)), ("up.5.conv1.bias", (8,)),
    ("up.5.temb_proj.weight", (8, 32)), ("up.5.temb_proj.bias", (8,)),
    ("up.5.norm2.weight", (8,)), ("up.5.norm2.bias", (8,)),
    ("up.5.conv2.weight", (8, 8, 3, 3)), ("up.5.conv2.bias", (8,)),
    ("up.5.skip.weight", (8, 24, 1, 1)), ("up.5.skip.bias", (8,)),
    ("up.6.norm1.weight", (16,)), ("up.6.norm1.bias", (16,)),
    ("up.6.conv1.weight", (8, 16, 3, 3)), ("up.6.conv1.bias", (8,)),
    ("up.6.temb_proj.weight", (8, 32)), ("up.6.temb_proj.bias", (8,)),
    ("up.6.norm2.weight", (8,)), ("up.6.norm2.bias", (8,)),
    ("up.6.conv2.weight", (8, 8, 3, 3)), ("up.6.conv2.bias", (8,)),
    ("up.6.skip.weight", (8, 16, 1, 1)), ("up.6.skip.bias", (8,)),
    ("norm_out.weight", (8,)), ("norm_out.bias", (8,)),
    ("conv_out.weight", (3, 8, 3, 3)), ("conv_out.bias", (3,)),
]

# Case 2: 8x8 gray, ch 4, ch_mult 1,2,2 (4, 8, 8 channels; 8x8, 4x4, 2x2), two
# res blocks, attention at 8 and at 2, 2 groups. The module table, worked out by
# hand from docs/design.md's loop (skip stack pushes, bottom first: conv_in 4, down.1 4,
# down.3 4, down.4 4, down.5 8, down.6 8, down.7 8, down.9 8, down.11 8), is
# (prefix, kind, cin, cout); names and shapes follow from it by _res/_attn/_resample.
MODULES_CASE2 = [
    ("down.0", "res", 4, 4), ("down.1", "attn", 4, 4), ("down.2", "res", 4, 4), ("down.3", "attn", 4, 4),
    ("down.4", "down", 4, 4),
    ("down.5", "res", 4, 8), ("down.6", "res", 8, 8), ("down.7", "down", 8, 8),
    ("down.8", "res", 8, 8), ("down.9", "attn", 8, 8), ("down.10", "res", 8, 8), ("down.11", "attn", 8, 8),
    ("mid.0", "res", 8, 8), ("mid.1", "attn", 8, 8), ("mid.2", "res", 8, 8),
    # level 2 (2x2): pops 8 (down.11), 8 (down.9), 8 (down.7)
    ("up.0", "res", 16, 8), ("up.1", "attn", 8, 8), ("up.2", "res", 16, 8), ("up.3", "attn", 8, 8),
    ("up.4", "res", 16, 8), ("up.5", "attn", 8, 8), ("up.6", "up", 8, 8),
    # level 1 (4x4): pops 8 (down.6), 8 (down.5), 4 (down.4)
    ("up.7", "res", 16, 8), ("up.8", "res", 16, 8), ("up.9", "res", 12, 8), ("up.10", "up", 8, 8),
    # level 0 (8x8): pops 4 (down.3), 4 (down.1), 4 (conv_in)
    ("up.11", "res", 12, 4), ("up.12", "attn", 4, 4), ("up.13", "res", 8, 4), ("up.14", "attn", 4, 4),
    ("up.15", "res", 8, 4), ("up.16", "attn", 4, 4),
]


def expected_from_modules(mods, in_channels, ch):
    E = 4 * ch
    r = [("temb.0.weight", (E, ch)), ("temb.0.bias", (E,)), ("temb.2.weight", (E, E)), ("temb.2.bias", (E,)),
         ("conv_in.weight", (ch, in_channels, 3, 3)), ("conv_in.bias", (ch,))]
    for p, kind, cin, cout in mods:
        if kind == "res":
            r += _res(p, cin, cout, E)
        elif kind == "attn":
            r += _attn(p, cin)
        else:
            r += _resample(p, cin)
    r += [("norm_out.weight", (ch,)), ("norm_out.bias", (ch,)),
          ("conv_out.weight", (in_channels, ch, 3, 3)), ("conv_out.bias", (in_channels,))]
    return r


CASES = [
    dict(name="rgb8_ch8_mult1-2_res1_attn4_g2", in_channels=3, image_size=8, ch=8, ch_mult=[1, 2],
         num_res_blocks=1, attn_res=[4], groups=2, dropout=0.0, seed=20240601,
         expected=EXPECTED_CASE1),
    dict(name="gray8_ch4_mult1-2-2_res2_attn8-2_g2", in_channels=1, image_size=8, ch=4, ch_mult=[1, 2, 2],
         num_res_blocks=2, attn_res=[8, 2], groups=2, dropout=0.0, seed=20240602,
         expected=expected_from_modules(MODULES_CASE2, 1, 4)),
    # case 1's network with dropout 0.2 on, masks from seed 77
    dict(name="rgb8_ch8_mult1-2_res1_attn4_g2_dropout0.2", in_channels=3, image_size=8, ch=8, ch_mult=[1, 2],
         num_res_blocks=1, attn_res=[4], groups=2, dropout=0.2, dropout_seed=77, seed=20240603,
         expected=EXPECTED_CASE1),
]


def adagn_classes(expected, n_classes):
    """Case 1's list for an AdaGN class-conditional network: class_emb.weight
    [n_classes + 1, 4 ch] after temb.2, and every temb_proj with 2 cout outputs."""
    r = []
    for n, shape in expected:
        if ".temb_proj." in n:
            shape = (2 * shape[0],) + tuple(shape[1:])
        r.append((n, shape))
        if n == "temb.2.bias":
            r.append(("class_emb.weight", (n_classes + 1, expected[2][1][0])))
    return r


# case 1's network with AdaGN in every ResBlock and 3 classes, labels 2, "no class", 0
CASES.append(dict(name="rgb8_ch8_mult1-2_res1_attn4_g2_adagn_classes3", in_channels=3, image_size=8, ch=8,
                  ch_mult=[1, 2], num_res_blocks=1, attn_res=[4], groups=2, dropout=0.0, seed=20240604,
                  scale_shift_norm=True, n_classes=3, y=[2, -1, 0],
                  expected=adagn_classes(EXPECTED_CASE1, 3)))

T_STEPS = [0, 417, 999]  # 0-based indices: the first and last steps and one between


# ----------------------------------------------------------------- running


def randomize(net, gen):
    """Every parameter uniform(-0.3, 0.3), GroupNorm weights 1 + that (float32)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            u = (torch.rand(p.shape, generator=gen, dtype=torch.float32) * 2 - 1) * 0.3
            if ".norm" in "." + name and name.endswith(".weight"):
                u = u + 1
            p.copy_(u)


def run(net, x_t, t, eps, dtype, y=None):
    net = net.to(dtype)
    net.zero_grad(set_to_none=True)
    p = net.cfg["dropout"]
    masks = PhiloxDropout(p, net.cfg["dropout_seed"]) if p > 0 else None
    eps_pred = net(x_t.to(dtype), t, masks, y)
    loss = torch.mean((eps.to(dtype) - eps_pred) ** 2)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    return eps_pred.detach().clone(), loss.detach().clone(), grads


def pack_tensor(name, arr, dtype):
    nb = name.encode("ascii")
    out = struct.pack("<I", len(nb)) + nb + struct.pack("<II", dtype, arr.dim())
    out += b"".join(struct.pack("<I", d) for d in arr.shape)
    if dtype == 0:
        a = arr.detach().to(torch.float32).contiguous().numpy().astype("<f4")
    else:
        a = arr.detach().to(torch.int32).contiguous().numpy().astype("<i4")
    return out + a.tobytes()


def make_case(case):
    gen = torch.Generator().manual_seed(case["seed"])
    net = UNet(case)
    names = [(n, tuple(p.shape)) for n, p in net.named_parameters()]
    assert names == [(n, tuple(s)) for n, s in case["expected"]], "names/shapes differ from the hand-written list"
    assert [n for n in net.state_dict().keys()] == [n for n, _ in names]
    randomize(net, gen)
    B, C, S = len(T_STEPS), case["in_channels"], case["image_size"]
    x_t = torch.rand((B, C, S, S), generator=gen, dtype=torch.float32) * 2 - 1
    t = torch.tensor(T_STEPS, dtype=torch.int64)
    eps = torch.randn((B, C, S, S), generator=gen, dtype=torch.float32)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}

    y = torch.tensor(case["y"], dtype=torch.int64) if "y" in case else None
    net.eval()  # dropout, when on, is applied by PhiloxDropout, not by the training flag
    ep64, loss64, g64 = run(net, x_t, t, eps, torch.float64, y)
    ep32, loss32, g32 = run(net, x_t, t, eps, torch.float32, y)

    # The float32 noise floor, measured as tests/test_unet_reference.c measures
    # the C code: eps_pred's worst |f32 - f64| over its largest |value|; each
    # gradient's worst |f32 - f64| over its scale s = max(max|g|, 1e-3 * the
    # largest |g| of the case) (the floor covers the attention key biases, whose
    # exact gradient is 0: softmax ignores a shift shared by a whole row).
    print(f"case {case['name']}: {sum(p.numel() for p in params.values())} parameters")
    print(f"  loss f64 {loss64.item():.9f} f32 {loss32.item():.9f} "
          f"|diff|/loss {abs(loss64.item() - loss32.item()) / loss64.item():.3g}")
    d = (ep32.double() - ep64).abs().max().item()
    print(f"  eps_pred: max|f32-f64| {d:.3g}, / max|eps_pred| ({ep64.abs().max().item():.3g}): "
          f"{d / ep64.abs().max().item():.3g}")
    floor = 1e-3 * max(g.abs().max().item() for g in g64.values())
    worst = max(((g32[n].double() - g64[n]).abs().max().item() / max(g64[n].abs().max().item(), floor), n)
                for n in params)
    print(f"  gradients: worst max|f32-f64| / s {worst[0]:.3g} ({worst[1]})")

    cfg = [C, S, case["ch"], len(case["ch_mult"])]
    cfg += case["ch_mult"] + [0] * (MAX_LEVELS - len(case["ch_mult"]))
    cfg += [case["num_res_blocks"], len(case["attn_res"])]
    cfg += case["attn_res"] + [0] * (MAX_LEVELS - len(case["attn_res"]))
    cfg += [case["groups"], B]
    tensors = [pack_tensor("x_t", x_t, 0), pack_tensor("t", t, 1), pack_tensor("eps", eps, 0),
               pack_tensor("eps_pred", ep64, 0), pack_tensor("loss", loss64.reshape(1), 0)]
    tensors += [pack_tensor(n, p, 0) for n, p in params.items()]
    tensors += [pack_tensor("grad." + n, g64[n], 0) for n in params]
    if case["dropout"] > 0:
        tensors += [pack_tensor("dropout", torch.tensor([case["dropout"]], dtype=torch.float32), 0),
                    pack_tensor("dropout_seed", torch.tensor([case["dropout_seed"]], dtype=torch.int32), 1)]
    if case.get("scale_shift_norm"):
        tensors += [pack_tensor("scale_shift_norm", torch.tensor([1], dtype=torch.int32), 1)]
    if case.get("n_classes", 0) > 0:
        tensors += [pack_tensor("n_classes", torch.tensor([case["n_classes"]], dtype=torch.int32), 1),
                    pack_tensor("y", y, 1)]
    nb = case["name"].encode("ascii")
    out = struct.pack("<I", len(nb)) + nb + struct.pack("<24i", *cfg) + struct.pack("<I", len(tensors))
    return out + b"".join(tensors)


def main():
    torch.set_num_threads(1)
    here = Path(__file__).resolve().parent
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "data" / "unet_reference.bin"
    blob = MAGIC + struct.pack("<II", VERSION, len(CASES)) + b"".join(make_case(c) for c in CASES)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(out)
    print(f"wrote {out} ({len(blob)} bytes)")


if __name__ == "__main__":
    main()
