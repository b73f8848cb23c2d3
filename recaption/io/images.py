"""Decode image bytes to RGB PIL images, safely: a pixel limit, odd modes, first frame only."""
from __future__ import annotations

import io
import warnings

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own bomb limit; settable per run


class ImageError(ValueError):
    """Image bytes that cannot become an image; the message says why."""
    pass


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None):
    """Bytes -> RGB PIL image, or ImageError with a readable reason."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            if draft_size and im.format == "JPEG":
                # JPEG draft mode decodes at 1/2..1/8 scale straight from the DCT: much cheaper.
                im.draft("RGB", (draft_size, draft_size))
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            out = to_rgb(im)
            out.info["source_size"] = (w, h)  # the stored image's size, before draft-mode scaling
            return out
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("bytes are not a recognised image format") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"decompression bomb: {e}") from None
    except Exception as e:  # truncated data, bad headers, codec errors
        raise ImageError(f"cannot decode image ({type(e).__name__}: {e})") from None


def to_rgb(im):
    """Any PIL mode as RGB: 16-bit scaled, palettes and alpha composited on white."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        return Image.fromarray((a / hi * 255.0).clip(0, 255).astype("uint8"), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im.convert("RGBA"), mask=im.convert("RGBA").split()[-1])
        return bg
    return im.convert("RGB")
