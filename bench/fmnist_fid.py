#!/usr/bin/python3
"""fmnist_fid.py: a sample-quality measure for Fashion-MNIST models (docs/fmnist-fid.md).

Inception weights cannot be had on this machine, so this script trains its own
small CNN classifier on the Fashion-MNIST training set (once; seeded; cached)
and measures a folder of 28x28 samples with it:

  domain FID     the Frechet distance between Gaussians fitted to the classifier's
                 128-d penultimate features of the samples and of the 10,000 test
                 images (Heusel et al. 2017, eq. 6, with this classifier in place
                 of Inception-v3). A domain stand-in: not comparable with the
                 Inception FID numbers of papers.
  class entropy  the entropy in bits of the histogram of predicted classes
                 (log2 10 = 3.32 bits: all ten classes evenly; 0: one class).
  accuracy       with --labels FILE or a per-class layout DIR/<class>/*.png: the
                 share of the samples of class k that the classifier assigns to k,
                 per class and overall.
  rms            with --rms-ref DIR: the root mean square difference between each
                 PNG of DIR and the same-named PNG of the folder, in [-1, 1] units
                 (8-bit values v mapped to v / 127.5 - 1, as ddpm reads images).

Images come from the Debian package dataset-fashion-mnist's IDX files
(/usr/share/datasets/fashion-mnist), whose order is that of the PNGs that
scripts/fetch-fashion-mnist.sh writes (--selftest checks this on some of them).

Run with Debian's PyTorch (/usr/bin/python3; apt-get install python3-torch
python3-scipy python3-pil). Exit codes: 0 ok, 1 error (one line on stderr:
`fmnist_fid: <file>: <problem>`), 2 usage.
"""

import argparse
import gzip
import json
import math
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
N_CLASSES = 10
FEATURES = 128
# Bumped whenever the network, its training or the stored statistics change: a
# cached classifier of another version is refused (retrain with --retrain).
CLASSIFIER_VERSION = 1
DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ddpm", "fmnist-classifier.pt")


class InputError(Exception):
    """A bad input: reported as one line `fmnist_fid: <file>: <problem>`, exit 1."""

    def __init__(self, path, problem):
        super().__init__(f"{path}: {problem}")


# ----------------------------------------------------------------------------- data

