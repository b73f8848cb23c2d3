"""The heads' architectures, each exactly as published (state-dict keys included), so the published
weights files load as they are: `ARCHS` maps an arch name to a builder `(head) -> torch module`
whose forward gives the raw outputs; the declaration's `output` says which is the score.

* `laion-nsfw-l14`, `laion-nsfw-b32`: LAION-AI/CLIP-based-NSFW-Detector `src/models.py` (the
  Autokeras models ported: a Keras Normalization layer, then Dense layers with ReLU).
* `linear`: LAION-AI/aesthetic-predictor v1, `nn.Linear(dim, 1)` (keys `weight`, `bias`).
* `aesthetic-mlp-v2`: christophschuhmann/improved-aesthetic-predictor's MLP (`layers.0` ... `layers.7`,
  dropouts between the linear layers and no activation, as `simple_inference.py` has it).
* `laion-watermark-efficientnet-b3`: LAION-AI/LAION-5B-WatermarkDetection's timm efficientnet_b3a
  (timm's efficientnet_b3 now) with its classifier 1536-625-256-2.
"""
from __future__ import annotations

from recaption.registry import Registry

ARCHS = Registry("head architecture")


def laion_nsfw_l14(head):
    """NSFWModel_L14: Normalization(768), 768-64-512-256-1 with ReLU (the sigmoid is the output rule)."""
    return _nsfw(head.dim or 768, (64, 512, 256), dropout_after=None)


def laion_nsfw_b32(head):
    """NSFWModel_B32: Normalization(512), 512-32-32-1 with ReLU, dropout after the second layer."""
    return _nsfw(head.dim or 512, (32, 32), dropout_after=2)


def _nsfw(dim: int, hidden: tuple, dropout_after):
    import torch
    from torch import nn

    class Normalization(nn.Module):
        """Keras' Normalization layer as LAION ported it: (x - mean) / (sqrt(variance) + 1e-10)."""

        def __init__(self, n):
            super().__init__()
            self.register_buffer("mean", torch.zeros(n))
            self.register_buffer("variance", torch.ones(n))

        def forward(self, x):
            return (x - self.mean) / (self.variance.sqrt() + 1e-10)

    class NSFW(nn.Module):
        """LAION's CLIP-based NSFW detector (`norm`, `linear_1` ... `linear_N`)."""

        def __init__(self):
            super().__init__()
            self.norm = Normalization(dim)
            sizes = (dim, *hidden, 1)
            for i in range(len(sizes) - 1):
                setattr(self, f"linear_{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
            self.depth = len(sizes) - 1
            self.dropout = nn.Dropout(0.5)

        def forward(self, x):
            x = self.norm(x)
            for i in range(1, self.depth):
                x = torch.relu(getattr(self, f"linear_{i}")(x))
                if i == dropout_after:
                    x = self.dropout(x)
            return getattr(self, f"linear_{self.depth}")(x)

    return NSFW()


def linear(head):
    """LAION aesthetic predictor v1: one linear layer over the embedding."""
    from torch import nn

    return nn.Linear(head.dim, 1)


def aesthetic_mlp_v2(head):
    """The improved aesthetic predictor's MLP: dim-1024-128-64-16-1, no activations."""
    from torch import nn

    class MLP(nn.Module):
        """`layers` as simple_inference.py defines it (its dropouts keep the published key numbers)."""

        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(head.dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                        nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                                        nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)

    return MLP()


def watermark_efficientnet_b3(head):
    """timm efficientnet_b3 with LAION's watermark classifier (1536-625-ReLU-Dropout-256-ReLU-2)."""
    import timm
    from torch import nn

    model = timm.create_model("efficientnet_b3", pretrained=False, num_classes=2)
    model.classifier = nn.Sequential(nn.Linear(1536, 625), nn.ReLU(), nn.Dropout(p=0.3), nn.Linear(625, 256),
                                     nn.ReLU(), nn.Linear(256, 2))
    return model


for _name, _fn in {"laion-nsfw-l14": laion_nsfw_l14, "laion-nsfw-b32": laion_nsfw_b32, "linear": linear,
                   "aesthetic-mlp-v2": aesthetic_mlp_v2,
                   "laion-watermark-efficientnet-b3": watermark_efficientnet_b3}.items():
    ARCHS.register(_name, _fn, builtin=True)


def build(head):
    """A head's module with random weights (what tests save in the published layout)."""
    return ARCHS.get(head.arch)(head)


def load(head, path: str, device: str = "cpu"):
    """A head's module with its weights file loaded (a state dict, as published), in eval mode;
    a file that does not fit the architecture is one line naming the keys that differ."""
    import torch

    from recaption.errors import RecaptionError

    model = build(head)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's messages run to many lines: the first says what failed
        import pickle

        first = (str(e).strip().splitlines() or [""])[0]
        if isinstance(e, pickle.UnpicklingError):  # its first line advises weights_only=False: never here
            first = "not a state dict torch.load reads with weights_only=True (the published .pth files are)"
        raise RecaptionError(f"head {head.name}: cannot read weights {path}: {type(e).__name__}: {first}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a Lightning checkpoint keeps it one level down
    if not isinstance(state, dict):
        raise RecaptionError(f"head {head.name}: {path} holds no state dict")
    want, got = set(model.state_dict()), set(state)
    if want != got:
        raise RecaptionError(f"head {head.name}: {path} does not fit {head.arch}: missing {sorted(want - got)[:4]}, "
                             f"unexpected {sorted(got - want)[:4]}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RecaptionError(f"head {head.name}: {path} does not fit {head.arch}: "
                             f"{str(e).splitlines()[-1].strip()}") from None
    return model.eval().to(device)


def scores(head, outputs):
    """The declared score from raw outputs [N, K] -> float32 numpy [N]."""
    import torch

    kind, _, index = head.output.partition(":")
    outputs = outputs.float()
    if kind == "sigmoid":
        x = torch.sigmoid(outputs[:, 0])
    elif kind == "softmax":
        x = torch.softmax(outputs, dim=1)[:, int(index)]
    else:
        x = outputs[:, 0]
    return x.detach().cpu().numpy().astype("float32")
