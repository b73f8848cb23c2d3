"""The transformers VLM backend on tiny random-weight models of each family in
`tiny_models.VLM_BUILDERS` (model, tokenizer, processor and chat template built here, saved, and
loaded back through from_pretrained on the folder, as users load theirs)."""
import json
import re

import pyarrow.parquet as pq
import pytest
from PIL import Image

from recaption.captioners import build_captioner, list_presets, load_preset
from recaption.captioners.base import BACKENDS, VLM_MODEL_TYPES, guess_backend
from recaption.captioners.chat import DEFAULT_TEMPLATE, load_template, parse_template
from recaption.captioners.vlm import PROCESSOR_NEEDS
from recaption.demo.tiny_models import VLM_BUILDERS
from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.resources import prompts_dir
from tests.helpers import cli

IMAGES = [Image.new("RGB", (70, 50), "red"), Image.new("RGB", (40, 90), "blue"), Image.new("RGB", (64, 64), "green")]
# the first two families stay in `make test-fast`; every other one loads its model in the slow tier
FAMILIES = [pytest.param(f, id=f, marks=() if i < 2 else pytest.mark.slow) for i, f in enumerate(VLM_BUILDERS)]


class _Built(dict):
    """Each family's folder, built when a test first asks for it (a fast run builds only its own)."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, family):
        for module in PROCESSOR_NEEDS.get(family, ()):
            pytest.importorskip(module, reason=f"the {family} processor needs {module}")
        self[family] = str(VLM_BUILDERS[family](self.root / family))
        return self[family]


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    return _Built(tmp_path_factory.mktemp("tiny-vlms"))


@pytest.fixture(scope="module")
def captioners(vlms):
    """One greedy float32 captioner per family (exact maths: batched equals one by one)."""
    class Captioners(dict):
        def __missing__(self, f):
            self[f] = build_captioner(load_preset(vlms[f], max_new_tokens=6, dtype="float32", template="alt-text"))
            return self[f]

    return Captioners()


def test_every_family_the_backend_serves_is_built():
    """Each model_type the vlm backend takes a folder of (Qwen2.5-VL and LLaVA-NeXT among them:
    presets name them) has a tiny model the tests caption with."""
    assert set(VLM_MODEL_TYPES) <= set(VLM_BUILDERS)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_folder_is_its_family_and_served_by_the_vlm_backend(vlms, family):
    path = vlms[family]
    assert json.loads(open(f"{path}/config.json").read())["model_type"] == family
    assert guess_backend(path) == "vlm"


def test_the_vlm_presets_name_ids_the_backend_serves():
    vlm = {n: p for n, p in list_presets().items() if p["backend"] == "vlm"}
    assert len(vlm) >= 3
    for name, p in vlm.items():
        assert guess_backend(p["model"]) == "vlm", name
        load_template(p.get("template") or DEFAULT_TEMPLATE)
    assert guess_backend("Salesforce/blip-image-captioning-base") == "blip"  # served by one backend only


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_are_the_processors_rendering_of_the_template(captioners, family):
    cap = captioners[family]
    (p,) = cap.prompts(["Eiffel Tower at night"])
    assert '"Eiffel Tower at night"' in p and "{alt_text}" not in p
    if not cap.chat:  # Florence-2: no chat template, the text alone (its processor adds the image's tokens)
        assert p == cap.template.after.replace("{alt_text}", "Eiffel Tower at night")
        return
    assert p == cap.processor.apply_chat_template(
        [{"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": cap.template.after.replace(
             "{alt_text}", "Eiffel Tower at night")}]}], tokenize=False, add_generation_prompt=True)
    assert cap.processor.image_token in p  # the processor's own image marker, expanded when tokenized


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_captions_as_each_image_alone_and_prepared_ahead_as_not(captioners, family):
    """Left padding, the batch's image tokens and the input thread's image side all line up."""
    cap = captioners[family]
    raws = ["a red square", None, "green " * 30]
    batch = cap.caption(IMAGES, raws, "s/k")
    assert len(batch) == 3 and all(len(c) == 1 and c[0] for c in batch)
    assert [cap.caption([im], [r], "s/k")[0] for im, r in zip(IMAGES, raws)] == batch
    assert cap.caption(IMAGES, raws, "s/k", prepared=cap.prepare(IMAGES)) == batch


@pytest.mark.parametrize("family", FAMILIES)
def test_the_alt_text_reaches_the_model_with_the_images_tokens(captioners, family):
    """What generate is given: each sample's own alt-text, after as many image tokens as its image makes."""
    cap = captioners[family]
    raws = ["a red dog on the beach", "two people near a blue car"]
    inputs = cap._inputs(cap.prepare(IMAGES[:2]), raws)
    texts = cap.processor.tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=False)
    assert [raws[0] in texts[0], raws[1] in texts[1], raws[1] in texts[0]] == [True, True, False]
    image_id = cap.processor.tokenizer.convert_tokens_to_ids(cap.processor.image_token)
    per_image = (inputs["input_ids"] == image_id).sum(1)
    assert (per_image > 1).all()  # the placeholder expanded for the image


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_gives_n_candidates_seeded_and_counts_tokens(vlms, family):
    def make(seed):
        return build_captioner(load_preset(vlms[family], strategy="sample", num_captions=3, top_p=0.9,
                                           max_new_tokens=5, seed=seed))

    cap = make(7)
    a = cap.caption(IMAGES, [None] * 3, "s/k")
    assert [len(c) for c in a] == [3, 3, 3]
    assert a == cap.caption(IMAGES, [None] * 3, "s/k") and a != make(8).caption(IMAGES, [None] * 3, "s/k")
    assert cap.captions_generated == 18 and 0 < cap.tokens_generated <= 18 * 5


