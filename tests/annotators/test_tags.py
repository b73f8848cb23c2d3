"""Issue 34: LAION's tags. The heads are data (a declaration beside a weights file); each LAION head's
architecture is built exactly, saved with random weights in its published state-dict layout and
loaded back through the code annotate uses; one annotate fills punsafe, pwatermark and aesthetic
from one decode, the CLIP heads reading the pass's own CLIP forward; the rules cut on them."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recaption import annotators
from recaption.scoring import heads
from recaption.scoring.heads import arch
from tests.helpers import cli, photo_shards

# The published files' keys (LAION-AI/CLIP-based-NSFW-Detector src/models.py, aesthetic-predictor's
# nn.Linear, improved-aesthetic-predictor's MLP): what a published file holds, so what must load.
WB = ("weight", "bias")
PUBLISHED_KEYS = {
    "laion-nsfw-l14": {"norm.mean", "norm.variance"} | {f"linear_{i}.{p}" for i in range(1, 5) for p in WB},
    "laion-nsfw-b32": {"norm.mean", "norm.variance"} | {f"linear_{i}.{p}" for i in range(1, 4) for p in WB},
    "linear": {"weight", "bias"},
    "aesthetic-mlp-v2": {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")},
}


def _reference(head, state, x):
    """The published forward, written out from the sources in numpy (float64)."""
    s = {k: v.double().numpy() for k, v in state.items()}
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    lin = lambda a, n: a @ s[f"{n}.weight"].T + s[f"{n}.bias"]  # noqa: E731
    if head.arch.startswith("laion-nsfw"):
        a = (x - s["norm.mean"]) / (np.sqrt(s["norm.variance"]) + 1e-10)
        n = 4 if head.arch.endswith("l14") else 3
        for i in range(1, n):
            a = relu(lin(a, f"linear_{i}"))
        return 1 / (1 + np.exp(-lin(a, f"linear_{n}")[:, 0]))
    if head.arch == "linear":
        return (x @ s["weight"].T + s["bias"])[:, 0]
    a = x
    for i in (0, 2, 4, 6, 7):
        a = lin(a, f"layers.{i}")
    return a[:, 0]


@pytest.mark.parametrize("name", [n for n in heads.names() if heads.get(n).input == "clip"])
def test_each_clip_head_loads_its_published_layout_and_computes_the_published_forward(name, tmp_path):
    head = heads.get(name)
    torch.manual_seed(0)
    model = arch.build(head)
    state = model.state_dict()
    if head.arch.startswith("laion-nsfw"):  # Keras' normalisation statistics: not the identity
        state["norm.mean"].uniform_(-0.05, 0.05)
        state["norm.variance"].uniform_(0.0005, 0.002)
    assert set(state) == PUBLISHED_KEYS[head.arch]
    assert state[next(k for k in state if k.endswith("weight"))].shape[-1] == head.dim
    path = tmp_path / head.weights
    torch.save(state, path)
    loaded = arch.load(head, str(path))
    x = torch.nn.functional.normalize(torch.randn(6, head.dim), dim=-1)
    with torch.no_grad():
        got = arch.scores(head, loaded(x))
    assert np.allclose(got, _reference(head, state, x.double().numpy()), atol=1e-5)
    if head.output == "sigmoid":
        assert ((got > 0) & (got < 1)).all()


def test_the_watermark_head_is_timm_efficientnet_b3_with_the_repositorys_classifier(tmp_path):
    import timm

    head = heads.get("laion-watermark-v1")
    torch.manual_seed(0)
    model = arch.build(head)
    # the repository's own construction (example_use.py), efficientnet_b3a being timm's efficientnet_b3 now
    ref = timm.create_model("efficientnet_b3", pretrained=False, num_classes=2)
    ref.classifier = torch.nn.Sequential(torch.nn.Linear(1536, 625), torch.nn.ReLU(), torch.nn.Dropout(p=0.3),
                                         torch.nn.Linear(625, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2))
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    torch.save(model.state_dict(), tmp_path / head.weights)
    ref.load_state_dict(torch.load(tmp_path / head.weights, weights_only=True))
    loaded = arch.load(head, str(tmp_path / head.weights))
    x = torch.randn(2, 3, 64, 64)  # the same layers at any size (global pooling): 16x fewer pixels than 256
    with torch.no_grad():
        assert np.allclose(arch.scores(head, loaded(x)), torch.softmax(ref.eval()(x), 1)[:, 0].numpy(), atol=1e-5)


def test_weights_that_do_not_fit_are_one_line_naming_the_keys(tmp_path):
    head = heads.get("laion-nsfw-vit-l-14")
    torch.save(arch.build(heads.get("laion-nsfw-vit-b-32")).state_dict(), tmp_path / "b32.pth")
    with pytest.raises(Exception, match="does not fit laion-nsfw-l14"):
        arch.load(head, str(tmp_path / "b32.pth"))


def test_a_weights_file_torch_cannot_read_is_one_line(tmp_path):
    # a CSV given as the weights: torch's own message runs to a dozen lines
    (tmp_path / "caps.csv").write_text("key,caption\n000000000,a red square\n")
    for bad in ("caps.csv", "missing.pth"):
        with pytest.raises(Exception) as e:
            arch.load(heads.get("laion-nsfw-vit-l-14"), str(tmp_path / bad))
        assert "\n" not in str(e.value) and "cannot read weights" in str(e.value) and bad in str(e.value)


def test_heads_are_data_and_an_unknown_name_is_refused_with_the_nearest():
    from recaption.errors import RecaptionError

    assert set(heads.names("punsafe")) == {"laion-nsfw-vit-l-14", "laion-nsfw-vit-b-32"}
    with pytest.raises(RecaptionError, match="did you mean laion-nsfw-vit-l-14"):
        heads.resolve("laion-nsfw-vit-l14", "punsafe")
    with pytest.raises(RecaptionError, match="gives aesthetic, not punsafe"):
        heads.resolve("laion-aesthetic-v2-vit-l-14", "punsafe")


# -- one annotate, the three tags ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """Photo shards, a tiny CLIP 768 wide, a declaration per CLIP head over it (the published
    architectures, random weights saved beside), the watermark net's random weights, and one
    annotate with all three tags and --save-embeddings."""
    from recaption.demo.tiny_models import build_clip

    root = tmp_path_factory.mktemp("tags")
    shards = photo_shards(root / "in")
    clip = build_clip(root / "clip", embed_dim=768)
    decl = {}
    for tag, base in (("punsafe", "laion-nsfw-vit-l-14"), ("aesthetic", "laion-aesthetic-v2-vit-l-14")):
        h = heads.get(base)
        torch.manual_seed(1)
        m = arch.build(h)
        torch.save(m.state_dict(), root / h.weights)
        d = yaml.safe_load((heads.HERE / "heads.yaml").read_text())[base]
        d["clip"] = {"model": clip, "pretrained": None}
        (root / f"{tag}.yaml").write_text(yaml.safe_dump({"name": f"tiny-{tag}", **d}))
        decl[tag] = root / f"{tag}.yaml"
    wm = heads.get("laion-watermark-v1")
    torch.manual_seed(2)
    torch.save(arch.build(wm).state_dict(), root / "wm.pt")
    ann = root / "ann"
    args = ["score", shards, "-a", ann, "--clip-model", clip, "--no-sieve", "-q",
            "--punsafe-head", decl["punsafe"], "--aesthetic-head", decl["aesthetic"], "--pwatermark-weights",
            root / "wm.pt", "--save-embeddings"]
    assert cli(*args) == 0
    return {"root": root, "shards": shards, "clip": clip, "decl": decl, "ann": ann, "args": args}


def test_one_annotate_fills_the_three_tags_and_records_what_produced_them(tagged):
    rows = [r for n in ("00000", "00001") for r in pq.read_table(tagged["ann"] / f"{n}.parquet").to_pylist()]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 30
    for tag in ("punsafe", "pwatermark", "aesthetic"):
        assert all(r[tag] is not None for r in ok), tag
        assert all(r[tag] is None for r in rows if r["status"] != "ok"), tag
    assert all(0 <= r["punsafe"] <= 1 and 0 <= r["pwatermark"] <= 1 for r in ok)
    assert len({round(r["aesthetic"], 5) for r in ok}) > 5  # a score per image, not one constant
    groups = json.loads((tagged["ann"] / "_recaption.json").read_text())["groups"]
    assert groups["punsafe"]["head"] == "tiny-punsafe" and groups["punsafe"]["clip"] == tagged["clip"]
    weights = tagged["root"] / "clip_ViT-L-14_openai_binary_nsfw_head.pth"
    assert groups["punsafe"]["sha256"] == heads.sha256(str(weights))
    assert groups["aesthetic"]["arch"] == "aesthetic-mlp-v2" and groups["pwatermark"]["output"] == "softmax:0"


def test_the_clip_heads_read_the_pass_embedding(tagged):
    """The heads' values are the heads applied to the very embeddings the clip group kept."""
    from recaption.io import embeddings

    for tag in ("punsafe", "aesthetic"):
        head = heads.resolve(str(tagged["decl"][tag]), tag)
        model = arch.load(head, str(tagged["root"] / head.weights))
        rows = pq.read_table(tagged["ann"] / "00000.parquet").to_pylist()
        v, meta = embeddings.read(str(tagged["ann"]), "00000")
        ok = np.asarray(meta["embedded"].to_pylist())
        with torch.no_grad():
            want = arch.scores(head, model(torch.from_numpy(v[ok].astype(np.float32))))
        got = np.array([r[tag] for r, k in zip(rows, ok) if k])
        assert np.allclose(got, want, atol=2e-3), tag


