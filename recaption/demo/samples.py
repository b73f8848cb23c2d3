"""Deterministic sample shards: real JPEG/PNG bytes drawn with PIL, alt-text, img2dataset json."""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

from recaption.io.writer import add_member

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
          "black": (20, 20, 20), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle")
ALT_TEMPLATES = (
    "a {c} {s} on a {b} background",
    "Stock Photo - {c} {s}",
    "IMAGE of a {c} {s}",
    "photo of {s} {c} | free download",
    "{c} {s} images for your website",
    "DSC_{n}.JPG",
    "",
)


def draw(rng: random.Random, size: int, fmt: str) -> tuple[bytes, str, str, str]:
    """A drawn shape as JPEG or PNG bytes, with its colour, shape and background names."""
    from PIL import Image, ImageDraw

    c, b = rng.sample(list(COLORS), 2)
    s = rng.choice(SHAPES)
    im = Image.new("RGB", (size, size), COLORS[b])
    d = ImageDraw.Draw(im)
    m = size // 5 + rng.randrange(size // 8)
    box = (m, m, size - m, size - m)
    if s == "circle":
        d.ellipse(box, fill=COLORS[c])
    elif s == "square":
        d.rectangle(box, fill=COLORS[c])
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=COLORS[c])
    buf = io.BytesIO()
    im.save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=85)
    return buf.getvalue(), c, s, b


def make_sample(rng: random.Random, key: str, size: int = 96) -> dict[str, bytes]:
    """The members of one sample: image, alt-text and img2dataset-style json."""
    fmt = "png" if rng.random() < 0.25 else "jpg"
    img, c, s, b = draw(rng, size, fmt)
    alt = rng.choice(ALT_TEMPLATES).format(c=c, s=s, b=b, n=rng.randrange(1000, 9999))
    url = f"https://example.com/img/{key}.{fmt}"
    meta = {
        "url": url, "caption": alt, "key": key, "status": "success", "error_message": None,
        "width": size, "height": size, "original_width": size * 4, "original_height": size * 4,
        "exif": "{}", "uid": f"{rng.getrandbits(128):032x}",
    }
    return {fmt: img, "txt": alt.encode(), "json": json.dumps(meta).encode()}


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """Write samples as a WebDataset tar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples:
            for fld, data in members.items():
                add_member(tar, f"{key}.{fld}", data)
    return path


def make_shards(out: str | Path, n_shards: int = 3, per_shard: int = 16, seed: int = 0,
                size: int = 96) -> list[Path]:
    """Write `n_shards` shards named 00000.tar.. with keys like img2dataset's (shard + index)."""
    out = Path(out)
    rng = random.Random(seed)
    paths = []
    for s in range(n_shards):
        samples = []
        for i in range(per_shard):
            key = f"{s:05d}{i:04d}"
            samples.append((key, make_sample(rng, key, size)))
        paths.append(write_tar(out / f"{s:05d}.tar", samples))
    return paths
