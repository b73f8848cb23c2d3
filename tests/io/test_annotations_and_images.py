import io

import pyarrow as pa
import pytest
from PIL import Image

from recaption import annotators
from recaption.io import annotations as ann
from recaption.io import tarindex
from recaption.io.images import ImageError, decode


def test_annotation_schema_is_exact(tmp_path):
    rows = [annotators.empty_row("k", "00000", "alt") | {"captions": ["a", "b"], "clip_captions": [0.1, 0.2],
                                                         "captioner": "m", "clip_raw": 0.3},
            annotators.error_row("k2", "00000", "decode: bad")]
    ann.write(str(tmp_path / "00000.parquet"), rows, schema=annotators.schema())
    t = ann.read(str(tmp_path / "00000.parquet"))
    assert t.schema.names[: len(ann.COLUMNS)] == ann.COLUMNS  # the fixed columns first, in order
    # then every annotator's other columns, typed, group by group, then the member index and the digests
    assert t.schema.names[len(ann.COLUMNS):] == ([c.name for c in annotators.extra_columns()]
                                                 + list(tarindex.NAMES) + list(tarindex.DIGEST_NAMES))
    assert t.schema.field("lang_prob").type == pa.float32() and t.schema.field("image_bytes").type == pa.int64()
    assert t.schema.field("clip_raw").type == pa.float32()
    assert t.schema.field("clip_captions").type == pa.list_(pa.float32())
    assert t.schema.field("captions").type == pa.list_(pa.string())
    got = t.to_pylist()
    assert got[0]["captions"] == ["a", "b"] and got[1]["status"] == "error" and got[1]["error"] == "decode: bad"
    assert [p.name for p in tmp_path.iterdir()] == ["00000.parquet"]  # no temp left behind


def _png(mode, size=(8, 8), **kw):
    buf = io.BytesIO()
    Image.new(mode, size, **kw).save(buf, format="PNG" if mode != "CMYK" else "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "LA", "L", "RGBA"])
def test_odd_modes_decode_to_rgb(mode):
    assert decode(_png(mode)).mode == "RGB"


def test_palette_with_transparency_is_composited_on_white():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0)
    assert decode(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_bad_images_raise_readable_errors():
    with pytest.raises(ImageError, match="empty"):
        decode(b"")
    with pytest.raises(ImageError, match="not a recognised"):
        decode(b"hello world")
    good = _png("RGB", (64, 64))
    with pytest.raises(ImageError, match="cannot decode"):
        decode(good[: len(good) // 2])
    with pytest.raises(ImageError, match="over the limit"):
        decode(_png("RGB", (100, 100)), max_pixels=5000)