def test_the_heads_share_the_pass_clip_model_and_its_one_decode(tagged):
    """Built in a worker, the CLIP heads hold the clip group's own scorer: one image model, one input."""
    from recaption import api
    from recaption.stages.bundle import AnnotatorSpec, Bundle

    values = {"clip_model": tagged["clip"], "dtype": "float32", "punsafe_head": str(tagged["decl"]["punsafe"]),
              "aesthetic_head": str(tagged["decl"]["aesthetic"]), "pwatermark_weights": str(tagged["root"] / "wm.pt")}
    cfgs = api.annotator_configs(annotators.configure(values | {"no_sieve": True}, kinds=("scorer",)))
    b = Bundle(AnnotatorSpec(cfgs, {n: annotators.target(n) for n in cfgs}))
    assert b.annotators["punsafe"].scorer is b.annotators["clip"].scorer is b.annotators["aesthetic"].scorer
    assert sorted(b.models) == ["clip.clip", "fingerprints.phash", "pwatermark.pixels"]


def test_max_punsafe_and_min_aesthetic_cut_where_the_values_say(tagged):
    from tests.helpers import dropped, read_output

    rows = [r for n in ("00000", "00001") for r in pq.read_table(tagged["ann"] / f"{n}.parquet").to_pylist()
            if r["status"] == "ok"]
    cut_p = float(np.median([r["punsafe"] for r in rows]))
    cut_a = float(np.median([r["aesthetic"] for r in rows]))
    out = tagged["root"] / "mixed"
    assert cli("mix", tagged["shards"], "-a", tagged["ann"], "-o", out, "--strategy", "raw", "--filter",
               f"max-punsafe={cut_p}", "--filter", f"min-aesthetic={cut_a}", "-q") == 0
    kept = set(read_output(out))
    want = {r["key"] for r in rows if r["punsafe"] <= cut_p and r["aesthetic"] >= cut_a}
    assert kept == want and 0 < len(kept) < len(rows)
    reasons = dropped(out)
    assert any(v.startswith("filter: max-punsafe") for v in reasons.values())


