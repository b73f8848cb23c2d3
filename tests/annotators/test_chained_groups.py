"""Chained and fused caption groups (issue 36 items 1-3): a text model's group reads `{alt_text}`
and `{caption:GROUP}`, runs after what it reads, on the rows its `where` rule selects, and is stale
when a group it reads changes."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recaption.annotators import groups
from recaption.captioners.base import BACKENDS, load_preset
from recaption.captioners.chat import Context, load_template, parse_template
from recaption.errors import RecaptionError
from tests.helpers import cli

FAKES = Path(__file__).parents[1] / "fakes"


def _template(tmp_path, name, body):
    p = tmp_path / f"{name}.txt"
    p.write_text(body)
    return str(p)


def _rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _ann_rows(ann) -> list[dict]:
    return [r for p in sorted(Path(ann).glob("*.parquet")) for r in _rows(p) if r["key"] is not None]


# -- templates and contexts -------------------------------------------------------------------
def test_a_template_fills_alt_text_and_other_groups_captions_once():
    t = parse_template("system: Keep names.\nA: {alt_text}\\nB: {caption:short}\\nC: {caption}")
    assert t.refs() == ["short", None]
    ctx = Context("VW {caption:short} wheel", {"short": "a wheel", None: "a car"})
    msgs = t.text_messages(ctx)
    # the alt-text's own marker is text, never filled again
    assert msgs == [{"role": "system", "content": "Keep names."},
                    {"role": "user", "content": "A: VW {caption:short} wheel\nB: a wheel\nC: a car"}]
    assert t.text_messages(Context(None, {})) [1]["content"] == "A: \nB: \nC: "


def test_capsfusion_template_is_the_released_scripts_prompt():
    # baaivision/CapsFusion capsfusion_inference.py, `wrap(ori_caption, synthetic_caption)`
    ori, syn = "VW T-ROC alloy wheel production vehicle teaser", "The wheel on the Volkswagen SUV is shown."
    want = ("Please merge and refine the information from the two given sentences. Sentence 1 provides detailed "
            "real-world knowledge, yet it suffers from flaws in sentence structure and grammar. Sentence 2 exhibits "
            "nice sentence structure, but lacking in-depth real-world details and may contain false information. "
            "Please combine them into a new sentence, ensuring a well-structured sentence while retaining the "
            "detailed real-world information provided in Sentence 1. Avoid simply concatenating the sentences.\n\n"
            f"Sentence 1: {ori}\nSentence 2: {syn}\nNew Sentence:")
    assert load_template("capsfusion").plain(Context(ori, {"short": syn})) == want


def test_text_backends_are_registered_text_models():
    text = [n for n in BACKENDS.names() if not BACKENDS.get(n).images]
    assert set(text) >= {"text", "vllm-text"}
    for n in text:
        assert BACKENDS.get(n).chat  # their prompts are template files



def test_a_text_models_default_template_is_the_one_recorded():
    """With no template a text model renders `refine`, not a VLM's default: a chained group
    records that template's digest, so an edited refine.txt is seen as other settings."""
    from recaption.annotators.base import RunContext
    from recaption.annotators.captions import Captions
    from recaption.captioners.base import CaptionerConfig
    from recaption.captioners.chat import DEFAULT_TEMPLATE, DEFAULT_TEXT_TEMPLATE
    from recaption.captioners.text import text_template

    assert DEFAULT_TEXT_TEMPLATE != DEFAULT_TEMPLATE
    for backend in [n for n in BACKENDS.names() if not BACKENDS.get(n).images]:
        cfg = CaptionerConfig(backend=backend, model="m")
        recorded = Captions.settings(cfg, RunContext())["template_sha256"]
        assert recorded == text_template(cfg).digest() == load_template(DEFAULT_TEXT_TEMPLATE).digest(), backend


def test_a_text_template_with_an_image_is_refused(tmp_path):
    from recaption.captioners.text import text_template

    cfg = load_preset(str(tmp_path), backend="text", template=_template(tmp_path, "t", "<image>\nSay {alt_text}"))
    with pytest.raises(RecaptionError, match="reads no image"):
        text_template(cfg)