def _jpeg(w, h):
    import io

    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_jpeg_drafted_at_the_backends_size_is_processed_as_the_full_one(captioners, family):
    """JPEGs decode in draft mode at `image_size`: the processor must still see an image as large
    as it uses, so the same grid and image tokens as from the full decode. LLaVA-NeXT's was its
    tile's side: a 256 px image drafted to 32 px went into a 1x2 grid instead of 2x2."""
    from recaption.io.images import decode

    cap, shrunk = captioners[family], 0
    for w, h in [(256, 256), (512, 192), (160, 480)]:
        data = _jpeg(w, h)
        drafted, full = decode(data, draft_size=cap.image_size), decode(data)
        shrunk += drafted.size != full.size
        ids = [cap._inputs(cap.prepare([im]), [None])["input_ids"] for im in (drafted, full)]
        assert ids[0].tolist() == ids[1].tolist(), (w, h, drafted.size)
    assert shrunk  # draft mode did decode some of them smaller


def test_llava_next_decodes_at_its_largest_grids_shorter_side(captioners):
    cap = captioners["llava_next"]
    ip = cap.processor.image_processor
    assert cap.image_size == max(min(p) for p in ip.image_grid_pinpoints) > ip.size["shortest_edge"]


def test_tokens_stop_counting_at_the_end_of_a_caption(captioners):
    import torch

    cap = captioners["llava"]
    eos, pad = cap.model.generation_config.eos_token_id, cap.processor.tokenizer.pad_token_id
    before = cap.tokens_generated
    cap._count(torch.tensor([[5, 6, eos, pad, pad], [5, 6, 7, 8, 9], [eos, pad, pad, pad, pad]]))
    assert cap.tokens_generated - before == 3 + 5 + 1


@pytest.mark.parametrize("family", FAMILIES)
def test_caption_the_test_shards_through_the_cli(vlms, family, shard_dir, tmp_path):
    """`recaption caption -c FOLDER`: the backend guessed from the folder, N candidates a sample."""
    path, out = vlms[family], tmp_path / family
    assert cli("caption", shard_dir, "-o", out, "-c", path, "--template", "alt-text", "--decoding", "sample",
               "--num-captions", 2, "--max-new-tokens", 4, "--batch-size", 4, "-q") == 0
    rows = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["captioner"] == path and len(r["captions"]) == 2 for r in ok)
    assert all(r["status"] == "error" and r["error"] for r in rows if r["status"] != "ok")
    settings = json.loads((out / "_recaption.json").read_text())["groups"]["captions"]
    assert (settings["backend"], settings["template"]) == ("vlm", "alt-text")
    assert settings["template_sha256"] == load_template("alt-text").digest() and settings["engine_args"] == {}