def test_models_lists_every_head(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert cli("models") == 0
    out = capsys.readouterr().out
    assert all(n in out for n in heads.names()) and "open-nsfw" in out


def test_a_laion_head_without_its_weights_is_refused_in_one_line(tmp_path, capsys):
    shards = photo_shards(tmp_path / "in")
    assert cli("score", shards, "-a", tmp_path / "ann", "--punsafe", "--no-clip", "--no-sieve", "-q") == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("recaption: error:")]
    assert len(err) == 1 and "clip_ViT-L-14_openai_binary_nsfw_head.pth" in err[0]
    assert not (tmp_path / "ann").exists()


# -- heads over saved embeddings (item 5) ----------------------------------------------------------
def test_score_computes_the_clip_heads_from_saved_embeddings_without_reading_an_image(tagged, tmp_path):
    """A pass that saved its embeddings and computed no tag; then `score --TAG-from-embeddings` with
    every shard's bytes overwritten (root reads any mode, so the tars are garbage, not unreadable):
    the columns equal the annotate pass's tags on the same shards, under the same record."""
    import shutil

    shards = tmp_path / "in"
    shutil.copytree(tagged["shards"], shards)
    ann = tmp_path / "ann"
    assert cli("score", shards, "-a", ann, "--clip-model", tagged["clip"], "--no-sieve", "-q",
               "--save-embeddings") == 0
    for tar in shards.glob("*.tar"):
        tar.write_bytes(b"\0" * tar.stat().st_size)  # any read of a sample would fail now
    assert cli("score", shards, "-a", ann, "--no-clip", "--no-sieve", "-q",
               "--punsafe-head", tagged["decl"]["punsafe"], "--punsafe-from-embeddings",
               "--aesthetic-head", tagged["decl"]["aesthetic"], "--aesthetic-from-embeddings") == 0
    tagged_rows = 0
    for n in ("00000", "00001"):
        want = pq.read_table(tagged["ann"] / f"{n}.parquet").to_pylist()
        got = pq.read_table(ann / f"{n}.parquet").to_pylist()
        assert [r["key"] for r in got] == [r["key"] for r in want]
        for tag in ("punsafe", "aesthetic"):
            w = np.array([np.nan if r[tag] is None else r[tag] for r in want], float)
            g = np.array([np.nan if r[tag] is None else r[tag] for r in got], float)
            assert (np.isnan(w) == np.isnan(g)).all(), tag
            assert np.allclose(g[~np.isnan(g)], w[~np.isnan(w)], atol=2e-3), tag  # float16 embeddings
        assert all(r["status"] == "ok" for r in got if r["key"] is not None and r["punsafe"] is not None)
        tagged_rows += sum(r["punsafe"] is not None for r in got)
    assert tagged_rows == 30  # every ok sample of the pass
    groups = json.loads((ann / "_recaption.json").read_text())["groups"]
    pass_groups = json.loads((tagged["ann"] / "_recaption.json").read_text())["groups"]
    for tag in ("punsafe", "aesthetic"):
        assert groups[tag] == pass_groups[tag], tag  # the same head, weights and CLIP recorded


