#!/usr/bin/python3
"""load_exported.py: loads a `ddpm export` file into the PyTorch reference U-Net
of make_unet_reference.py with strict names, as a user sharing the weights would.

The safetensors container is parsed by hand (8-byte little-endian header length,
the JSON header, raw little-endian float32 data), so only Debian's python3-torch
is needed. The model config comes from the file's own metadata. Then the
network runs one forward pass on a fixed input and the script prints the
output's shape and mean; it exits non-zero when a name or shape does not match
(load_state_dict(strict=True)) or the output is not finite.

CI does not run this. By hand:
    ddpm export RUN_DIR /tmp/weights.safetensors
    /usr/bin/python3 tests/reference/load_exported.py /tmp/weights.safetensors
"""
import json
import struct
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_unet_reference import UNet  # noqa: E402


def read_safetensors(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {info['dtype']}, not F32")
        begin, end = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + begin:base + end]), dtype=torch.float32)
        tensors[name] = t.reshape(info["shape"]).clone()
    return tensors, meta


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: load_exported.py WEIGHTS.safetensors")
    tensors, meta = read_safetensors(sys.argv[1])
    if meta.get("weights") not in ("ema", "raw"):
        raise SystemExit(f"{sys.argv[1]}: not a ddpm export (no 'weights' metadata)")
    model = json.loads(meta["config"])["model"]
    cfg = {k: model[k] for k in ("in_channels", "image_size", "ch", "ch_mult", "num_res_blocks", "attn_res",
                                  "groups", "dropout")}
    cfg["out_channels"] = cfg["in_channels"] * (2 if model.get("learn_sigma") else 1)
    cfg["scale_shift_norm"] = bool(model.get("scale_shift_norm", False))
    cfg["n_classes"] = model.get("n_classes", 0)
    torch.manual_seed(0)
    net = UNet(cfg)
    net.load_state_dict(tensors, strict=True)  # every name and shape, nothing extra
    net.eval()
    S, C = cfg["image_size"], cfg["in_channels"]
    x = torch.linspace(-1, 1, 2 * C * S * S).reshape(2, C, S, S)
    with torch.no_grad():
        eps = net(x, torch.tensor([0, 500]))
    if not torch.isfinite(eps).all():
        raise SystemExit("forward pass is not finite")
    print(f"{sys.argv[1]}: {len(tensors)} tensors loaded strictly ({meta['weights']} weights, "
          f"{sum(t.numel() for t in tensors.values())} parameters); eps_pred {tuple(eps.shape)}, "
          f"mean {eps.mean().item():.6f}")


if __name__ == "__main__":
    main()