def test_options_a_text_model_cannot_honour_are_refused(tmp_path):
    with pytest.raises(RecaptionError, match="the text backend takes no engine_args"):
        groups.from_recipe({"f": {"captioner": str(tmp_path), "caption": {"backend": "text",
                                                                        "engine_args": {"max_model_len": 512}}}})
    with pytest.raises(RecaptionError, match="does not do beam search"):
        groups.from_specs(["f=capsfus-llama,backend=vllm-text"])  # the preset's 3 beams, before any work
    assert groups.from_specs(["f=capsfus-llama-vllm"])["f"].caption.backend == "vllm-text"


def test_a_text_model_as_the_unnamed_captioner_is_refused(shard_dir, tmp_path, capsys):
    assert cli("annotate", shard_dir, "-o", tmp_path / "ann", "-c", "capsfus-llama", "--no-clip", "--no-sieve") != 0
    assert "--group NAME=capsfus-llama" in capsys.readouterr().err
    assert not (tmp_path / "ann").exists()


def test_a_vlm_group_reading_another_group_is_refused(tmp_path):
    t = _template(tmp_path, "t", "<image>\nFix {caption:short}")
    with pytest.raises(RecaptionError, match="read by a text model's caption group"):
        groups.from_specs([f"x={tmp_path},backend=vlm,template={t}"])
    with pytest.raises(RecaptionError, match="read by a text model's caption group"):
        load_preset(str(tmp_path), backend="vlm", template=t)  # the unnamed group's too
    with pytest.raises(RecaptionError, match="where= selects"):
        groups.from_specs([f"x={tmp_path},backend=vlm,where=clip_raw>0.2"])


# -- the order, cycles, unknown names ------------------------------------------------------------
def test_order_comes_from_the_references_and_a_cycle_is_named(tmp_path):
    from recaption import annotators

    a = _template(tmp_path, "a", "Refine {caption:b}")
    b = _template(tmp_path, "b", "Refine {caption:short} for {alt_text}")
    cfgs = groups.from_specs([f"a={tmp_path},backend=text,template={a}", f"b={tmp_path},backend=text,template={b}"])
    named = groups.expand(cfgs, {"clip": object()})
    order = annotators.run_order({"captions.short": None, "clip.short": None, **named})
    assert order.index("clip.short") < order.index("captions.b") < order.index("clip.b") < order.index("captions.a")
    c = _template(tmp_path, "c", "Refine {caption:a}")
    a2 = _template(tmp_path, "a2", "Refine {caption:c}")
    with pytest.raises(RecaptionError, match="cycle: (a -> c -> a|c -> a -> c)"):
        groups.expand(groups.from_specs([f"a={tmp_path},backend=text,template={a2}",
                                         f"c={tmp_path},backend=text,template={c}"]), {})
    selfish = _template(tmp_path, "s", "Refine {caption:s}")
    with pytest.raises(RecaptionError, match="cycle: s -> s"):
        groups.from_specs([f"s={tmp_path},backend=text,template={selfish}"])


def test_an_unknown_group_or_rule_column_names_the_nearest(tmp_path):
    t = _template(tmp_path, "t", "Refine {caption:shrot}")
    cfgs = groups.expand(groups.from_specs([f"f={tmp_path},backend=text,template={t}"]), {})
    wanted = {"captions.short": {"model": "m"}, "captions.f": {"reads": {}}}
    with pytest.raises(RecaptionError, match="shrot.*short"):
        groups.resolve_reads(wanted, {})
    assert cfgs
    from recaption import annotators

    with pytest.raises(RecaptionError, match="clip_rwa.*clip_raw"):
        annotators.configure({"captioner": "none", "group": [f"g={tmp_path},backend=text,where=clip_rwa>0.2"]})
    cfg = annotators.configure({"captioner": "none", "group": [f"g={tmp_path},backend=text,where=clip_raw>0.2 & "
                                                                 "punsafe<0.1 | sieve_mean__g2>0"]})["captions.g"]
    assert cfg.reads() == ["captions", "clip", "punsafe", "sieve.g2"]
    with pytest.raises(RecaptionError, match="not COLUMN OP NUMBER"):
        groups.from_specs([f"g={tmp_path},backend=text,where=clip_raw=>0.2"])