def test_a_head_over_another_clip_than_the_saved_embeddings_is_refused_in_one_line(tagged, capsys):
    before = sorted(p.name for p in tagged["ann"].iterdir())
    weights = tagged["root"] / "clip_ViT-L-14_openai_binary_nsfw_head.pth"
    assert cli("score", tagged["shards"], "-a", tagged["ann"], "--no-clip", "--no-sieve", "-q",
               "--punsafe-weights", weights, "--punsafe-from-embeddings", "--overwrite") == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("recaption: error:")]
    assert len(err) == 1 and "ViT-L-14/openai" in err[0] and tagged["clip"] in err[0], err
    assert sorted(p.name for p in tagged["ann"].iterdir()) == before


def test_heads_from_embeddings_beside_a_clip_pass_that_would_remove_them_are_refused(tagged, capsys):
    assert cli("score", tagged["shards"], "-a", tagged["ann"], "--clip-model", tagged["clip"], "--no-sieve", "-q",
               "--punsafe-head", tagged["decl"]["punsafe"], "--punsafe-from-embeddings") == 2
    assert "--no-clip" in capsys.readouterr().err


# -- tags into a mixed output's json (item 7) ------------------------------------------------------
def _output_jsons(out):
    import webdataset as wds

    urls = sorted(str(p) for p in out.glob("*.tar"))
    return {s["__key__"]: json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)}


