"""Issue 17.1: candidate re-ranking as a chain of CLIP models, on tiny models, checked by hand."""
import pytest

from recaption.errors import RecaptionError
from recaption.io import annotations as ann
from recaption.io.images import decode
from recaption.io.shards import iter_shard
from recaption.scoring.clip import ClipConfig, ClipScorer
from recaption.scoring.rerank import RerankStep, keep_top, run_chain, validate_chain
from tests.helpers import cli


def test_keep_top_prefers_the_first_on_ties_and_skips_unscored():
    assert keep_top([0.2, 0.5, 0.5, None, 0.1], [0, 1, 2, 3, 4], 2) == [1, 2]
    assert keep_top([0.9, 0.1, 0.3], [1, 2], 1) == [2]  # only what is in play counts
    assert keep_top([None, 0.1], [0, 1], 1) == [1]


def test_run_chain_passes_candidates_on_step_by_step():
    table = {0: [[0.1, 0.9, 0.8, 0.7]], 1: [[0.2, 0.9, 0.3, 0.1]]}  # step -> per sample -> per candidate

    def score_step(i, in_play):
        return [[table[i][s][j] for j in cands] for s, cands in enumerate(in_play)]

    scores, picks = run_chain([2, 1], [4], score_step)
    assert scores[0][0] == [0.1, 0.9, 0.8, 0.7]
    assert scores[0][1] == [None, 0.9, 0.3, None]  # step 2 saw the top 2 of step 1 only
    assert picks == [1]
    assert run_chain([1], [0], lambda i, in_play: [[]]) == ([[[]]], [None])  # no candidates: no pick


@pytest.mark.parametrize("steps", [[("a", 2), ("b", 3)], [("a", 0)], [("a", 2)]])
def test_invalid_chains_are_refused(steps):
    with pytest.raises(RecaptionError):
        validate_chain([RerankStep(m, None, k) for m, k in steps])


def test_parse():
    assert RerankStep.parse("ViT-L-14@openai=5") == RerankStep("ViT-L-14", "openai", 5)
    assert RerankStep.parse("RN50x64=1") == RerankStep("RN50x64", "openai", 1)
    assert RerankStep.parse("local-dir:/m/clip=1") == RerankStep("local-dir:/m/clip", None, 1)
    with pytest.raises(RecaptionError):
        RerankStep.parse("ViT-L-14")


@pytest.fixture(scope="module")
def second_clip(tmp_path_factory):
    from recaption.demo.tiny_models import build_clip

    return build_clip(tmp_path_factory.mktemp("clip-b") / "clip", seed=7, image_size=96)


def _rows(a):
    return [r for f in sorted(a.glob("*.parquet")) for r in ann.read_rows(str(f))]


@pytest.mark.slow
def test_a_two_step_chain_picks_what_both_steps_pick_by_hand(shard_dir, tiny_models, second_clip, tmp_path):
    a = tmp_path / "a"
    one = shard_dir / "00000.tar"
    assert cli("annotate", one, "-o", a, "-c", tiny_models["blip"], "--decoding", "sample", "--num-captions", 5,
               "--max-new-tokens", 4, "--clip-model", tiny_models["clip"], "--no-sieve", "--batch-size", 3,
               "--rerank", f"{tiny_models['clip']}=3", "--rerank", f"{second_clip}=1", "--dtype", "float32", "-q") == 0
    rows = {r["key"]: r for r in _rows(a)}
    b = ClipScorer(ClipConfig(second_clip, None, dtype="float32"))
    draft = max(64, b.image_size)  # what annotate decoded at: the largest input of its models (BLIP, CLIP: 64)
    checked = 0
    for rec in iter_shard(str(one)):
        r = rows[rec.key]
        assert len(r["rerank_scores"]) == 2
        first = r["rerank_scores"][0]
        assert first == pytest.approx(r["clip_captions"])  # step 1 is the main model: its scores are reused
        top3 = sorted(sorted(range(5), key=lambda j: (-first[j], j))[:3])
        emb = b.encode_images([decode(rec.image_bytes, draft_size=draft)])
        _, (by_hand,) = b.score(emb, [None], [[r["captions"][j] for j in top3]])
        second = r["rerank_scores"][1]
        assert [j for j in range(5) if second[j] is not None] == top3
        assert [second[j] for j in top3] == pytest.approx(by_hand, abs=1e-4)
        assert r["rerank_pick"] == top3[max(range(3), key=lambda i: (by_hand[i], -i))]
        checked += 1
    assert checked == len(rows)


def test_a_one_step_chain_is_the_single_rerank(shard_dir, tiny_models, tmp_path):
    a = tmp_path / "a"
    assert cli("annotate", shard_dir / "00001.tar", "-o", a, "-c", tiny_models["blip"], "--decoding", "sample",
               "--num-captions", 4, "--max-new-tokens", 4, "--clip-model", tiny_models["clip"], "--no-sieve",
               "--rerank", f"{tiny_models['clip']}=1", "-q") == 0
    for r in _rows(a):
        s = r["clip_captions"]
        assert r["rerank_scores"] == [s]
        assert r["rerank_pick"] == max(range(len(s)), key=lambda j: (s[j], -j))


def test_the_chains_pick_is_the_synthetic_caption_and_keeps_the_main_score(shard_dir, tiny_models, second_clip,
                                                                           tmp_path):
    from recaption.mixing.strategies import synthetic_of
    from tests.helpers import read_output

    a, out = tmp_path / "a", tmp_path / "out"
    one = shard_dir / "00002.tar"
    assert cli("annotate", one, "-o", a, "-c", tiny_models["blip"], "--decoding", "sample", "--num-captions", 4,
               "--max-new-tokens", 4, "--clip-model", tiny_models["clip"], "--no-sieve",
               "--rerank", f"{tiny_models['clip']}=2", "--rerank", f"{second_clip}=1", "-q") == 0
    rows = {r["key"]: r for r in _rows(a)}
    assert cli("mix", one, "-a", a, "-o", out, "--strategy", "synthetic", "-q") == 0
    got = read_output(out)
    differs = 0
    for k, s in got.items():
        r = rows[k]
        pick = r["rerank_pick"]
        rc = s.meta["recaption"]
        assert rc["synthetic_caption"] == r["captions"][pick] == s.members["txt"].decode()
        assert rc["clip_synthetic"] == pytest.approx(r["clip_captions"][pick])  # the main model's score
        assert synthetic_of(r) == (r["captions"][pick], pytest.approx(r["clip_captions"][pick]))
        differs += pick != max(range(4), key=lambda j: (r["clip_captions"][j], -j))
    assert len(got) == len(rows)
    assert differs  # the second step changed some picks, so this test tells the chain from one ranking
