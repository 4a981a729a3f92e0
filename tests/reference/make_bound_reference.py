#!/usr/bin/python3
"""make_bound_reference.py: the whole variational bound of DDPM (Ho et al. 2020,
eq. 5), computed independently of the C code, for tests/test_eval.c to check
ddpm_bound against: tests/data/bound_reference.safetensors.

The network is the PyTorch U-Net of make_unet_reference.py (written from
docs/design.md (the network); imported from the same folder), case
gray8_ch4_mult1-2-2_res2_attn8-2_g2 with random weights (uniform(-0.3, 0.3),
GroupNorm weights 1 + that). The bound is written here from the paper and
docs/design.md (the math) with numpy in float64, the network run in float64:

    x_t      = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_{k,t}   (one eps per image and t)
    L_T      = sum_d KL(N(sqrt(abar_T) x_0, 1 - abar_T) || N(0, 1))
    L_{t-1}  = sum_d KL(N(mu~(x_0, x_t), beta~_t) || N(mu_theta, sigma_t^2)),  t = 2..T
    L_0      = -sum_d log of the mass of N(mu_theta, sigma_1^2) on x_0's bin
    mu_theta = mu~(clip(x0_pred), x_t) (clip) or (x_t - beta_t/sqrt(1-abar_t) eps_theta)/sqrt(alpha_t)
    sigma_t^2 = beta_t or beta~_t; at t = 1 beta~_2 for both
    bins: [x - 1/255, x + 1/255], (-inf, -1 + 1/255] for x = -1, [1 - 1/255, inf) for x = 1

The decoder's bin masses are computed with mpmath at 50 significant digits
(ncdf(b) - ncdf(a), then the log), so they do not depend on any double-precision
tail trick: with random weights the decoder mean is far from x_0 and the masses
reach e^-10000, where a plain double difference of CDFs is 0.

Output (a safetensors file, F32 tensors, all little-endian):
    every U-Net parameter under its docs/design.md name
    x0      [n, C, S, S]       on the 256-level grid, including -1 and 1
    noise   [n, T, C, S, S]    the eps of x_t for image k at 0-based step i
    terms.<var>.<clip> [n, T]  nats: index i = t - 1 holds L_0 (i = 0) or L_{t-1}
    prior   [n]                L_T, nats
  __metadata__:
    config    JSON: in_channels, image_size, ch, ch_mult, num_res_blocks,
              attn_res, groups, timesteps, beta_start, beta_end, n_images
    expected  JSON: for each "<var>.<clip>" (var beta|beta-tilde, clip clip|noclip)
              the bits/dim means over images of total, prior, vb, decoder, as
              17-digit decimals (float64)
    float32_noise  JSON: the same bound with the network run in float32: how far
              float32 moves it (the noise floor of the C test's tolerance)

Run with Debian's PyTorch (CI does not run this; it only runs the C test):
    apt-get install -y python3-torch python3-numpy python3-mpmath
    /usr/bin/python3 tests/reference/make_bound_reference.py [out.safetensors]
"""

import json
import math
import struct
import sys
from pathlib import Path

import mpmath
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_unet_reference import CASES, UNet, randomize  # noqa: E402

T = 40
BETA_START, BETA_END = 1e-3, 0.2  # a short schedule that still ends near N(0, I)
N_IMAGES = 3
SEED = 20241123
mpmath.mp.dps = 50


def schedule():
    """docs/design.md (the math), linear: beta_t evenly spaced; products in float64."""
    beta = np.array([BETA_START + (BETA_END - BETA_START) * i / (T - 1) for i in range(T)], dtype=np.float64)
    alpha = 1.0 - beta
    abar = np.cumprod(alpha)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = (1.0 - abar_prev) / (1.0 - abar) * beta
    coef_x0 = np.sqrt(abar_prev) * beta / (1.0 - abar)
    coef_xt = np.sqrt(alpha) * (1.0 - abar_prev) / (1.0 - abar)
    return dict(beta=beta, alpha=alpha, abar=abar, post_var=post_var, coef_x0=coef_x0, coef_xt=coef_xt)


def normal_kl(m1, v1, m2, v2):
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


def log_bin_mass(x, mean, sigma):
    """log of the N(mean, sigma^2) mass on x's bin, in 50-digit arithmetic."""
    x, mean, sigma = mpmath.mpf(float(x)), mpmath.mpf(float(mean)), mpmath.mpf(float(sigma))
    h = mpmath.mpf(1) / 255
    hi = mpmath.mpf(1) if x > 0.999 else mpmath.ncdf((x + h - mean) / sigma)
    lo = mpmath.mpf(0) if x < -0.999 else mpmath.ncdf((x - h - mean) / sigma)
    return float(mpmath.log(hi - lo))