def test_tags_reach_the_mixed_json_only_when_asked_under_their_column_names(tagged, tmp_path):
    rows = {r["key"]: r for n in ("00000", "00001") for r in pq.read_table(tagged["ann"] / f"{n}.parquet").to_pylist()
            if r["key"] is not None}
    plain, tagged_out = tmp_path / "plain", tmp_path / "tagged"
    assert cli("mix", tagged["shards"], "-a", tagged["ann"], "-o", plain, "--strategy", "raw", "-q") == 0
    assert cli("mix", tagged["shards"], "-a", tagged["ann"], "-o", tagged_out, "--strategy", "raw", "-q",
               "--json-tags", "punsafe,pwatermark", "--json-tags", "aesthetic") == 0
    without, with_tags = _output_jsons(plain), _output_jsons(tagged_out)
    assert set(without) == set(with_tags) and len(with_tags) == 30
    tags = ("punsafe", "pwatermark", "aesthetic")
    assert not any(t in j for j in without.values() for t in tags)
    for key, j in with_tags.items():
        assert list(j)[-4:] == [*tags, "recaption"]  # after the sample's own fields, before recaption's
        for t in tags:
            assert j[t] == rows[key][t], (key, t)  # the annotation's float32, exactly
        assert {k: v for k, v in j.items() if k not in tags} == without[key]


def test_an_overlay_with_json_tags_gives_readers_the_mixed_jsons(tagged, tmp_path):
    import webdataset as wds

    from recaption.webdataset import overlay

    full, ov = tmp_path / "full", tmp_path / "ov"
    tags = ("--json-tags", "punsafe,aesthetic")
    assert cli("mix", tagged["shards"], "-a", tagged["ann"], "-o", full, "--strategy", "raw", "-q", *tags) == 0
    assert cli("mix", tagged["shards"], "-a", tagged["ann"], "-o", ov, "--strategy", "raw", "-q", "--overlay",
               *tags) == 0
    urls = sorted(str(p) for p in tagged["shards"].glob("*.tar"))
    read = {s["__key__"]: s["json"] for s in wds.WebDataset(urls, shardshuffle=False).compose(overlay(str(ov)))}
    mixed = _output_jsons(full)
    assert set(read) == set(mixed) and all("punsafe" in j for j in mixed.values())
    assert {k: list(json.loads(v).items()) for k, v in read.items()} == {k: list(j.items()) for k, j in mixed.items()}


def test_json_tags_missing_from_the_annotation_or_unknown_are_refused_naming_them(tagged, tmp_path, capsys):
    for value, says in (("open_nsfw", "has no open_nsfw"), ("punsafee", "punsafe")):
        out = tmp_path / value
        assert cli("mix", tagged["shards"], "-a", tagged["ann"], "-o", out, "--strategy", "raw", "-q",
                   "--json-tags", value) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("recaption: error:")]
        assert len(err) == 1 and says in err[0] and value in err[0], err
        assert not out.exists()


def test_a_json_that_holds_a_tag_already_gets_it_replaced_not_twice(tagged, tmp_path):
    """LAION's shards keep punsafe in each sample's json: the mix's value replaces it (one key)."""
    from recaption.output import caption_keys, members

    keys = caption_keys.text_of({"punsafe": 0.25})
    text = b'{"url": "u", "punsafe": 0.9}'
    assert members.splice_recaption(text, b"{}", keys) is None  # never spliced beside the old key
    many = members.splice_many([text, b'{"url": "v"}'], pa_binary([b"{}", b"{}"]), pa_binary([keys, keys]))
    assert many.to_pylist()[0] is None and json.loads(many.to_pylist()[1])["punsafe"] == 0.25
    meta, made = members.with_recaption(text, {}, b"{}", {"punsafe": 0.25}, keys)
    assert made.count(b"punsafe") == 1 and json.loads(made)["punsafe"] == 0.25


def test_a_tag_recaption_lacks_is_written_null_never_leaving_the_inputs_value():
    import pyarrow as pa

    from recaption.output import caption_keys, members

    t = pa.table({"punsafe": pa.array([0.25, None, float("nan")], pa.float32())})
    texts = caption_keys.tag_column(t, ["punsafe"]).to_pylist()
    assert [json.loads("{" + x[:-2] + "}") for x in texts] == [{"punsafe": 0.25}, {"punsafe": None},
                                                              {"punsafe": None}]
    laion = b'{"url": "u", "punsafe": 0.9}'  # LAION's shards hold their own punsafe
    for keys, want in zip(texts, (0.25, None, None)):
        meta, made = members.with_recaption(laion, {}, b"{}", caption_keys.as_dict({"json_tags": keys}, "none"),
                                            keys.encode())
        assert made.count(b"punsafe") == 1 and json.loads(made)["punsafe"] == want, made