def read_idx(path):
    """An IDX file (gzip or plain) as a uint8 array: (n,) labels or (n, rows, cols) images."""
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise InputError(path, f"cannot read ({e.strerror if getattr(e, 'strerror', None) else e})")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 3:
        raise InputError(path, "not an unsigned-byte IDX file (bad magic)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise InputError(path, "IDX header is truncated")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) != 4 + 4 * ndim + count:
        raise InputError(path, f"IDX header says {count} bytes of data, the file has {len(data) - 4 - 4 * ndim}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(idx_dir, split):
    """(images uint8 (n, 28, 28), labels uint8 (n,)) of split 'train' or 't10k'."""
    images = read_idx(os.path.join(idx_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(idx_dir, f"{split}-labels-idx1-ubyte.gz"))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(labels) != len(images):
        raise InputError(os.path.join(idx_dir, split), "not 28x28 images with one label each")
    if labels.max() >= N_CLASSES:
        raise InputError(os.path.join(idx_dir, f"{split}-labels-idx1-ubyte.gz"), "a label is not 0..9")
    return images, labels


def read_png(path):
    """A 28x28 gray PNG as uint8 (28, 28); color images are converted to luma."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.size != (28, 28):
                raise InputError(path, f"{im.size[0]}x{im.size[1]} pixels, expected 28x28")
            if im.mode not in ("L", "P", "LA", "RGB", "RGBA"):
                raise InputError(path, f"PNG mode {im.mode}: expected 8-bit gray or color")
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except InputError:
        raise
    except Exception as e:  # PIL raises several types for broken files
        raise InputError(path, f"cannot read as an image ({e})")


def png_names(folder):
    try:
        return sorted(p.name for p in Path(folder).iterdir() if p.suffix.lower() == ".png" and p.is_file())
    except OSError as e:
        raise InputError(folder, f"cannot list ({e.strerror})")


def class_of_folder(name):
    """A per-class subfolder's class: its index 0..9 or a class name (case and '/', '_', ' ' ignored)."""
    if name.isdigit() and int(name) < N_CLASSES:
        return int(name)
    key = name.lower().replace("_", "").replace("-", "").replace(" ", "").replace("/", "")
    for k, c in enumerate(CLASS_NAMES):
        if key == c.lower().replace("-", "").replace(" ", "").replace("/", ""):
            return k
    return None


def read_labels(path, names):
    """Labels for the PNGs `names` (sorted) of a folder: an IDX label file, or a text file
    with one line per image, either `LABEL` (in the sorted order of the names) or `NAME LABEL`."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror})")
    if len(head) == 4 and head[:3] == b"\x00\x00\x08" or head[:2] == b"\x1f\x8b":
        labels = read_idx(path)
        if labels.ndim != 1:
            raise InputError(path, "an IDX file of images, not of labels")
        if len(labels) < len(names):
            raise InputError(path, f"{len(labels)} labels for {len(names)} images")
        # the PNGs of ddpm convert are named by their index in the IDX file
        out = []
        for n in names:
            stem = Path(n).stem
            if not stem.isdigit() or int(stem) >= len(labels):
                raise InputError(path, f"{n}: not named by an index into the {len(labels)} labels")
            out.append(int(labels[int(stem)]))
        return np.array(out, dtype=np.int64)
    try:
        lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read as text ({e})")
    by_name = {}
    for i, parts in enumerate(lines):
        if len(parts) not in (1, 2) or not parts[-1].isdigit() or int(parts[-1]) >= N_CLASSES:
            raise InputError(path, f"line {i + 1}: expected `LABEL` or `NAME LABEL` with a label 0..9")
        by_name[parts[0] if len(parts) == 2 else i] = int(parts[-1])
    if all(len(p) == 1 for p in lines):
        if len(lines) != len(names):
            raise InputError(path, f"{len(lines)} labels for {len(names)} images")
        return np.array([by_name[i] for i in range(len(names))], dtype=np.int64)
    missing = [n for n in names if n not in by_name]
    if missing or any(len(p) != 2 for p in lines):
        raise InputError(path, f"no label for {missing[0]}" if missing else "mixes `LABEL` and `NAME LABEL` lines")
    return np.array([by_name[n] for n in names], dtype=np.int64)


def load_folder(folder, labels_path=None):
    """(images uint8 (n, 28, 28), labels int64 (n,) or None, relative names) of a sample folder:
    DIR/*.png, or the per-class layout DIR/<class>/*.png (which gives the labels)."""
    if not os.path.isdir(folder):
        raise InputError(folder, "not a folder" if os.path.exists(folder) else "no such folder")
    names = png_names(folder)
    labels = None
    if names:
        rel = names
        if labels_path:
            labels = read_labels(labels_path, names)
    else:
        subs = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
        rel, lab = [], []
        for s in subs:
            k = class_of_folder(s)
            if k is None:
                raise InputError(os.path.join(folder, s), "a subfolder that is not a class (0..9 or a class name)")
            for n in png_names(os.path.join(folder, s)):
                rel.append(os.path.join(s, n))
                lab.append(k)
        if not rel:
            raise InputError(folder, "no PNG files (neither DIR/*.png nor DIR/<class>/*.png)")
        if labels_path:
            raise InputError(labels_path, "--labels with a per-class folder layout (its folders give the labels)")
        labels = np.array(lab, dtype=np.int64)
    images = np.stack([read_png(os.path.join(folder, n)) for n in rel])
    return images, labels, rel


def to_float(images_u8):
    """uint8 pixels to [-1, 1] as ddpm reads them (v / 127.5 - 1), shape (n, 1, 28, 28)."""
    return (images_u8.astype(np.float32) / 127.5 - 1.0)[:, None, :, :]


def to_u8(x):
    """[-1, 1] floats to uint8 as ddpm writes them (round half up, clamped)."""
    return np.clip(np.floor((np.asarray(x, dtype=np.float64) + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- statistics

def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in double.

    tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the
    eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric positive
    semi-definite and has the same eigenvalues as S1 S2: two symmetric
    eigendecompositions, no general matrix square root, and no complex parts
    to discard when a covariance is near singular."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sum(np.sqrt(np.clip(ev, 0, None)))
    d = mu1 - mu2
    # >= 0 in exact arithmetic; rounding can leave -1e-12 for two equal sets
    return max(0.0, float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_covmean))


def gaussian_stats(features):
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def class_entropy_bits(pred):
    """Entropy in bits of the histogram of predicted classes."""
    counts = np.bincount(np.asarray(pred, np.int64), minlength=N_CLASSES).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def accuracy_by_class(pred, labels):
    """(overall share of pred == labels, [share per class, None for a class without images])."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    per = []
    for k in range(N_CLASSES):
        m = labels == k
        per.append(float((pred[m] == k).mean()) if m.any() else None)
    return float((pred == labels).mean()), per


def rms_difference(a_u8, b_u8):
    """RMS difference of two uint8 image stacks in [-1, 1] units."""
    d = to_float(a_u8).astype(np.float64) - to_float(b_u8).astype(np.float64)
    return float(np.sqrt(np.mean(d * d)))


# ----------------------------------------------------------------------------- classifier

def make_net():
    import torch.nn as nn

    class Classifier(nn.Module):
        """Three conv blocks of 16, 32 and 64 channels (28 -> 14 -> 7 -> 3), then a 128-d linear layer whose output
        (before its ReLU) is the feature vector, then the 10-way linear head."""

        def __init__(self):
            super().__init__()

            def block(cin, cout):
                return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                        nn.MaxPool2d(2)]

            self.conv = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64), nn.Flatten())
            self.fc = nn.Linear(64 * 3 * 3, FEATURES)
            self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(FEATURES, N_CLASSES))

        def features(self, x):
            return self.fc(self.conv(x))

        def forward(self, x):
            return self.head(self.features(x))

    return Classifier()


def set_torch_threads(threads):
    import torch
    torch.set_num_threads(threads)


def train_classifier(train_x, train_y, epochs, seed, log):
    """The classifier, trained with Adam and a one-cycle learning rate on the 60,000 training
    images with random horizontal flips; the data order and the flips come from the seed."""
    import torch
    import torch.nn.functional as F
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    net = make_net()
    rng = np.random.default_rng(seed)
    x_all = torch.from_numpy(to_float(train_x))
    y_all = torch.from_numpy(train_y.astype(np.int64))
    batch = 128
    steps_per_epoch = len(x_all) // batch
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(x_all))
        flips = rng.random(len(x_all)) < 0.5
        t0 = time.perf_counter()
        total = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            xb = x_all[idx]
            fb = torch.from_numpy(flips[idx])
            xb = torch.where(fb[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(net(xb), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log(f"epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    return net


def run_net(net, images_u8, batch=1000):
    """(features float64 (n, 128), predicted classes int64 (n,)) of uint8 images."""
    import torch
    feats, preds = [], []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            x = torch.from_numpy(to_float(images_u8[i:i + batch]))
            f = net.features(x)
            feats.append(f.double().numpy())
            preds.append(net.head(f).argmax(1).numpy())
    if not feats:
        return np.zeros((0, FEATURES)), np.zeros(0, np.int64)
    return np.concatenate(feats), np.concatenate(preds).astype(np.int64)


def atomic_torch_save(obj, path):
    import torch
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fmnist-classifier.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def get_classifier(path, idx_dir, epochs, seed, retrain, log):
    """(net, info, test feature mean, test feature covariance) from the cache at path, or
    trained, measured and cached there first. Training holds path.lock, so a second process
    (a second sampler_table.sh) waits for the first one's classifier instead of training
    its own."""
    import fcntl
    if os.path.exists(path) and not retrain:
        return load_classifier(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f"another process is training the classifier; waiting for {path}.lock")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(path) and not retrain:
            return load_classifier(path)
        return train_and_cache(path, idx_dir, epochs, seed, log)


def load_classifier(path):
    import torch
    try:
        blob = torch.load(path, map_location="cpu")
        info = blob["info"]
        version = info.get("version")
    except Exception as e:
        raise InputError(path, f"not a classifier cache of this script ({e}); move it away or pass --retrain")
    if version != CLASSIFIER_VERSION:
        raise InputError(path, f"a classifier of version {version}, this script makes version "
                               f"{CLASSIFIER_VERSION}; pass --retrain to replace it")
    net = make_net()
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return net, info, blob["test_mu"], blob["test_sigma"]


def train_and_cache(path, idx_dir, epochs, seed, log):
    import torch
    train_x, train_y = load_split(idx_dir, "train")
    test_x, test_y = load_split(idx_dir, "t10k")
    log(f"training the classifier ({epochs} epochs, seed {seed}, {torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    net = train_classifier(train_x, train_y, epochs, seed, log)
    train_seconds = time.perf_counter() - t0
    feats, pred = run_net(net, test_x)
    acc, per = accuracy_by_class(pred, test_y)
    mu, sigma = gaussian_stats(feats)
    info = {"version": CLASSIFIER_VERSION, "epochs": epochs, "seed": seed, "features": FEATURES,
            "test_accuracy": acc, "test_accuracy_per_class": per, "train_seconds": round(train_seconds, 1),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    atomic_torch_save({"info": info, "state_dict": net.state_dict(), "test_mu": mu, "test_sigma": sigma}, path)
    log(f"test accuracy {100 * acc:.2f}%; cached in {path}")
    return net, info, mu, sigma


# ----------------------------------------------------------------------------- measurement

def measure(net, test_mu, test_sigma, images_u8, labels=None):
    """The measurements of one set of images (a dict, the --json fields)."""
    t0 = time.perf_counter()
    feats, pred = run_net(net, images_u8)
    out = {"n": int(len(images_u8))}
    if len(images_u8) >= 2:
        mu, sigma = gaussian_stats(feats)
        out["fid"] = frechet_distance(mu, sigma, test_mu, test_sigma)
    else:
        out["fid"] = None
    out["class_entropy_bits"] = class_entropy_bits(pred) if len(pred) else None
    out["class_histogram"] = np.bincount(pred, minlength=N_CLASSES).tolist()
    if labels is not None:
        acc, per = accuracy_by_class(pred, labels)
        out["accuracy"] = acc
        out["accuracy_per_class"] = per
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def fmt_pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def print_text(res, info, folder, cache):
    print(f"classifier: {cache} (test accuracy {100 * info['test_accuracy']:.2f}%, {info['features']} features)")
    print(f"folder: {folder}  images: {res['n']}")
    fid = "-" if res["fid"] is None else f"{res['fid']:.3f}"
    print(f"domain FID: {fid}  (classifier features vs the 10,000 test images; not Inception FID)")
    print(f"class entropy: {res['class_entropy_bits']:.3f} bits (3.32 = all ten classes evenly)")
    print("predicted classes: " + "  ".join(f"{k}:{c}" for k, c in enumerate(res["class_histogram"])))
    if "accuracy" in res:
        print(f"conditional accuracy: {fmt_pct(res['accuracy'])}")
        print("  per class: " + "  ".join(f"{k} {CLASS_NAMES[k]}: {fmt_pct(a)}"
                                          for k, a in enumerate(res["accuracy_per_class"])))
    if "rms" in res:
        print(f"RMS from {res['rms_ref']}: {res['rms']:.5f} ([-1, 1] units from 8-bit values, "
              f"{res['rms_n']} images)")


# ----------------------------------------------------------------------------- calibration

def calibration_sets(train_x, train_y, seed, n_small):
    """(name, images uint8, labels) rows of docs/fmnist-fid.md's calibration table; n_small:
    also three disjoint sets of that many real images (the noise of a smaller sample)."""
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    a = train_x[:1000]
    ya = train_y[:1000]

    def blur(x, s):
        xf = to_float(x)[:, 0].astype(np.float64)
        return to_u8(np.stack([gaussian_filter(im, s, mode="nearest") for im in xf]))

    def noise(x, std):
        xf = to_float(x)[:, 0].astype(np.float64)
        return to_u8(xf + rng.normal(0, std, xf.shape))

    rows = [("real train 0-999", a, ya),
            ("real train 1000-1999", train_x[1000:2000], train_y[1000:2000]),
            ("real train 2000-2999", train_x[2000:3000], train_y[2000:3000]),
            ("real train 0-9999", train_x[:10000], train_y[:10000]),
            ("blur sigma 0.5 px", blur(a, 0.5), ya),
            ("blur sigma 1 px", blur(a, 1.0), ya),
            ("noise std 0.05", noise(a, 0.05), ya),
            ("noise std 0.1", noise(a, 0.1), ya),
            ("blur 0.5 px + noise 0.05", noise(blur(a, 0.5), 0.05), ya)]
    half = np.concatenate([a[:500], blur(a[500:], 1.0)])
    rows.append(("mix: 500 real + 500 blur 1 px", half, ya))
    keep = np.flatnonzero(train_y[:3000] < 5)[:1000]  # the first five classes only: mode dropping
    rows.append(("real, classes 0-4 only", train_x[keep], train_y[keep]))
    if n_small and n_small != 1000:
        for i in range(3):  # from 10,000 on, disjoint from the sets above
            lo = 10000 + i * n_small
            rows.append((f"real train {lo}-{lo + n_small - 1}", train_x[lo:lo + n_small], train_y[lo:lo + n_small]))
    return rows


def calibrate(net, info, mu, sigma, idx_dir, seed, n_small, as_json):
    train_x, train_y = load_split(idx_dir, "train")
    test_x, test_y = load_split(idx_dir, "t10k")
    results = []
    for name, x, y in calibration_sets(train_x, train_y, seed, n_small):
        r = measure(net, mu, sigma, x, y)
        r["set"] = name
        results.append(r)
    real = [r["fid"] for r in results[:3]]
    summary = {"real_1000_fid_median": float(np.median(real)), "real_1000_fid_min": min(real),
               "real_1000_fid_max": max(real)}
    if len(results) > 11:
        small = [r["fid"] for r in results[11:]]
        summary.update({f"real_{n_small}_fid_median": float(np.median(small)), f"real_{n_small}_fid_min": min(small),
                        f"real_{n_small}_fid_max": max(small)})
    t = measure(net, mu, sigma, test_x, test_y)
    summary["test_vs_itself_fid"] = t["fid"]
    summary["test_accuracy"] = t["accuracy"]
    summary["features_seconds_10000"] = t["seconds"]
    if as_json:
        print(json.dumps({"classifier": info, "rows": results, "summary": summary}))
        return
    print(f"classifier test accuracy {100 * info['test_accuracy']:.2f}% "
          f"(re-measured: {100 * t['accuracy']:.2f}%); 10,000 test images measured in {t['seconds']:.1f} s")
    print()
    print("| images (vs the 10,000 test images) | n | domain FID | class entropy (bits) | accuracy |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['set']} | {r['n']} | {r['fid']:.3f} | {r['class_entropy_bits']:.3f} | {fmt_pct(r['accuracy'])} |")
    print()
    for n in (1000, n_small):
        if f"real_{n}_fid_median" in summary:
            print(f"3 disjoint sets of {n} real images: FID median {summary[f'real_{n}_fid_median']:.3f}, "
                  f"range {summary[f'real_{n}_fid_min']:.3f} .. {summary[f'real_{n}_fid_max']:.3f}")


# ----------------------------------------------------------------------------- self-test

def selftest(idx_dir, png_root):
    """Checks of the arithmetic against closed forms and an independent reference, and of the
    PNG order against the IDX files. Returns the number of failures."""
    failures = 0

    def check(ok, what):
        nonlocal failures
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        failures += 0 if ok else 1

    rng = np.random.default_rng(1)
    # Frechet distance, closed form for diagonal covariances: |d|^2 + sum (sqrt a - sqrt b)^2
    n = 7
    mu1, mu2 = rng.normal(size=n), rng.normal(size=n)
    a, b = rng.uniform(0.1, 3, n), rng.uniform(0.1, 3, n)
    want = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    check(abs(got - want) <= 1e-10 * max(1, want), f"FD diagonal closed form: {got:.12f} vs {want:.12f}")
    # Non-commuting full covariances against scipy's general matrix square root (pytorch-fid's way)
    from scipy import linalg
    for dim in (5, 32):
        m1, m2 = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
        s1, s2 = m1 @ m1.T + 0.1 * np.eye(dim), m2 @ m2.T + 0.1 * np.eye(dim)
        c1, c2 = rng.normal(size=dim), rng.normal(size=dim)
        covmean = linalg.sqrtm(s1 @ s2).real
        ref = float((c1 - c2) @ (c1 - c2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
        got = frechet_distance(c1, s1, c2, s2)
        check(abs(got - ref) <= 1e-7 * max(1, abs(ref)), f"FD vs scipy sqrtm, dim {dim}: {got:.9f} vs {ref:.9f}")
        # Same covariance: only the means count; identical Gaussians: zero
        got = frechet_distance(c1, s1, c2, s1)
        want = float((c1 - c2) @ (c1 - c2))
        check(abs(got - want) <= 1e-7 * max(1, want), f"FD equal covariances, dim {dim}: {got:.9f} vs {want:.9f}")
    # 1-d Gaussians: (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations
    got = frechet_distance([1.0], [[4.0]], [3.0], [[9.0]])
    check(abs(got - 5.0) <= 1e-12, f"FD 1-d N(1, 2^2) vs N(3, 3^2): {got} vs 5")
    # A singular covariance (rank 1 in 3-d), where a general sqrtm returns complex noise. The
    # square root of an eigenvalue that is zero up to rounding (~1e-16) is ~1e-8, so the
    # tolerance is 1e-6, not the 1e-9 of the full-rank cases.
    u = np.array([[1.0], [2.0], [-1.0]])
    got = frechet_distance(np.zeros(3), u @ u.T, np.zeros(3), 4 * u @ u.T)
    check(abs(got - 6.0) <= 1e-6, f"FD rank-1 covariances |u|^2 (1 - 2)^2 = 6: {got}")
    # Entropy of the predicted-class histogram
    check(abs(class_entropy_bits(np.arange(1000) % 10) - math.log2(10)) < 1e-12, "entropy of ten even classes")
    check(class_entropy_bits(np.full(50, 3)) == 0.0, "entropy of one class")
    check(abs(class_entropy_bits([0, 0, 1, 1]) - 1.0) < 1e-12, "entropy of two even classes")
    # Accuracy
    acc, per = accuracy_by_class([0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 1])
    check(abs(acc - 4 / 6) < 1e-12 and per[0] == 1.0 and per[1] == 0.5 and abs(per[2] - 2 / 3) < 1e-12
          and per[3] is None, f"accuracy by class: {acc}, {per[:4]}")
    # Pixel mapping as ddpm's imageio.c: v / 127.5 - 1 and back round-trips every level
    levels = np.arange(256, dtype=np.uint8)[None, :, None]
    check(np.array_equal(to_u8(to_float(levels)[:, 0]), levels), "uint8 -> [-1, 1] -> uint8 round trip")
    check(abs(rms_difference(np.zeros((1, 2, 2), np.uint8), np.full((1, 2, 2), 255, np.uint8)) - 2.0) < 1e-12,
          "RMS of black vs white is 2")
    # The PNG folders are in the order of the IDX files (so IDX labels apply to them)
    for folder, split in (("train", "train"), ("test", "t10k")):
        d = os.path.join(png_root, folder)
        if not os.path.isdir(d):
            check(False, f"{d}: no such folder (pass --png-root)")
            continue
        images, _ = load_split(idx_dir, split)
        picks = sorted({0, 1, 2, len(images) - 1, *rng.integers(0, len(images), 20).tolist()})
        same = all(np.array_equal(read_png(os.path.join(d, f"{i:05d}.png")), images[i]) for i in picks)
        check(same, f"{d}: {len(picks)} PNGs equal the IDX images of the same index")
    return failures


# ----------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="fmnist_fid.py",
        description="Domain FID, class entropy and conditional accuracy of a folder of 28x28 samples "
                    "(Fashion-MNIST; a stand-in for Inception FID, not comparable with it).")
    ap.add_argument("folder", nargs="?",
                    help="DIR/*.png (as `ddpm sample --out-dir DIR --no-grid` writes) or DIR/<class>/*.png")
    ap.add_argument("--labels", metavar="FILE",
                    help="labels of DIR/*.png: an IDX label file (PNGs named by index), or text with one line "
                         "per image, `LABEL` in sorted name order or `NAME LABEL`")
    ap.add_argument("--rms-ref", metavar="DIR",
                    help="also the RMS difference between each PNG of DIR and the same-named PNG of FOLDER "
                         "([-1, 1] units, from 8-bit values); DIR may hold fewer images than FOLDER")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--classifier", default=DEFAULT_CACHE, metavar="PATH",
                    help="the cached classifier (default %(default)s); trained there if missing")
    ap.add_argument("--retrain", action="store_true", help="train the classifier again and replace the cache")
    ap.add_argument("--epochs", type=int, default=10, help="classifier training epochs (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="classifier training seed (default %(default)s)")
    ap.add_argument("--idx-dir", default=DEFAULT_IDX_DIR,
                    help="Fashion-MNIST IDX files (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default %(default)s: on a busy 2-core machine two OpenMP threads "
                         "ran a training step 2-5x slower than one)")
    ap.add_argument("--prepare", action="store_true",
                    help="only load (or train and cache) the classifier and print its test accuracy")
    ap.add_argument("--calibrate", action="store_true",
                    help="print the calibration table of docs/fmnist-fid.md (real, blurred, noised images)")
    ap.add_argument("--calib-n", type=int, default=0, metavar="N",
                    help="--calibrate: also three disjoint sets of N real images (the FID noise at n = N)")
    ap.add_argument("--selftest", action="store_true",
                    help="check the Frechet distance, entropy, accuracy and PNG order; exit 1 on a failure")
    ap.add_argument("--png-root", default="data/fashion-mnist",
                    help="--selftest: the folder with the train/ and test/ PNGs (default %(default)s)")
    args = ap.parse_args(argv)

    modes = sum([bool(args.folder), args.calibrate, args.selftest, args.prepare])
    if modes != 1:
        ap.print_usage(sys.stderr)
        print("fmnist_fid: give one of FOLDER, --prepare, --calibrate or --selftest", file=sys.stderr)
        return 2
    if args.epochs < 1 or args.threads < 1:
        print("fmnist_fid: --epochs and --threads are at least 1", file=sys.stderr)
        return 2
    if args.folder is None and (args.labels or args.rms_ref):
        print("fmnist_fid: --labels and --rms-ref go with a FOLDER", file=sys.stderr)
        return 2

    def log(msg):
        print(f"fmnist_fid: {msg}", file=sys.stderr, flush=True)

    try:
        if args.selftest:
            failures = selftest(args.idx_dir, args.png_root)
            print(f"{failures} failure(s)")
            return 1 if failures else 0
        try:
            import torch  # noqa: F401
        except ImportError:
            print("fmnist_fid: needs PyTorch: run with /usr/bin/python3 (apt-get install python3-torch)",
                  file=sys.stderr)
            return 1
        set_torch_threads(args.threads)
        net, info, mu, sigma = get_classifier(args.classifier, args.idx_dir, args.epochs, args.seed, args.retrain,
                                              log)
        if args.prepare:
            if args.json:
                print(json.dumps({"classifier": args.classifier, **info}))
            else:
                print(f"classifier: {args.classifier} (test accuracy {100 * info['test_accuracy']:.2f}%, "
                      f"{info['features']} features, {info['epochs']} epochs, seed {info['seed']})")
            return 0
        if args.calibrate:
            calibrate(net, info, mu, sigma, args.idx_dir, args.seed, args.calib_n, args.json)
            return 0
        images, labels, names = load_folder(args.folder, args.labels)
        res = measure(net, mu, sigma, images, labels)
        if args.rms_ref:  # the reference's images, each against the same-named one of FOLDER
            ref_images, _, ref_names = load_folder(args.rms_ref)
            at = {n: i for i, n in enumerate(names)}
            missing = [n for n in ref_names if n not in at]
            if missing:
                raise InputError(os.path.join(args.folder, missing[0]), f"missing: {args.rms_ref} has this image")
            res["rms"] = rms_difference(images[[at[n] for n in ref_names]], ref_images)
            res["rms_n"] = len(ref_names)
            res["rms_ref"] = args.rms_ref
        if args.json:
            res["folder"] = args.folder
            res["classifier"] = {"path": args.classifier, "test_accuracy": info["test_accuracy"],
                                 "features": info["features"], "version": info["version"]}
            print(json.dumps(res))
        else:
            print_text(res, info, args.folder, args.classifier)
        return 0
    except InputError as e:
        print(f"fmnist_fid: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