def test_the_default_template_is_the_one_rendered_and_recorded(vlms):
    """With no --template a VLM renders `chat.DEFAULT_TEMPLATE`, and the captions group of every
    chat backend that reads images records that template's digest."""
    from recaption.annotators.base import RunContext
    from recaption.annotators.captions import Captions
    from recaption.captioners.base import CaptionerConfig

    cap = build_captioner(load_preset(vlms["qwen2_vl"], max_new_tokens=2, dtype="float32"))
    assert cap.template == load_template(DEFAULT_TEMPLATE)
    chat = [n for n in BACKENDS.names() if BACKENDS.get(n).chat and BACKENDS.get(n).images]
    assert chat
    for backend in chat:
        s = Captions.settings(CaptionerConfig(backend=backend, model="m"), RunContext())
        assert s["template"] is None and s["template_sha256"] == cap.template.digest(), backend


def test_templates_are_chat_messages_and_model_markup_is_refused(tmp_path):
    t = parse_template("# a comment\nsystem: Be brief.\nBefore <image> after {alt_text}.")
    assert (t.system, t.before, t.after) == ("Be brief.", "Before", "after {alt_text}.")
    m = t.messages("ALT", {"type": "image"})
    assert m == [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                 {"role": "user", "content": [{"type": "text", "text": "Before"}, {"type": "image"},
                                              {"type": "text", "text": "after ALT."}]}]
    assert parse_template("Describe it.").messages(None, {"type": "image"})[0]["content"][0] == {"type": "image"}
    assert len(t.texts("x" * 5000)[1]) < 1100
    for bad, says in [("<|im_start|>user\n<image>Describe.<|im_end|>", "chat markup '<|im_start|>'"),
                      ("USER: <image>\nDescribe. ASSISTANT:", "chat markup 'USER:'"),
                      ("<image> and <image>", "2 <image> markers"), ("# only\n<image>", "no instruction")]:
        with pytest.raises(RecaptionError, match="prompt template mine.txt: .*" + re.escape(says)):
            parse_template(bad, "mine.txt")
    names = [p.name[:-4] for p in prompts_dir().joinpath("templates").iterdir() if p.name.endswith(".txt")]
    assert "alt-text" in names
    for name in names:
        load_template(name)  # every bundled template parses


def test_template_options_are_checked_before_any_work(vlms, tmp_path):
    (tmp_path / "raw.txt").write_text("<|im_start|>user\n<|image_pad|>hi<|im_end|>")
    with pytest.raises(RecaptionError, match="chat markup"):
        load_preset(vlms["llava"], template=str(tmp_path / "raw.txt"))
    with pytest.raises(RecaptionError, match="unknown template 'alt-txt'.*alt-text"):
        load_preset(vlms["llava"], template="alt-txt")
    chat = [n for n in BACKENDS.names() if BACKENDS.get(n).chat]
    assert {"vlm", "vllm"} <= set(chat)
    with pytest.raises(RecaptionError, match="--template is a VLM's chat prompt.*the blip backend takes --prompt"):
        load_preset("blip-base", template="caption")
    with pytest.raises(RecaptionError, match="new tokens"):
        build_captioner(load_preset(vlms["llava"], max_length=20))


def test_engine_args_reach_the_processor_and_others_are_refused(vlms):
    small = build_captioner(load_preset(vlms["qwen2_vl"], engine_args={
        "processor": {"size": {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}}}))
    big = build_captioner(load_preset(vlms["qwen2_vl"]))
    assert small.image_size == 56 and big.image_size == 112  # JPEGs decode at the processor's largest input
    img = [Image.new("RGB", (200, 200))]
    grid = [c.prepare(img)["processed"]["image_grid_thw"].prod() for c in (small, big)]
    assert grid[0] < grid[1]
    with pytest.raises(RecaptionError, match="engine_args 'max_model_len': the vlm backend takes"):
        build_captioner(load_preset(vlms["qwen2_vl"], engine_args={"max_model_len": 4096}))


