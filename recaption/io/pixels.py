"""What a model's pixel input is (PixelSpec), and the tensor ops that make it from uint8 images.

A spec is plain numbers read from the model's own processor or transform config, so this module
knows no model. Resize and crop run on uint8 tensors wherever they are (CPU worker processes, or
the GPU); normalisation runs last, on the model's device, so batches cross to it as uint8.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class PixelSpec:
    """One model's pixel input: resize, optional centre crop, then (x * scale - mean) / std."""

    resize: str  # "squash": to `resize_size` exactly | "shortest": short side to `resize_size[0]`
    resize_size: tuple[int, ...]
    crop: tuple[int, int] | None = None  # (h, w) centre crop after the resize
    crop_floor: bool = False  # offsets int((h - ch) / 2) as transformers does; else round() as torchvision
    interpolation: str = "bicubic"
    antialias: bool = True
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if self.resize not in ("squash", "shortest"):
            raise ValueError(f"resize must be 'squash' or 'shortest', got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of what the model receives."""
        if self.crop is not None:
            return tuple(self.crop)
        if self.resize == "squash":
            return tuple(self.resize_size)
        raise ValueError("a 'shortest' resize without a crop has no fixed size")

    @property
    def draft_size(self) -> int:
        """The smallest side a decoded image needs before this spec's resize (JPEG draft mode)."""
        return max(self.resize_size)


def resize_crop(x: "torch.Tensor", spec: PixelSpec) -> "torch.Tensor":
    """uint8 [..., 3, H, W] (one image or a same-size stack) -> uint8 [..., 3, h, w] at `spec.size`.

    On CPU, torchvision resizes uint8 with its native antialiased kernels; elsewhere it resizes in
    float32 and rounds back to uint8, as Pillow and the processors' own uint8 results do.
    """
    import torchvision.transforms.v2.functional as tvF

    mode = {"bicubic": tvF.InterpolationMode.BICUBIC, "bilinear": tvF.InterpolationMode.BILINEAR,
            "nearest": tvF.InterpolationMode.NEAREST_EXACT}[spec.interpolation]
    size = list(spec.resize_size) if spec.resize == "squash" else int(spec.resize_size[0])
    x = tvF.resize(x, size, interpolation=mode, antialias=spec.antialias)
    if spec.crop is not None:
        x = _center_crop(x, spec.crop, spec.crop_floor)
    return x


def _center_crop(x, crop, floor: bool):
    import torchvision.transforms.v2.functional as tvF

    h, w = x.shape[-2:]
    ch, cw = crop
    if ch > h or cw > w or not floor:
        return tvF.center_crop(x, [ch, cw])  # pads with zeros where the image is smaller, as both do
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    return x[..., top:top + ch, left:left + cw]


def stack(images: list, spec: PixelSpec, out: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Variable-size uint8 [3, H, W] images -> one uint8 [N, 3, h, w] batch; same-size images are
    resized together in one call."""
    import torch

    h, w = spec.size
    out = torch.empty((len(images), 3, h, w), dtype=torch.uint8, device=images[0].device if images else "cpu") \
        if out is None else out
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    for idx in groups.values():
        batch = images[idx[0]][None] if len(idx) == 1 else torch.stack([images[i] for i in idx])
        r = resize_crop(batch, spec)
        out[idx] = r if r.device == out.device else r.to(out.device)
    return out


def normalize(x: "torch.Tensor", spec: PixelSpec, dtype=None) -> "torch.Tensor":
    """uint8 [N, 3, h, w] (any memory layout) -> contiguous (x * scale - mean) / std in float32,
    then cast to `dtype`.

    Run it on the model's device: the batch travels as uint8 (a quarter of float32's bytes)."""
    import torch

    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) / spec.scale
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) / spec.scale
    y = x.to(torch.float32, memory_format=torch.contiguous_format).sub_(mean).div_(std)
    return y if dtype is None or dtype == torch.float32 else y.to(dtype)


def is_pixels(images) -> bool:
    """True when a batch's images are already uint8 tensors (the fast path's per-model pixels)."""
    import torch

    return bool(len(images)) and all(isinstance(im, torch.Tensor) and im.dtype == torch.uint8 for im in images)


PREPROCESS = ("fast", "exact")


def specs_for(models: dict, preprocess: str = "fast") -> dict[str, PixelSpec | None]:
    """{name: PixelSpec} for the fast path, or None per model that keeps its own processor: all of
    them with preprocess='exact', and any model without `pixel_spec()` or whose spec is None."""
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
    out = {}
    for name, m in models.items():
        if m is None:
            continue
        get = getattr(m, "pixel_spec", None)
        out[name] = get() if preprocess == "fast" and get is not None else None
    return out


# -- specs from the models' own configs ------------------------------------------------------------

def from_hf_image_processor(ip) -> PixelSpec | None:
    """A transformers image processor (BLIP, BLIP-2) -> its spec, or None where the fast path would
    not reproduce it (no resize, min/max-edge sizes, padding, unusual resampling)."""
    from transformers.image_utils import PILImageResampling

    size = _size_dict(getattr(ip, "size", None))
    if not getattr(ip, "do_resize", True) or getattr(ip, "do_pad", False):
        return None
    if size.get("height") and size.get("width") and not size.get("shortest_edge"):
        resize, rsize = "squash", (int(size["height"]), int(size["width"]))
    elif size.get("shortest_edge") and not size.get("longest_edge") and not size.get("height"):
        resize, rsize = "shortest", (int(size["shortest_edge"]),)
    else:
        return None
    crop = None
    if getattr(ip, "do_center_crop", False):
        c = _size_dict(getattr(ip, "crop_size", None))
        if not (c.get("height") and c.get("width")):
            return None
        crop = (int(c["height"]), int(c["width"]))
    elif resize == "shortest":
        return None  # variable output size: nothing to batch
    interp = {PILImageResampling.BICUBIC: "bicubic", PILImageResampling.BILINEAR: "bilinear",
              PILImageResampling.NEAREST: "nearest"}.get(_resample(getattr(ip, "resample", None)))
    if interp is None:
        return None
    scale = float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else 1.0
    mean, std = (tuple(map(float, _triple(ip.image_mean))), tuple(map(float, _triple(ip.image_std)))) \
        if getattr(ip, "do_normalize", True) else ((0.0,) * 3, (1.0,) * 3)
    return PixelSpec(resize, rsize, crop, crop_floor=True, interpolation=interp, antialias=True,
                     scale=scale, mean=mean, std=std)


def from_open_clip(model) -> PixelSpec | None:
    """An open_clip model (CLIP, CoCa) -> the spec of its inference transform, or None for modes the
    fast path does not reproduce (`longest` with padding, non-square `shortest`)."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    cfg = PreprocessCfg(**{k: v for k, v in open_clip.get_model_preprocess_cfg(model).items()
                           if k in PreprocessCfg.__dataclass_fields__})
    size = tuple(cfg.size) if isinstance(cfg.size, (tuple, list)) else (int(cfg.size), int(cfg.size))
    interp = "bilinear" if cfg.interpolation == "bilinear" else "bicubic"  # open_clip's own mapping
    common = dict(interpolation=interp, antialias=True, scale=1 / 255, mean=tuple(map(float, _triple(cfg.mean))),
                  std=tuple(map(float, _triple(cfg.std))))
    if cfg.resize_mode == "squash":
        return PixelSpec("squash", size, **common)
    if cfg.resize_mode == "shortest" and size[0] == size[1]:
        return PixelSpec("shortest", (size[0],), crop=size, crop_floor=False, **common)
    return None


def _size_dict(s) -> dict:
    if s is None:
        return {}
    if isinstance(s, dict):
        return dict(s)
    return {k: getattr(s, k, None) for k in ("height", "width", "shortest_edge", "longest_edge")}


def _resample(r):
    from transformers.image_utils import PILImageResampling

    try:
        return PILImageResampling(int(r)) if r is not None else PILImageResampling.BILINEAR
    except (TypeError, ValueError):
        return None


def _triple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * 3
