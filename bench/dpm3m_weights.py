#!/usr/bin/env python3
"""How much DPM-Solver++(3M)'s third-order step amplifies errors, per step spacing.

A 3M step from lambda_s to lambda_t = lambda_s + h combines the data predictions
m0, m1, m2 at the current and the two previous points into
x_t = (sigma_t/sigma_s) x_s + alpha_t (w0 m0 + w1 m1 + w2 m2), with weights
w0 + w1 + w2 = 1 - e^-h (docs/samplers.md gives the formulas). When the previous
points are close together compared with h, the parabola through them is
extrapolated far beyond them and the weights grow: an error e in one prediction
moves x_t by up to alpha_t (|w0| + |w1| + |w2|) e. This prints, for the linear
schedule of the DDPM paper (T = 1000, beta 1e-4 to 0.02) and each spacing, the
third-order step with the largest sum |w| and its h and step ratios r0, r1.
It follows `ddpm sample`'s rules: the points run from t = T-1 to 0, and with
fewer than 15 points the step into the last point is of second order.

Usage: /usr/bin/python3 bench/dpm3m_weights.py [POINTS ...]   (default 10 20)
Needs numpy only.
"""
import sys

import numpy as np

T = 1000
BETA = np.linspace(1e-4, 0.02, T)
LOG_ALPHA = 0.5 * np.cumsum(np.log1p(-BETA))   # log alpha at the trained steps 0..T-1
STEPS = np.arange(T)


def lam(t):
    """Half log-SNR at continuous t, log alpha piecewise linear between the steps."""
    la = np.interp(t, STEPS, LOG_ALPHA)
    return la - 0.5 * np.log(-np.expm1(2 * la))


def t_of_lam(values):
    return np.interp(-np.asarray(values), -lam(STEPS), STEPS)


def points(n, spacing):
    u = np.arange(n) / (n - 1)
    if spacing == "time":
        return (T - 1) * (1 - u)
    lo, hi = lam(T - 1), lam(0)
    if spacing == "logsnr":
        return t_of_lam(lo + u * (hi - lo))
    s_max, s_min = np.exp(-lo), np.exp(-hi)              # karras, rho = 7
    s = (s_max ** (1 / 7) + u * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7
    return t_of_lam(-np.log(s))


def worst_step(n, spacing):
    L = lam(points(n, spacing))
    worst = None
    for j in range(2, n - 1):                  # the step from point j to point j + 1
        if n < 15 and j + 1 == n - 1:
            continue                           # second order into the last point
        h = L[j + 1] - L[j]
        r0, r1 = (L[j] - L[j - 1]) / h, (L[j - 1] - L[j - 2]) / h
        phi1 = np.expm1(-h)
        phi2 = phi1 / h + 1
        phi3 = phi2 / h - 0.5
        d1_0 = np.array([1.0, -1.0, 0.0]) / r0
        d1_1 = np.array([0.0, 1.0, -1.0]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        w = np.array([-phi1, 0.0, 0.0]) + phi2 * d1 - 2 * phi3 * d2
        if worst is None or np.abs(w).sum() > worst[0]:
            worst = (np.abs(w).sum(), j + 1, h, r0, r1, w)
    return worst


def main():
    counts = [int(a) for a in sys.argv[1:]] or [10, 20]
    print("| points | spacing | largest sum abs(w) | into point | h | r0 | r1 | w0, w1, w2 |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for n in counts:
        for spacing in ("time", "logsnr", "karras"):
            res = worst_step(n, spacing)
            if res is None:
                print(f"| {n} | {spacing} | (no third-order step) | | | | | |")
                continue
            a, k, h, r0, r1, w = res
            print(f"| {n} | {spacing} | {a:.1f} | {k} of {n - 1} | {h:.2f} | {r0:.2f} | {r1:.2f} | "
                  f"{w[0]:.2f}, {w[1]:.2f}, {w[2]:.2f} |")


if __name__ == "__main__":
    main()
