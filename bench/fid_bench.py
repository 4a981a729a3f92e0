#!/usr/bin/python3
"""fid_bench.py: features per second of `ddpm fid` against PyTorch running the
same network (tests/reference/make_inception_reference.py's FID Inception,
full width, random weights saved with torch.save) on the same images, in one
run on one machine, alternating ddpm and PyTorch (A B A B ...), medians.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 bench/fid_bench.py \
        build/ddpm data/fashion-mnist/test 64 2
(binary, image folder, images per run, rounds)."""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))
import make_inception_reference as ref  # noqa: E402


def main():
    ddpm, folder, n, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ref.WIDTH_DIV = 1
    model = ref.FIDInception()
    ref.randomize(model, torch.Generator().manual_seed(1))
    model.eval()
    tmp = Path(tempfile.mkdtemp())
    weights = tmp / "full.pth"
    torch.save(model.state_dict(), weights)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
    sub = tmp / "images"
    sub.mkdir()
    for k, p in enumerate(files):
        os.symlink(p.resolve(), sub / ("%06d%s" % (k, p.suffix)))
    threads = torch.get_num_threads()
    print("OPENBLAS_CORETYPE=%s (unset: what an AVX-512 user gets from ddpm's own choice); torch threads %d; "
          "%d images of %s" % (os.environ.get("OPENBLAS_CORETYPE", "unset"), threads, n, folder))
    ours, theirs = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        out = subprocess.run([ddpm, "fid", "--save-stats", str(tmp / "s.safetensors"), str(sub), "--inception",
                              str(weights), "--json", "--quiet"], check=True, capture_output=True, text=True)
        ours.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, n, 32):
                batch = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in files[i:i + 32]]
                x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
                model.features(x)
        theirs.append(n / (time.perf_counter() - t0))
        print("round %d: ddpm %.2f images/s (its own report: %s), pytorch %.2f images/s" %
              (r, ours[-1], json.loads(out.stdout)["features_per_sec"], theirs[-1]))
    a, b = statistics.median(ours), statistics.median(theirs)
    print("median: ddpm %.2f images/s, pytorch %.2f images/s, ratio %.2f; 10,000 images: ddpm %.0f s, pytorch %.0f s"
          % (a, b, a / b, 10000 / a, 10000 / b))


if __name__ == "__main__":
    main()