def pa_binary(values):
    import pyarrow as pa

    return pa.array(values, pa.binary())


# -- the report (item 7) -----------------------------------------------------------------------
def _sharpness(path) -> float:
    from PIL import Image

    g = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    return float(np.abs(np.diff(g, axis=1)).mean() + np.abs(np.diff(g, axis=0)).mean())


def test_the_report_blurs_the_grid_of_the_highest_punsafe_unless_asked(tagged, tmp_path, capsys):
    import re

    from recaption.report.data import K, sensitive_title
    from recaption.report.html import thumb_name

    pytest.importorskip("matplotlib")
    rows = [r for n in ("00000", "00001") for r in pq.read_table(tagged["ann"] / f"{n}.parquet").to_pylist()
            if r["status"] == "ok"]
    top = sorted(rows, key=lambda r: -r["punsafe"])[:K]
    base = ["report", tagged["ann"], "--input", tagged["shards"], "--filter", "max-punsafe=0.5"]
    assert cli(*base, "-o", tmp_path / "blurred") == 0
    assert cli(*base, "-o", tmp_path / "sharp", "--unblur") == 0
    page = (tmp_path / "blurred" / "index.html").read_text()
    grid = page.split(f"<h2>{sensitive_title('punsafe')} ")[1].split("<h2>")[0]
    assert f"({K} of {len(rows)} shown)" in grid and "--unblur shows them" in grid
    assert re.findall(r'class="k">([^ <]+) ', grid) == [r["key"] for r in top]  # highest first
    assert "--unblur shows them" not in (tmp_path / "sharp" / "index.html").read_text()
    for r in top:
        name = thumb_name(r["shard"], r["key"])
        blurred, sharp = _sharpness(tmp_path / "blurred" / name), _sharpness(tmp_path / "sharp" / name)
        assert blurred < sharp / 3, (r["key"], blurred, sharp)  # the page holds no sharp copy of it
    for tag in ("punsafe", "pwatermark", "aesthetic"):  # each tag's histogram is drawn
        assert (tmp_path / "blurred" / f"{tag}.png").is_file(), tag


def spread_punsafe(src, dst, step: float):
    """A copy of an annotation folder whose ok rows score punsafe 0, 7, 14... steps (mod 20 steps),
    and its ok rows: the tiny heads score every photo alike."""
    import pyarrow as pa

    ann = shutil.copytree(src, dst)
    rows = []
    for n in ("00000", "00001"):
        t = pq.read_table(ann / f"{n}.parquet")
        spread = [None if s != "ok" else ((i * 7) % 20) * step for i, s in enumerate(t["status"].to_pylist())]
        t = t.set_column(t.schema.get_field_index("punsafe"), "punsafe", pa.array(spread, pa.float32()))
        pq.write_table(t, ann / f"{n}.parquet")
        rows += [r for r in t.to_pylist() if r["status"] == "ok"]
    return ann, rows


def test_a_sample_scoring_past_blur_at_is_blurred_in_every_grid(tagged, tmp_path):
    """Past the highest few: a sample another grid shows is blurred where its punsafe is BLUR_AT or
    more (the tiny heads score every photo alike, so the scores are spread here by hand)."""
    from recaption.report.data import BLUR_AT, K
    from recaption.report.html import thumb_name

    pytest.importorskip("matplotlib")
    ann, rows = spread_punsafe(tagged["ann"], tmp_path / "ann", 1 / 20)
    top = {r["key"] for r in sorted(rows, key=lambda r: -r["punsafe"])[:K]}
    for out, extra in (("blurred", ()), ("sharp", ("--unblur",))):
        assert cli("report", ann, "--input", tagged["shards"], "-o", tmp_path / out, *extra) == 0
    others = [r for r in rows if r["key"] not in top
              and (tmp_path / "blurred" / thumb_name(r["shard"], r["key"])).is_file()]
    unsafe = [r for r in others if r["punsafe"] >= BLUR_AT]
    assert unsafe and len(unsafe) < len(others), [r["punsafe"] for r in others]
    for r in others:
        name = thumb_name(r["shard"], r["key"])
        ratio = _sharpness(tmp_path / "blurred" / name) / _sharpness(tmp_path / "sharp" / name)
        assert (ratio < 1 / 3) == (r in unsafe), (r["key"], r["punsafe"], ratio)


