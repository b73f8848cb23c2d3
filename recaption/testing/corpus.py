"""A shard set holding every kind of broken input recaption must survive (issue 9), with the
outcome each sample must have: `expect[key] = None` for a good sample, else a reason fragment."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from recaption.io.writer import add_member
from recaption.demo.samples import make_sample

import random


def _img(mode="RGB", size=(48, 48), fmt="PNG", color=None, **save) -> bytes:
    im = Image.new(mode, size, color if color is not None else ((200, 30, 30) if mode == "RGB" else 0))
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


def _raw_tar(path: Path, members: list[tuple[str, bytes]]):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            add_member(t, name, data)


def build(out: str | Path, huge_caption_chars: int = 100_000) -> tuple[Path, dict[str, str | None]]:
    """Write the bad-input corpus; returns its folder and the outcome each key must have."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(5)
    meta = lambda k: json.dumps({"key": k, "url": f"https://x/{k}"}).encode()  # noqa: E731
    expect: dict[str, str | None] = {}
    m: list[tuple[str, bytes]] = []

    def add(key, fields: dict[str, bytes], outcome):
        expect[key] = outcome
        m.extend((f"{key}.{f}", d) for f, d in fields.items())

    for i in range(3):
        add(f"good{i}", make_sample(rng, f"good{i}"), None)
    jpg = make_sample(rng, "x")
    img = jpg.get("jpg") or jpg.get("png")
    add("corrupt", {"jpg": b"\xff\xd8\xff\xe0garbage" * 10, "txt": b"a cat"}, "decode:")
    add("truncated", {"jpg": _img(fmt="JPEG")[:200], "txt": b"a cat"}, "decode:")
    add("zerobyte", {"jpg": b"", "txt": b"a cat"}, "empty")
    p16 = Image.new("I;16", (40, 40))
    p16.putpixel((0, 0), 65535)
    buf = io.BytesIO()
    p16.save(buf, format="PNG")
    add("png16", {"png": buf.getvalue(), "txt": b"grey ramp"}, None)
    add("cmyk", {"jpg": _img("CMYK", fmt="JPEG", color=(0, 255, 255, 0)), "txt": b"cmyk red"}, None)
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    add("palette", {"png": buf.getvalue(), "txt": b"palette"}, None)
    frames = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    add("animated", {"png": buf.getvalue(), "txt": b"animated"}, None)
    add("webp", {"webp": _img(fmt="WEBP"), "txt": b"a webp"}, None)
    add("bomb", {"png": _img(size=(600, 600)), "txt": b"huge"}, "over the limit")
    add("noimage", {"txt": b"just text", "json": meta("noimage")}, "no image member")
    add("notxt", {"jpg": img, "json": meta("notxt")}, "no raw caption")
    add("emptytxt", {"jpg": img, "txt": b"   "}, "no raw caption")
    add("badutf8", {"jpg": img, "txt": b"caf\xe9 \xff"}, "not UTF-8")
    add("badjson", {"jpg": img, "txt": b"x", "json": b"{oops"}, "invalid json")
    add("listjson", {"jpg": img, "txt": b"x", "json": b"[1]"}, "not an object")
    add("bigint", {"jpg": img, "txt": b"x", "json": b'{"n": ' + b"9" * 5001 + b"}"}, "integer of 5001 digits")
    add("deepjson", {"jpg": img, "txt": b"x", "json": b"[" * 200_000 + b"]" * 200_000}, "levels deep")
    add("huge", {"jpg": img, "txt": ("very long caption " * (huge_caption_chars // 18)).encode()}, None)
    add("dup", {"jpg": img, "txt": b"first"}, None)
    add("between", {"jpg": img, "txt": b"between"}, None)
    m.extend([("dup.jpg", img), ("dup.txt", b"second")])  # the same key again, later: refused
    m.extend([("../escape.jpg", img), ("../escape.txt", b"x")])
    m.extend([("/abs.jpg", img), ("/abs.txt", b"x")])
    _raw_tar(out / "00000.tar", m)

    good2 = [(f"s1_{i}", make_sample(rng, f"s1_{i}")) for i in range(3)]
    _raw_tar(out / "00001.tar", [(f"{k}.{f}", d) for k, fs in good2 for f, d in fs.items()])
    for k, _ in good2:
        expect[k] = None
    full = (out / "00001.tar").read_bytes()
    cut = [(f"s2_{i}", make_sample(rng, f"s2_{i}")) for i in range(4)]
    _raw_tar(out / "00002.tar", [(f"{k}.{f}", d) for k, fs in cut for f, d in fs.items()])
    data = (out / "00002.tar").read_bytes()
    (out / "00002.tar").write_bytes(data[: int(len(data) * 0.6)])  # truncated mid-member
    (out / "00003.tar").write_bytes(b"<html>not a tar</html>" * 40)
    _raw_tar(out / "00004.tar", [])
    # cut exactly between two samples, as a partial copy or an early-closed transfer leaves it
    between = [(f"s5_{i}", make_sample(rng, f"s5_{i}")) for i in range(4)]
    _raw_tar(out / "00005.tar", [(f"{k}.{f}", d) for k, fs in between[:3] for f, d in fs.items()])
    whole = (out / "00005.tar").read_bytes()
    with tarfile.open(out / "00005.tar") as t:
        end = t.getmembers()[-1]
        cut = end.offset_data + -(-end.size // 512) * 512  # after the last member's data blocks
    (out / "00005.tar").write_bytes(whole[:cut])
    for k, _ in between[:2]:
        expect[k] = None
    expect["s5_2"] = "may be cut off"  # its later members could be what was lost
    del full
    return out, expect
