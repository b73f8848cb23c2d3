"""Port LAION's CLIP-based NSFW detector from its published Autokeras files to the PyTorch state dict
recaption's `laion-nsfw-l14` / `laion-nsfw-b32` heads load (recaption/scoring/heads/arch.py).

    python scripts/convert_nsfw_keras.py clip_autokeras_nsfw_b32.zip nsfw_b32.pth --arch laion-nsfw-b32

INPUT is the published zip (LAION-AI/CLIP-based-NSFW-Detector: clip_autokeras_binary_nsfw.zip for
ViT-L/14, clip_autokeras_nsfw_b32.zip for ViT-B/32) or the SavedModel folder inside it. TensorFlow
is needed here only (`pip install tensorflow-cpu`), never when recaption runs the head: the
variables are read from the SavedModel's checkpoint (`tf.train.load_checkpoint`), so neither
Autokeras nor the Keras version that wrote them is needed. The Normalization layer's `mean` and
`variance` become `norm.mean` and `norm.variance`; each Dense layer's kernel (in, out) becomes
`linear_I.weight` (out, in) and its bias `linear_I.bias`, in layer order. `--check` compares the
converted head, on 4096 random unit vectors, with the weights' own arithmetic in float64 (it must
agree to 1e-5) and with the SavedModel's serving function.

Run by hand on both published zips with tensorflow-cpu 2.21 (the suite has no TensorFlow: nothing
else needs it): ViT-B/32 and ViT-L/14 agree with the float64 arithmetic to 1.2e-6. TensorFlow's own
float32 graph of either model differs from that arithmetic by a median of 2e-9 or less but up to 0.16 on
a few random unit vectors (far from CLIP's embeddings; its Normalization has variances from 4e-4 to
2e6, so float32 rounding is amplified where the graph reorders the arithmetic); the port follows
the published arithmetic, not that rounding.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import zipfile
from pathlib import Path

LAYER = re.compile(r"^layer_with_weights-(\d+)/(\w+)/\.ATTRIBUTES/VARIABLE_VALUE$")


def saved_model_dir(path: Path, tmp: Path) -> Path:
    """The SavedModel folder of a published zip (extracted into `tmp`) or of a folder."""
    if path.is_dir():
        return path
    with zipfile.ZipFile(path) as z:
        z.extractall(tmp)
    found = [p.parent for p in tmp.rglob("saved_model.pb")]
    if len(found) != 1:
        sys.exit(f"{path}: expected one SavedModel inside, found {len(found)}")
    return found[0]


def read_layers(model_dir: Path) -> list[dict]:
    """The weighted layers of a Keras SavedModel, in order: {attribute: numpy array}."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(model_dir / "variables" / "variables"))
    layers: dict[int, dict] = {}
    for name in reader.get_variable_to_shape_map():
        m = LAYER.match(name)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = reader.get_tensor(name)
    return [layers[i] for i in sorted(layers)]


def state_dict(layers: list[dict]) -> dict:
    """recaption's state dict for the head: `norm.mean`, `norm.variance`, `linear_1` ... `linear_N`."""
    import numpy as np
    import torch

    if not layers or "mean" not in layers[0] or "variance" not in layers[0]:
        sys.exit("the first weighted layer is not a Normalization layer (mean, variance): not LAION's NSFW model")
    out = {"norm.mean": torch.from_numpy(np.asarray(layers[0]["mean"], np.float32).reshape(-1)),
           "norm.variance": torch.from_numpy(np.asarray(layers[0]["variance"], np.float32).reshape(-1))}
    dense = [lay for lay in layers[1:] if "kernel" in lay]
    if len(dense) != len(layers) - 1:
        sys.exit("a weighted layer after the Normalization is not a Dense layer: not LAION's NSFW model")
    for i, lay in enumerate(dense, 1):
        out[f"linear_{i}.weight"] = torch.from_numpy(np.ascontiguousarray(lay["kernel"].T, np.float32))
        out[f"linear_{i}.bias"] = torch.from_numpy(np.asarray(lay["bias"], np.float32))
    return out


def check(model_dir: Path, layers: list[dict], module, n: int = 4096) -> dict:
    """The converted head on `n` random unit vectors against (1) the weights' own arithmetic in
    float64 and (2) the SavedModel's serving function: the largest difference from (1), and the
    median and largest from (2)."""
    import numpy as np
    import tensorflow as tf
    import torch

    x = np.random.default_rng(0).normal(size=(n, layers[0]["mean"].size)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with torch.no_grad():
        got = torch.sigmoid(module(torch.from_numpy(x))).numpy().reshape(-1).astype(np.float64)
    h = (x.astype(np.float64) - layers[0]["mean"].reshape(-1)) / np.sqrt(layers[0]["variance"].reshape(-1))
    for i, lay in enumerate(layers[1:]):
        h = h @ lay["kernel"].astype(np.float64) + lay["bias"]
        h = np.maximum(h, 0) if i < len(layers) - 2 else h
    exact = 1 / (1 + np.exp(-h.reshape(-1)))
    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    spec = list(fn.structured_input_signature[1].values())[0]  # the published models take float64
    served = np.asarray(list(fn(tf.constant(x, dtype=spec.dtype)).values())[0], np.float64).reshape(-1)
    return {"exact_max": float(np.abs(got - exact).max()), "saved_model_median": float(np.median(np.abs(got - served))),
            "saved_model_max": float(np.abs(got - served).max())}


def main(argv=None) -> int:
    """Convert, save, and optionally check against the SavedModel."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", type=Path, help="the published zip, or its SavedModel folder")
    ap.add_argument("output", type=Path, help="the .pth state dict to write")
    ap.add_argument("--arch", choices=("laion-nsfw-l14", "laion-nsfw-b32"), required=True)
    ap.add_argument("--check", action="store_true", help="compare with the SavedModel's own output")
    a = ap.parse_args(argv)
    import torch

    from recaption.scoring.heads.arch import ARCHS

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = saved_model_dir(a.input, Path(tmp))
        sd = state_dict(read_layers(model_dir))
        dim = sd["norm.mean"].numel()
        module = ARCHS.get(a.arch)(type("Head", (), {"dim": dim})())
        module.load_state_dict(sd)  # the architecture's own keys and shapes: a mismatch stops here
        a.output.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sd, a.output)
        print(f"{a.output}: {len(sd)} tensors, input {dim}")
        if a.check:
            module.eval()
            d = check(model_dir, read_layers(model_dir), module)
            print(f"against the weights' float64 arithmetic: at most {d['exact_max']:.1e}; against the "
                  f"SavedModel's own float32 graph: median {d['saved_model_median']:.1e}, "
                  f"at most {d['saved_model_max']:.1e}")
            return 0 if d["exact_max"] < 1e-5 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