def test_a_source_checkout_reads_its_own_prompts():
    """Imported from a checkout, recaption reads that checkout's templates, not those an editable
    install of another checkout maps `recaption.prompts` to."""
    from pathlib import Path

    import recaption

    assert Path(str(prompts_dir())) == Path(recaption.__file__).resolve().parent.parent / "prompts"


# -- checked before any shard is read ----------------------------------------------------------
def _yaml(path, **values):
    import yaml

    path.write_text(yaml.safe_dump(values))
    return path


def test_settings_a_backend_cannot_run_are_refused_before_any_shard_is_read(vlms, tiny_models, shard_dir, tmp_path,
                                                                             capsys):
    """Each is one line and exit 2 with no folder made; they once failed in every worker, shard by
    shard (a total max_length for a VLM, a vllm preset's engine_args under --backend vlm)."""
    qwen = vlms["qwen2_vl"]
    cases = [
        (["-c", _yaml(tmp_path / "a.yaml", backend="vlm", model=qwen, decoding={"max_length": 20})],
         "the vlm backend counts lengths in new tokens"),
        (["-c", "qwen2.5-vl-3b", "--backend", "vlm"], "engine_args 'max_model_len': the vlm backend takes"),
        (["-c", _yaml(tmp_path / "b.yaml", backend="vllm", model="Qwen/Qwen2.5-VL-3B-Instruct",
                      engine_args={"processor": {"size": {"longest_edge": 3136}}})],
         "engine_args 'processor' is the vlm backend's"),
        (["-c", _yaml(tmp_path / "c.yaml", backend="vllm", model="Qwen/Qwen2.5-VL-3B-Instruct",
                      engine_args={"dtype": "half"})], "engine_args 'dtype': set it with --dtype"),
        (["-c", "qwen2.5-vl-3b", "--decoding", "beam"], "the vllm backend does not do beam search"),
        (["-c", _yaml(tmp_path / "d.yaml", backend="blip", model=tiny_models["blip"], engine_args={"x": 1})],
         "engine_args 'x': the blip backend takes no engine_args"),
        (["-c", _yaml(tmp_path / "e.yaml", backend="vlm", model=qwen, engine_args={"processor": "big"})],
         "engine_args 'processor': the vlm backend takes a mapping"),
    ]
    for i, (args, says) in enumerate(cases):
        out = tmp_path / f"out{i}"
        capsys.readouterr()
        assert cli("caption", shard_dir, "-o", out, *args, "-q") == 2, says
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_a_config_object_given_to_the_api_is_checked_as_a_preset_is(vlms, shard_dir, tmp_path):
    import recaption as rc
    from recaption.captioners.base import CaptionerConfig, Decoding

    cfg = CaptionerConfig(backend="vlm", model=vlms["qwen2_vl"], decoding=Decoding(max_length=20))
    with pytest.raises(RecaptionError, match="counts lengths in new tokens"):
        rc.annotate(shard_dir, str(tmp_path / "out"), captions=cfg)
    assert not (tmp_path / "out").exists()


def test_a_missing_processor_package_is_named_before_any_shard(tmp_path, monkeypatch):
    """SmolVLM's processor imports num2words; a folder of that family without it is one line up front."""
    import sys

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "smolvlm"}))
    monkeypatch.setitem(sys.modules, "num2words", None)  # importlib finds no such module
    with pytest.raises(RecaptionError, match=r"the smolvlm processor needs num2words.*pip install num2words"):
        load_preset(str(tmp_path))


# -- the template's text and the engine_args are recorded ----------------------------------------
def _caption(shard, out, model, *extra):
    return cli("caption", shard, "-o", out, "-c", model, "--max-new-tokens", 2, "--batch-size", 8, "-q", *extra)


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*.parquet"))}