def test_unblur_on_a_folder_without_nsfw_scores_is_refused_in_one_line(tagged, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plain = tmp_path / "plain"
    assert cli("score", tagged["shards"], "-a", plain, "--clip-model", tagged["clip"], "--no-sieve", "-q") == 0
    capsys.readouterr()
    assert cli("report", plain, "-o", tmp_path / "r", "--unblur") == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("recaption: error:")]
    assert len(err) == 1 and "--unblur" in err[0] and "punsafe" in err[0], err
    assert not (tmp_path / "r").exists()


def test_verify_checks_the_json_tags_of_every_written_sample(tagged, tmp_path, capsys):
    """A tag value edited in a written json, or a summary recording other tags than the decisions,
    fails verify (it compared the recaption object only: the tags could say anything)."""
    import io
    import shutil
    import tarfile

    out = tmp_path / "out"
    assert cli("mix", tagged["shards"], "-a", tagged["ann"], "-o", out, "--strategy", "raw", "-q",
               "--json-tags", "punsafe,pwatermark") == 0
    assert cli("verify", out) == 0
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    tar = sorted(edited.glob("*.tar"))[0]
    with tarfile.open(tar) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers() if m.isfile()]
    first = next(m.name for m, _ in members if m.name.endswith(".json"))
    with tarfile.open(tar, "w") as dst:
        for m, data in members:
            if m.name == first:
                j = json.loads(data)
                data = data.replace(json.dumps(j["punsafe"]).encode(), json.dumps(j["punsafe"] / 2).encode())
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    capsys.readouterr()
    assert cli("verify", edited) == 1
    said = capsys.readouterr().out
    assert f"sample {first.split('.')[0]!r} has a json whose caption keys" in said, said
    s = json.loads((out / "_summary.json").read_text())
    (out / "_summary.json").write_text(json.dumps({**s, "json_tags": ["punsafe"]}))
    assert cli("verify", out) == 1
    assert "was made with json_tags ['punsafe', 'pwatermark'], _summary.json records ['punsafe']" in \
        capsys.readouterr().out


def test_an_overlap_of_a_blurred_sample_shows_the_evaluation_image_blurred_too(tagged, tmp_path):
    """The evaluation image an overlap pairs with a pool sample is a copy of it: shown sharp beside
    the blurred pool thumbnail, it was the sharp copy the page must not hold."""
    from PIL import Image

    from tests.helpers import PHOTOS

    pytest.importorskip("matplotlib")
    bench = tmp_path / "bench"
    bench.mkdir()
    for p in PHOTOS[:2]:  # astronaut and chelsea: each overlaps its copies in the pool
        Image.open(p).save(bench / f"{p.stem}.png")
    ann, _ = spread_punsafe(tagged["ann"], tmp_path / "ann", 1 / 50)  # below BLUR_AT: only the grid's are hidden
    out = tmp_path / "out"
    assert cli("mix", tagged["shards"], "-a", ann, "-o", out, "--strategy", "raw", "--decontaminate", bench,
               "-q") == 0
    assert cli("report", out, "-o", tmp_path / "blurred") == 0
    assert cli("report", out, "-o", tmp_path / "sharp", "--unblur") == 0
    from recaption.report.data import load
    from recaption.report.html import blurred

    d = load(out)
    hidden = blurred(d)
    evals = {o["eval"] for o in d.overlaps if (o["shard"], o["key"]) in hidden}
    pairs = [i for i, o in enumerate(d.overlaps) if o["eval"] in evals]  # every pair showing such an image
    assert any((d.overlaps[i]["shard"], d.overlaps[i]["key"]) not in hidden for i in pairs)  # a copy past the grid
    for i in pairs:
        for side in ("pool", "eval"):
            name = f"img/overlap-{i}-{side}.jpg"
            b, s = _sharpness(tmp_path / "blurred" / name), _sharpness(tmp_path / "sharp" / name)
            assert b < s / 3, (d.overlaps[i]["key"], side, b, s)
