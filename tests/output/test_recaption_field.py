"""The recaption json field encoded column-wise is, byte for byte, what Python's json encoder
writes for each row's object."""
import json
import random

import pyarrow as pa

from recaption.output.members import recaption_object
from recaption.mixing.plan import SCHEMA
from recaption.output.recaption_field import FIELDS, encode

ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode


def test_column_encoding_is_the_python_encoders():
    rng = random.Random(0)
    texts = [None, "", "plain text", 'a "quote"', "back\\slash", "new\nline\ttab\x01\x1f\x7f", "ünïcödé 猫 🐱",
             "\u2028 separator", "x" * 300]
    floats = [None, 0.0, -0.0, 1.0, -1.0, 100.0, 1e-05, -3.2e-07, 1e-4, 0.33000001311302185, 1e15, 2e16,
              123456789.5, 5e-324]
    rows = []
    for _ in range(3000):
        r = {k: rng.choice(texts) for k in ("raw_caption", "synthetic_caption", "captioner")}
        r["caption_source"] = rng.choice(["raw", "synthetic", None])
        for k in ("clip_raw", "clip_synthetic", "sieve", "blend"):
            r[k] = rng.choice(floats + [rng.uniform(-1, 1), rng.gauss(0, 1e-4), float(rng.randrange(-5, 5))])
        rows.append(r)
    t = pa.Table.from_pylist(rows, schema=pa.schema([f for f in SCHEMA if f.name in FIELDS]))
    for strategy in ("raw", "both"):
        assert encode(t, strategy) == [ENCODE(recaption_object(r, strategy)).encode() for r in rows]
    assert encode(t.slice(0, 0), "raw") == []
    nulls = pa.table({k: pa.nulls(2) for k in FIELDS})  # a column null in every row has the null type
    assert encode(nulls, "sieve") == [ENCODE(recaption_object({k: None for k in FIELDS}, "sieve")).encode()] * 2