def test_a_read_no_pass_or_folder_has_names_the_group_missing_not_the_one_reading(tmp_path):
    # README's `--captioner none --group fused=...` without a template: refine reads the unnamed group
    cfgs = groups.expand(groups.from_specs([f"fused={tmp_path},backend=text,where=sieve__short<2"]), {})
    wanted = {"captions.short": {"model": "m"}, **{k: {} for k in cfgs}}
    with pytest.raises(RecaptionError) as e:
        groups.resolve_reads(wanted, {})
    assert "unknown caption group 'fused'" not in str(e.value)
    assert "unnamed group" in str(e.value) and "--captioner" in str(e.value) and "short" in str(e.value)
    t = _template(tmp_path, "t", "{caption:short}")
    cfgs = groups.expand(groups.from_specs([f"f={tmp_path},backend=text,template={t},where=sieve__shrt<0.25"]), {})
    wanted = {"captions.short": {"model": "m"}, "clip.short": {}, "sieve.short": {}, **{k: {} for k in cfgs}}
    with pytest.raises(RecaptionError, match=r"unknown caption group 'shrt'; did you mean short\?.*sieve scores"):
        groups.resolve_reads(wanted, {})

# -- the rule ----------------------------------------------------------------------------------
def test_the_rule_selects_exactly_its_rows_and_names_the_first_clause_that_held():
    rule = groups.Rule.parse("sieve__short<0.3 & clip_raw>=0.25 | sieve__short<0.1")
    nan = float("nan")
    rows = [{"sieve__short": s, "clip_raw": c, "captions__short": ["x"]} for s, c in
            [(0.2, 0.3), (0.05, 0.1), (0.05, 0.3), (0.5, 0.9), (None, 0.3), (0.2, nan), (0.3, 0.25)]]
    rows.append({"sieve__short": 0.05, "clip_raw": 0.3, "captions__short": []})  # nothing to fuse with
    sent, why = groups.select(rows, ["short"], rule)
    assert sent == [0, 1, 2]
    assert why == ["clause 1: sieve__short<0.3 & clip_raw>=0.25", "clause 2: sieve__short<0.1",
                   "clause 1: sieve__short<0.3 & clip_raw>=0.25", "not sent: no clause holds",
                   "not sent: sieve__short missing", "not sent: clip_raw missing",
                   "not sent: no clause holds",  # 0.3 < 0.3 is false: a clause's limit is not kept
                   "not sent: no caption in group short"]
    assert groups.select(rows, ["short"], None) == ([0, 1, 2, 3, 4, 5, 6], ["all"] * 7 + [why[-1]])


def test_best_candidate_is_the_highest_clip_first_on_ties_else_the_first():
    r = {"captions__g": ["a", "b", "c"], "clip_captions__g": [0.1, 0.3, 0.3]}
    assert groups.best(r, "g") == "b"
    assert groups.best({"captions__g": ["a", "b"], "clip_captions__g": [0.5]}, "g") == "a"
    assert groups.best({"captions": ["u"], "clip_captions": [math.nan]}, None) == "u"
    assert groups.best({"captions__g": []}, "g") is None