def bound_terms(net, x0, noise, sch, var, clip, dtype):
    """terms [n, T] (nats) and prior [n] for one variance / clipping choice."""
    n = x0.shape[0]
    terms = np.zeros((n, T))
    for i in range(T):
        abar, beta, alpha = sch["abar"][i], sch["beta"][i], sch["alpha"][i]
        x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise[:, i]
        with torch.no_grad():
            eps = net(torch.from_numpy(x_t).to(dtype), torch.full((n,), i, dtype=torch.int64)).double().numpy()
        x0_pred = (x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        if clip:
            mean = sch["coef_x0"][i] * np.clip(x0_pred, -1, 1) + sch["coef_xt"][i] * x_t
        else:
            mean = (x_t - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha)
        if i == 0:
            sigma = math.sqrt(sch["post_var"][1])  # beta~_2 for both choices
            for k in range(n):
                terms[k, 0] = -sum(log_bin_mass(a, b, sigma) for a, b in zip(x0[k].ravel(), mean[k].ravel()))
        else:
            var_model = beta if var == "beta" else sch["post_var"][i]
            post_mean = sch["coef_x0"][i] * x0 + sch["coef_xt"][i] * x_t
            kl = normal_kl(post_mean, sch["post_var"][i], mean, var_model)
            terms[:, i] = kl.reshape(n, -1).sum(axis=1)
    ab = sch["abar"][-1]
    prior = normal_kl(math.sqrt(ab) * x0, 1 - ab, 0.0, 1.0).reshape(n, -1).sum(axis=1)
    return terms, prior


def summary(terms, prior, D):
    to_bpd = 1.0 / (D * math.log(2))
    vb = terms[:, 1:].sum(axis=1)
    dec = terms[:, 0]
    return dict(total=float(np.mean(prior + vb + dec) * to_bpd), prior=float(np.mean(prior) * to_bpd),
                vb=float(np.mean(vb) * to_bpd), decoder=float(np.mean(dec) * to_bpd))


def write_safetensors(path, tensors, metadata):
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, arr in tensors:
        b = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    tmp.replace(path)


def main():
    torch.set_num_threads(1)
    here = Path(__file__).resolve().parent
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "data" / "bound_reference.safetensors"
    case = dict(next(c for c in CASES if c["name"] == "gray8_ch4_mult1-2-2_res2_attn8-2_g2"))
    gen = torch.Generator().manual_seed(SEED)
    net = UNet(case)
    randomize(net, gen)
    net.eval()
    C, S = case["in_channels"], case["image_size"]
    D = C * S * S
    levels = torch.randint(0, 256, (N_IMAGES, C, S, S), generator=gen)
    levels.view(-1)[:4] = torch.tensor([0, 255, 0, 255])  # both open ends in every run
    x0 = (levels.double() / 127.5 - 1.0).float().double().numpy()  # as the C data set makes them
    noise = torch.randn((N_IMAGES, T, C, S, S), generator=gen, dtype=torch.float32).double().numpy()
    sch = schedule()

    tensors = [(n, p.detach().float().numpy()) for n, p in net.named_parameters()]
    tensors += [("x0", x0.astype(np.float32)), ("noise", noise.astype(np.float32))]
    expected, noise_floor = {}, {}
    net64 = net.double()
    for var in ("beta", "beta-tilde"):
        for clip in (True, False):
            key = f"{var}.{'clip' if clip else 'noclip'}"
            terms, prior = bound_terms(net64, x0, noise, sch, var, clip, torch.float64)
            expected[key] = summary(terms, prior, D)
            tensors.append((f"terms.{key}", terms.astype(np.float32)))
            print(f"{key}: " + ", ".join(f"{k} {v:.9f}" for k, v in expected[key].items()) + " bits/dim")
    tensors.append(("prior", prior.astype(np.float32)))
    net32 = net.float()
    for key in expected:
        var, clip = key.split(".")
        terms, prior = bound_terms(net32, x0, noise, sch, var, clip == "clip", torch.float32)
        s32 = summary(terms, prior, D)
        noise_floor[key] = {k: abs(s32[k] - expected[key][k]) / abs(expected[key][k]) for k in s32}
        print(f"  float32 network: relative change {key}: " +
              ", ".join(f"{k} {v:.2g}" for k, v in noise_floor[key].items()))
    config = dict(in_channels=C, image_size=S, ch=case["ch"], ch_mult=case["ch_mult"],
                  num_res_blocks=case["num_res_blocks"], attn_res=case["attn_res"], groups=case["groups"],
                  timesteps=T, beta_start=BETA_START, beta_end=BETA_END, n_images=N_IMAGES)
    meta = {"config": json.dumps(config), "expected": json.dumps(expected, allow_nan=False),
            "float32_noise": json.dumps(noise_floor)}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(out, tensors, meta)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
