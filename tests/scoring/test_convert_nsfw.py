"""scripts/convert_nsfw_keras.py: the Keras layers LAION published become the state dict recaption's
NSFW heads load, with the same arithmetic. Reading the SavedModel needs TensorFlow, which the suite
does not install (the script's docstring gives the figures of a run on the published files); the
mapping from Keras' layer weights to the heads is tested here on weights in Keras' own layout."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from recaption.scoring.heads.arch import ARCHS

SCRIPT = Path(__file__).parents[2] / "scripts" / "convert_nsfw_keras.py"


def script():
    spec = importlib.util.spec_from_file_location("convert_nsfw_keras", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def keras_layers(rng, dims):
    """Normalization (mean, variance, count), then Dense layers (kernel: in x out, bias), as a
    Keras checkpoint holds them."""
    layers = [{"mean": rng.normal(0, 2, dims[0]).astype(np.float32),
               "variance": rng.uniform(1e-3, 5, dims[0]).astype(np.float32), "count": np.int64(1000)}]
    for a, b in zip(dims, dims[1:]):
        layers.append({"kernel": rng.normal(0, 0.3, (a, b)).astype(np.float32),
                       "bias": rng.normal(0, 0.1, b).astype(np.float32)})
    return layers


def keras_forward(layers, x):
    h = (x.astype(np.float64) - layers[0]["mean"]) / np.maximum(np.sqrt(layers[0]["variance"]), 1e-7)
    for i, lay in enumerate(layers[1:]):
        h = h @ lay["kernel"] + lay["bias"]
        h = np.maximum(h, 0) if i < len(layers) - 2 else h
    return 1 / (1 + np.exp(-h.reshape(-1)))


@pytest.mark.parametrize("arch,dims", [("laion-nsfw-b32", (512, 32, 32, 1)),
                                       ("laion-nsfw-l14", (768, 64, 512, 256, 1))])
def test_keras_layers_become_the_heads_state_dict_with_the_same_arithmetic(arch, dims):
    rng = np.random.default_rng(len(dims))
    layers = keras_layers(rng, dims)
    sd = script().state_dict(layers)
    module = ARCHS.get(arch)(type("Head", (), {"dim": dims[0]})())
    module.load_state_dict(sd)  # every key and shape the architecture has
    module.eval()
    x = rng.normal(size=(64, dims[0])).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with torch.no_grad():
        got = torch.sigmoid(module(torch.from_numpy(x))).numpy().reshape(-1)
    assert np.abs(got - keras_forward(layers, x)).max() < 1e-5


def test_a_model_that_is_not_laions_is_refused():
    rng = np.random.default_rng(0)
    layers = keras_layers(rng, (512, 32, 1))[1:]  # no Normalization first
    with pytest.raises(SystemExit, match="not a Normalization layer"):
        script().state_dict(layers)