# -- end to end --------------------------------------------------------------------------------
@pytest.fixture
def fake_vllm(monkeypatch):
    """tests/fakes/vllm (vLLM's documented offline API, no model) importable as `vllm`."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    import vllm

    vllm.LLM.instances.clear()
    yield vllm
    sys.modules.pop("vllm", None)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from recaption.demo.tiny_models import build_causal_lm

    return str(build_causal_lm(tmp_path_factory.mktemp("lm") / "lm"))


def _short(shard_dir, ann, m, minilm, *extra, captioner="none"):
    return cli("annotate", shard_dir, "-o", ann, "--captioner", captioner,
               "--group", f"short={m['blip']},max_new_tokens=4", "--clip-model", m["clip"],
               "--sieve-model", minilm, "-q", *extra)


@pytest.mark.slow
def test_fuse_where_it_pays_sends_exactly_the_chosen_rows(shard_dir, tiny_models, minilm, lm, tmp_path, fake_vllm,
                                                            capsys):
    ann = tmp_path / "ann"
    assert _short(shard_dir, ann, tiny_models, minilm) == 0
    rows = _ann_rows(ann)
    ok = [r for r in rows if r["status"] == "ok" and r["sieve__short"] is not None]
    # choose the rows: the three lowest SIEVE scores (clause 1), the highest clip_raw among the rest
    # (clause 2); limits between distinct values, so ties choose together
    s_vals = sorted({r["sieve__short"] for r in ok})
    cut = (s_vals[2] + s_vals[3]) / 2
    low = [r for r in ok if r["sieve__short"] < cut]
    left = [r for r in rows if r not in low and r["status"] == "ok" and r["clip_raw"] is not None]
    c_vals = sorted({r["clip_raw"] for r in left}, reverse=True)
    floor = (c_vals[0] + c_vals[1]) / 2
    high = [r for r in left if r["clip_raw"] >= floor]
    where = f"sieve__short<{cut!r} | clip_raw>={floor!r}"
    capsys.readouterr()
    t = _template(tmp_path, "fuse", "Merge: {alt_text} || {caption:short}")
    code = cli("annotate", shard_dir, "-o", ann, "--captioner", "none",
               "--group", f"short={tiny_models['blip']},max_new_tokens=4",
               "--group", f"fused=tiny-llama,backend=vllm-text,template={t},max_new_tokens=8,where={where}",
               "--clip-model", tiny_models["clip"], "--sieve-model", minilm, "--json")
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    chosen = {(r["shard"], r["key"]) for r in low + high}
    after = _ann_rows(ann)
    fused = {(r["shard"], r["key"]) for r in after if r["captions__fused"]}
    assert fused == chosen, [(r["key"], r["fusion__fused"], r["sieve__short"], r["clip_raw"], where) for r in after
                             if (r["shard"], r["key"]) in chosen ^ fused]
    # exactly those rows went to the model: one request each, its prompt holding the row's own texts
    prompts = [q["prompt"] for llm in fake_vllm.LLM.instances for q in llm.requests]
    assert len(prompts) == len(chosen) and all(not q["images"] for llm in fake_vllm.LLM.instances for q in llm.requests)
    by_key = {(r["shard"], r["key"]): r for r in after}
    want = sorted(f"Merge: {by_key[k]['raw_caption'] or ''} || {groups.best(by_key[k], 'short')}" for k in chosen)
    assert sorted(prompts) == want
    for r in after:
        if (r["shard"], r["key"]) in chosen:
            assert r["fusion__fused"].startswith("clause ") and r["captioner__fused"] == "tiny-llama"
            assert r["captions__fused"][0].startswith("text ")  # the fake's answer to a text-only prompt
        elif r["status"] == "ok":
            assert r["captions__fused"] == [] and r["fusion__fused"].startswith("not sent: ")
            assert r["captions__short"]  # the rows it did not fuse keep the captions they had
    f = summary["fusion"]["fused"]
    assert f["sent"] == len(chosen)
    clauses = {k: v for k, v in f["by"].items() if k.startswith("clause ")}
    assert sum(f["by"].values()) == len(after)
    assert clauses == {f"clause 1: sieve__short<{cut:g}": len(low), f"clause 2: clip_raw>={floor:g}": len(high)}
    # a mix keeps every group's captions under its keys: the fused key only where a row was fused
    out = tmp_path / "mixed"
    assert cli("mix", shard_dir, "-a", ann, "-o", out, "--strategy", "raw", "--synthetic-group", "fused",
               "--caption-keys", "all", "-q") == 0
    from tests.helpers import read_output

    rows_by_key = {k[1]: r for k, r in by_key.items()}  # keys name their shard (img2dataset's)
    written = read_output(out)
    assert any("recaption_group_fused" in s.meta for s in written.values())
    for s in written.values():
        r = rows_by_key[s.key]
        assert ("recaption_group_fused" in s.meta) == bool(r["captions__fused"])
        assert s.meta["recaption_group_short"] == groups.best(r, "short")
    # fused where present, else short: every sample has a synthetic caption, each from its own group
    both = tmp_path / "fused-else-short"
    assert cli("mix", shard_dir, "-a", ann, "-o", both, "--strategy", "synthetic", "--synthetic-group", "fused,short",
               "-q") == 0
    written = read_output(both)
    assert {k for k, r in rows_by_key.items() if r["status"] == "ok" and r["captions__short"]} == set(written)
    for s in written.values():
        r = rows_by_key[s.key]
        g = "fused" if r["captions__fused"] else "short"
        assert s.members["txt"].decode() == groups.best(r, g)
        assert s.meta["recaption"]["captioner"] == r[f"captioner__{g}"]
    assert {g: n["synthetic"] for g, n in json.loads((both / "_summary.json").read_text())["counts"][
        "synthetic_groups"].items()} == {"fused": len(chosen), "short": len(written) - len(chosen)}
    # the report counts the same, clause by clause
    from recaption.report.data import load
    from recaption.report.html import pages

    d = load(str(ann))
    assert d.groups["fused"]["fusion"] == f["by"]
    page = pages(d)["index.html"].decode()
    assert "rows sent to the text model" in page and f"<td>clause 1: sieve__short&lt;{cut:g}</td>" in page
    # the upstream group was read from the folder; its settings are recorded by digest
    rec = json.loads((ann / "_recaption.json").read_text())["groups"]
    assert set(rec["captions.fused"]["reads"]) == {"captions.short", "clip.short", "sieve.short", "clip"}
    assert rec["captions.fused"]["reads"]["captions.short"] == groups.digest(rec["captions.short"])


@pytest.mark.slow
def test_one_run_writes_a_chained_and_a_fused_group_beside_what_they_read(shard_dir, tiny_models, minilm, lm, tmp_path):
    ann = tmp_path / "ann"
    refine = _template(tmp_path, "refine", "system: Rewrite.\nAlt: {alt_text}\\nCaption: {caption:short}")
    fuse = _template(tmp_path, "fuse", "Sentence 1: {alt_text}\\nSentence 2: {caption:refined}\\nNew Sentence:")
    code = _short(shard_dir, ann, tiny_models, minilm,
                  "--group", f"refined={lm},backend=text,template={refine},max_new_tokens=5",
                  "--group", f"fused={lm},backend=text,template={fuse},max_new_tokens=5,where=sieve__refined<2")
    assert code == 0
    rows = [r for r in _ann_rows(ann) if r["status"] == "ok"]
    assert rows and all(r["captions__short"] and r["captions__refined"] for r in rows)
    assert all(len(r["clip_captions__refined"]) == 1 for r in rows)  # scored with the pass's image embeddings
    assert all(r["fusion__refined"] == "all" for r in rows)
    for r in rows:  # SIEVE reads the alt-text: a row without one has no score, and the rule sends it not
        if r["sieve__refined"] is None:
            assert not r["raw_caption"] and r["captions__fused"] == []
            assert r["fusion__fused"] == "not sent: sieve__refined missing"
        else:
            assert r["captions__fused"] and r["fusion__fused"] == "clause 1: sieve__refined<2"
    assert any(r["captions__fused"] for r in rows) and any(not r["captions__fused"] for r in rows)
    rec = json.loads((ann / "_recaption.json").read_text())["groups"]
    assert "captions.refined" in rec["captions.fused"]["reads"]
    # the same command resumes: nothing redone
    before = {p.name: p.stat().st_mtime_ns for p in ann.glob("*.parquet")}
    assert _short(shard_dir, ann, tiny_models, minilm,
                  "--group", f"refined={lm},backend=text,template={refine},max_new_tokens=5",
                  "--group", f"fused={lm},backend=text,template={fuse},max_new_tokens=5,where=sieve__refined<2") == 0
    assert {p.name: p.stat().st_mtime_ns for p in ann.glob("*.parquet")} == before
    # new unnamed captions make the rows anew: a chained group added then still reads the groups kept
    again = _template(tmp_path, "again", "Again: {caption:short}")
    assert _short(shard_dir, ann, tiny_models, minilm, "--max-new-tokens", "3",
                  "--group", f"refined={lm},backend=text,template={refine},max_new_tokens=5",
                  "--group", f"fused={lm},backend=text,template={fuse},max_new_tokens=5,where=sieve__refined<2",
                  "--group", f"again={lm},backend=text,template={again},max_new_tokens=3",
                  captioner=tiny_models["blip"]) == 0
    rows = [r for r in _ann_rows(ann) if r["status"] == "ok"]
    assert all(r["captions"] and r["fusion__again"] == "all" and r["captions__again"] for r in rows)
    assert all(r["captions__fused"] or r["fusion__fused"].startswith("not sent") for r in rows)  # kept as it was
    # a group it reads changes: the chained groups are stale, dropped from the record and the files
    assert cli("annotate", shard_dir, "-o", ann, "--captioner", "none", "--group",
               f"short={tiny_models['blip']},max_new_tokens=3", "--clip-model", tiny_models["clip"],
               "--sieve-model", minilm, "--overwrite", "-q") == 0
    rec = json.loads((ann / "_recaption.json").read_text())["groups"]
    assert "captions.refined" not in rec and "captions.fused" not in rec and "captions.again" not in rec
    cols = pq.read_schema(sorted(ann.glob("*.parquet"))[0]).names
    assert "captions__fused" not in cols and "fusion__refined" not in cols


@pytest.mark.slow
def test_a_chained_groups_length_counts_and_scores_the_captions_it_wrote(shard_dir, tiny_models, lm, tmp_path):
    """The text model writes its captions at the end of the shard: its length group measures them
    then (it had recorded no token count for a caption it holds)."""
    import numpy as np
    import open_clip

    from recaption.io import embeddings
    from recaption.scoring import sentences
    from recaption.scoring.clip import ClipConfig, ClipScorer

    ann = tmp_path / "ann"
    fuse = _template(tmp_path, "fuse", "Alt: {alt_text}\\nCaption: {caption:short}\\nNew:")
    assert cli("annotate", shard_dir, "-o", ann, "--captioner", "none", "--group",
               f"short={tiny_models['blip']},max_new_tokens=4", "--clip-model", tiny_models["clip"], "--no-sieve",
               "--save-embeddings", "-q", "--group", f"fused={lm},backend=text,template={fuse},max_new_tokens=120") == 0
    bpe = open_clip.get_tokenizer(tiny_models["clip"])
    scorer = ClipScorer(ClipConfig(model=tiny_models["clip"]))
    long_seen = 0
    for p in sorted(ann.glob("*.parquet")):
        vectors, _ = embeddings.read(str(ann), p.stem)
        for r, v in zip(_rows(p), vectors.astype(np.float32)):
            if r["status"] != "ok":
                continue
            caps = r["captions__fused"]
            assert caps and r["clip_captions_tokens__fused"] == [len(bpe.encode(c)) + 2 for c in caps], r["key"]
            for c, n, lo in zip(caps, r["clip_captions_tokens__fused"], r["clip_captions_sent_min__fused"]):
                if n <= r["clip_context"]:
                    assert lo is None
                    continue
                long_seen += 1
                s = scorer.encode_texts(sentences.split([c]).to_pylist()[0]).numpy() @ v
                assert lo == pytest.approx(s.min(), abs=3e-3)
    assert long_seen
