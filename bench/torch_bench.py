#!/usr/bin/python3
"""torch_bench.py: the PyTorch side of scripts/bench.sh.

Times the same U-Net as `ddpm bench` (the independent PyTorch build of the
network in tests/reference/make_unet_reference.py, docs/design.md "Network"),
with the same work per phase:
  train:          forward, MSE against random eps, backward, global-norm clip 1.0,
                  Adam, EMA of the weights (decay 0.999), on random x_t and t;
  sample_forward: one network evaluation per image, no dropout, no autograd.
Each phase warms up, then runs 5 repetitions of about seconds/5 each; the figure
is the median repetition (as `ddpm bench`). Peak RSS is the process's maximum
resident set (getrusage), as `ddpm bench` reports its own.

Prints one JSON object with the same field names as `ddpm bench --json`
(train.images_per_sec, sample_forward.images_per_sec, peak_rss_mb).
Run with Debian's PyTorch: apt-get install python3-torch (Debian 12: 1.13).
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPS = 5


def load_reference():
    path = Path(__file__).resolve().parent.parent / "tests" / "reference" / "make_unet_reference.py"
    spec = importlib.util.spec_from_file_location("unet_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cpu_capability():
    """ATen's vector kernels in use (AVX512, AVX2, DEFAULT), as torch reports it."""
    for line in torch.__config__.show().splitlines():
        if "CPU capability usage:" in line:
            return line.split(":", 1)[1].strip()
    return ""


def time_phase(fn, rep_seconds):
    fn()  # warm-up (allocator, oneDNN primitive caches)
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    n = max(1, int(rep_seconds / one))
    per = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per.append((time.perf_counter() - t0) / n)
    return statistics.median(per)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--ch", type=int, default=32)
    ap.add_argument("--ch-mult", default="1,2,2")
    ap.add_argument("--res-blocks", type=int, default=2)
    ap.add_argument("--attn", default="14")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ref = load_reference()
    cfg = {
        "in_channels": a.channels, "image_size": a.size, "ch": a.ch,
        "ch_mult": [int(v) for v in a.ch_mult.split(",")], "num_res_blocks": a.res_blocks,
        "attn_res": [int(v) for v in a.attn.split(",") if v], "groups": a.groups,
        "dropout": a.dropout,
    }
    net = ref.UNet(cfg)
    n_params = sum(p.numel() for p in net.parameters())
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    B, C, S = a.batch, a.channels, a.size
    x_t = torch.randn(B, C, S, S)
    eps = torch.randn(B, C, S, S)
    t = torch.randint(0, a.timesteps, (B,))

    def train_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(net(x_t, t), eps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(ema, 0.999)
            torch._foreach_add_(ema, [p.detach() for p in net.parameters()], alpha=0.001)

    def sample_forward():
        net.eval()
        with torch.no_grad():
            net(x_t, t)

    rep = a.seconds / REPS
    train_s = time_phase(train_step, rep)
    sample_s = time_phase(sample_forward, rep)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "program": "pytorch",
        "torch_version": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": cpu_capability(),
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", ""),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "threads": torch.get_num_threads(),
        "batch": B,
        "n_params": n_params,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
        "openblas_l2_size": os.environ.get("OPENBLAS_L2_SIZE", ""),
        "train": {"ms_per_step": train_s * 1e3, "images_per_sec": B / train_s},
        "sample_forward": {"ms_per_step": sample_s * 1e3, "images_per_sec": B / sample_s},
        "peak_rss_mb": rss_kb / 1024.0,
    }
    json.dump(out, sys.stdout, separators=(",", ":"))
    print()


if __name__ == "__main__":
    main()