@pytest.mark.slow
def test_an_edited_template_or_other_engine_args_are_not_resumed(vlms, shard_dir, tmp_path, capsys):
    """The group records a digest of the template's text, not only its name, and the engine_args:
    editing the file (not its comments) or the engine_args is refused in one line, as any other
    settings change is, and --overwrite redoes it."""
    shard, out, qwen = shard_dir / "00000.tar", tmp_path / "ann", vlms["qwen2_vl"]
    template = tmp_path / "mine.txt"
    template.write_text("# mine\n<image>\nDescribe the image.")
    assert _caption(shard, out, qwen, "--template", template) == 0
    before = _mtimes(out)
    template.write_text("# mine, reworded comment\n<image>\nDescribe the image.")
    assert _caption(shard, out, qwen, "--template", template) == 0 and _mtimes(out) == before  # resumed
    template.write_text("# mine\n<image>\nDescribe the image in detail.")
    capsys.readouterr()
    assert _caption(shard, out, qwen, "--template", template) == 2
    err = capsys.readouterr().err.strip()
    assert "holds captions written with other settings (template_sha256" in err and len(err.splitlines()) == 1
    assert _caption(shard, out, qwen, "--template", template, "--overwrite") == 0 and _mtimes(out) != before
    recorded = ann.metadata(pq.read_schema(next(out.glob("*.parquet"))))["groups"]["captions"]
    assert recorded["template_sha256"] == load_template(str(template)).digest()

    plain = _yaml(tmp_path / "plain.yaml", backend="vlm", model=qwen)
    small = _yaml(tmp_path / "small.yaml", backend="vlm", model=qwen,
                  engine_args={"processor": {"size": {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}}})
    out2 = tmp_path / "ann2"
    assert _caption(shard, out2, plain) == 0
    capsys.readouterr()
    assert _caption(shard, out2, small) == 2
    assert "engine_args.processor" in capsys.readouterr().err


@pytest.mark.slow
def test_a_folder_written_before_the_digest_resumes_saying_so(vlms, shard_dir, tmp_path, caplog):
    """A folder whose captions group records no template digest or engine_args (an older
    recaption's) resumes with a warning that they are unknown, its record naming them as what its
    older files lack; --overwrite redoes it and records them."""
    import logging

    shard, out, qwen = shard_dir / "00000.tar", tmp_path / "ann", vlms["qwen2_vl"]
    assert _caption(shard, out, qwen, "--template", "alt-text") == 0
    record_path = out / "_recaption.json"
    record = json.loads(record_path.read_text())
    for key in ("template_sha256", "engine_args"):
        del record["groups"]["captions"][key]
    record_path.write_text(json.dumps(record))
    for f in out.glob("*.parquet"):  # as an older recaption wrote the file
        t = pq.read_table(f)
        meta = ann.metadata(t)
        for key in ("template_sha256", "engine_args"):
            del meta["groups"]["captions"][key]
        pq.write_table(t.replace_schema_metadata({ann.META_KEY: json.dumps(meta).encode()}), f)
    before = _mtimes(out)
    with caplog.at_level(logging.WARNING, logger="recaption"):
        assert _caption(shard, out, qwen, "--template", "alt-text") == 0
    said = [r.getMessage() for r in caplog.records if "template_sha256" in r.getMessage()]
    assert said and "recorded without template_sha256 and engine_args" in said[0] and "unknown" in said[0]
    assert _mtimes(out) == before  # resumed, nothing redone
    assert json.loads(record_path.read_text())["unrecorded"] == {"captions": ["template_sha256", "engine_args"]}
    assert _caption(shard, out, qwen, "--template", "alt-text", "--overwrite") == 0
    for f in out.glob("*.parquet"):
        assert "template_sha256" in ann.metadata(pq.read_schema(f))["groups"]["captions"]
    assert json.loads(record_path.read_text())["groups"]["captions"]["engine_args"] == {}
    assert "unrecorded" not in json.loads(record_path.read_text())  # every file redone


def test_microsofts_own_florence2_repositories_are_refused_naming_the_converted_ones():
    with pytest.raises(RecaptionError, match="ship their own model code.*florence-community/Florence-2-base"):
        load_preset("microsoft/Florence-2-large")
    assert load_preset("florence-community/Florence-2-base").backend == "vlm"
