"""Build tiny random-weight models and save them where the real loading code can read them.

Nothing here downloads: tokenizers are built from a small word list, weights are random with a
fixed seed. Each builder returns the directory (or open_clip `local-dir:` id) to load from.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

WORDS = (
    "a an the of in on at with and picture photo image stock red green blue yellow black white "
    "small large dog cat man woman child car tree house sky water field road table chair bird "
    "flower street sitting standing running near next to two three some people building grass "
    "beach mountain city night day light dark food plate cup shirt hat ball window door wall"
).split()


def _seed(seed: int):
    import torch

    torch.manual_seed(seed)


def _bert_vocab(path: Path) -> Path:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    toks = specials + list(dict.fromkeys(WORDS)) + letters + ["##" + c for c in letters] + list(".,!?'-")
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(toks) + "\n")
    return path / "vocab.txt"


def build_blip(out: str | Path, *, seed: int = 0, hidden: int = 64, image_size: int = 64) -> Path:
    """A tiny random-weight BLIP captioner and processor, saved to load through from_pretrained."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    out = Path(out)
    vocab = _bert_vocab(out / "_tok")
    tok = BertTokenizer(str(vocab), do_lower_case=True, model_max_length=64)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    v = len(tok)
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=v, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=hidden,
            bos_token_id=tok.convert_tokens_to_ids("[DEC]"), pad_token_id=tok.pad_token_id,
            sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id,
        ),
        vision_config=dict(
            hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
            num_attention_heads=2, image_size=image_size, patch_size=16,
        ),
        projection_dim=hidden,
    )
    _seed(seed)
    model = BlipForConditionalGeneration(cfg).eval()
    proc = BlipProcessor(
        BlipImageProcessor(size={"height": image_size, "width": image_size}), tok
    )
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def _bpe_tokenizer(extra_specials=(), **named):
    """A byte-level BPE tokenizer trained on the word list; `named` are special tokens the model's
    processor reads by name (Florence-2's `image_token`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token=None))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    specials = ["<pad>", "</s>", "<unk>", *extra_specials]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [" ".join(WORDS[i : i + 6]) for i in range(0, len(WORDS), 3)] * 4
    t.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=t, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=128, **named,
    )


def build_blip2_opt(out: str | Path, *, seed: int = 0, hidden: int = 64, image_size: int = 64,
                    num_query_tokens: int = 4) -> Path:
    """A tiny random-weight BLIP-2 with an OPT language model, saved to load through from_pretrained."""
    from transformers import (
        Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, OPTConfig,
    )

    out = Path(out)
    tok = _bpe_tokenizer(extra_specials=("<image>",))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.image_token = "<image>"
    image_token_id = tok.convert_tokens_to_ids("<image>")
    text = OPTConfig(
        vocab_size=len(tok), hidden_size=hidden, ffn_dim=hidden * 2, num_hidden_layers=2,
        num_attention_heads=2, word_embed_proj_dim=hidden, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    cfg = Blip2Config(
        vision_config=dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=16),
        qformer_config=dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                            num_attention_heads=2, encoder_hidden_size=hidden, vocab_size=64),
        text_config=text.to_dict(),
        num_query_tokens=num_query_tokens,
        image_token_index=image_token_id,
    )
    _seed(seed)
    model = Blip2ForConditionalGeneration(cfg).eval()
    proc = Blip2Processor(
        BlipImageProcessor(size={"height": image_size, "width": image_size}), tok,
        num_query_tokens=num_query_tokens,
    )
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def _unigram_tokenizer():
    """A T5-style (Unigram, '</s>' eos, '<pad>' start) tokenizer trained on the word list."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.Unigram())
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>", "<image>"],
                                      unk_token="<unk>")
    t.train_from_iterator([" ".join(WORDS[i : i + 6]) for i in range(0, len(WORDS), 3)] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=128)


def build_blip2_t5(out: str | Path, *, seed: int = 0, hidden: int = 64, image_size: int = 64,
                   num_query_tokens: int = 4) -> Path:
    """A tiny random-weight BLIP-2 with a T5 language model, saved to load through from_pretrained."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, T5Config

    out = Path(out)
    tok = _unigram_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.image_token = "<image>"
    text = T5Config(vocab_size=len(tok), d_model=hidden, d_kv=32, d_ff=hidden * 2, num_layers=2, num_decoder_layers=2,
                    num_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                    decoder_start_token_id=tok.pad_token_id)
    cfg = Blip2Config(
        vision_config=dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=16),
        qformer_config=dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                            num_attention_heads=2, encoder_hidden_size=hidden, vocab_size=64),
        text_config=text.to_dict(), num_query_tokens=num_query_tokens,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    _seed(seed)
    Blip2ForConditionalGeneration(cfg).eval().save_pretrained(out)
    Blip2Processor(BlipImageProcessor(size={"height": image_size, "width": image_size}), tok,
                   num_query_tokens=num_query_tokens).save_pretrained(out)
    return out


# Chat templates in the shape of the real models' (Qwen2-VL's and llava-hf's llava-1.5), so the
# tiny models render prompts through apply_chat_template as the real ones do.
QWEN2_VL_CHAT = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_CHAT = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{% for c in message['content'] %}"
    "{{ c['text'] }}{% endfor %}{{ '\\n' }}{% else %}{{ message['role'].upper() }}: {% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>")


def _vlm_tokenizer(specials, **named):
    tok = _bpe_tokenizer(extra_specials=specials, **named)
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    tok.model_max_length = 4096  # prompts hold the image's tokens
    return tok


def build_qwen2_vl(out: str | Path, *, seed: int = 0, hidden: int = 64, max_pixels: int = 112 * 112) -> Path:
    """A tiny random-weight Qwen2-VL (dynamic resolution, M-RoPE), its processor and chat template."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out = Path(out)
    tok = _vlm_tokenizer(QWEN_SPECIALS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    _seed(seed)
    Qwen2VLForConditionalGeneration(cfg).eval().save_pretrained(out)
    ip = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=max_pixels, patch_size=14, merge_size=2,
                               temporal_patch_size=2)
    Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                     chat_template=QWEN2_VL_CHAT).save_pretrained(out)
    return out


def build_qwen2_5_vl(out: str | Path, *, seed: int = 0, hidden: int = 64, max_pixels: int = 112 * 112) -> Path:
    """A tiny random-weight Qwen2.5-VL (window attention in the vision tower, its last block full,
    an MLP merger out to the language model's width), Qwen2-VL's image processor and chat template."""
    import transformers as T
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out = Path(out)
    tok = _vlm_tokenizer(QWEN_SPECIALS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    cfg = T.Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=tok.pad_token_id,
        ),
        # windows of 56 px (2x2 merged tokens): a 112 px image spans four, so the windowed blocks
        # and the full one attend differently, as in the real tower (112 px windows, 4 full blocks of 32)
        vision_config=dict(depth=2, hidden_size=hidden, intermediate_size=hidden * 2, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                           out_hidden_size=hidden),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    _seed(seed)
    T.Qwen2_5_VLForConditionalGeneration(cfg).eval().save_pretrained(out)
    ip = T.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=max_pixels, patch_size=14, merge_size=2,
                                 temporal_patch_size=2)
    T.Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                          chat_template=QWEN2_VL_CHAT).save_pretrained(out)
    return out


def build_llava(out: str | Path, *, seed: int = 0, hidden: int = 64, image_size: int = 32, patch: int = 8) -> Path:
    """A tiny random-weight LLaVA-1.5 (CLIP vision tower, Llama language model), processor and chat template."""
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
    )

    out = Path(out)
    tok = _vlm_tokenizer(("<image>",))
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=image_size, patch_size=patch,
                                       projection_dim=hidden).to_dict(),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    _seed(seed)
    LlavaForConditionalGeneration(cfg).eval().save_pretrained(out)
    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=LLAVA_CHAT).save_pretrained(out)
    return out


# The shape of llava-hf/llava-v1.6-mistral-7b-hf's chat template (Mistral's [INST] turns, images first).
LLAVA_NEXT_CHAT = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' }}{% for c in "
    "message['content'] %}{{ c['text'] }}{% endfor %}{{ '\\n<</SYS>>\\n\\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}"
    "{% endfor %}{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}{% endif %}{% endfor %}"
)


def build_llava_next(out: str | Path, *, seed: int = 0, hidden: int = 64, image_size: int = 32,
                     patch: int = 8) -> Path:
    """A tiny random-weight LLaVA-NeXT (LLaVA-1.6: CLIP tower, anyres tiles of its side plus the
    whole image, a Mistral language model), its processor with the grid pinpoints and chat template."""
    import transformers as T

    out = Path(out)
    tok = _vlm_tokenizer(("<image>",))
    # the real pinpoints are 336 px tiles in 1x2, 2x1, 2x2, 3x1 and 1x3 grids: the same grids here
    s = image_size
    pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [3 * s, s], [s, 3 * s]]
    cfg = T.LlavaNextConfig(
        vision_config=T.CLIPVisionConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=s, patch_size=patch,
                                         projection_dim=hidden).to_dict(),
        text_config=T.MistralConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                    head_dim=hidden // 2, max_position_embeddings=512, sliding_window=None,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id).to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_grid_pinpoints=pinpoints,
        image_seq_length=(s // patch) ** 2,
    )
    _seed(seed)
    T.LlavaNextForConditionalGeneration(cfg).eval().save_pretrained(out)
    ip = T.LlavaNextImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                   image_grid_pinpoints=pinpoints)
    T.LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                         num_additional_image_tokens=1, chat_template=LLAVA_NEXT_CHAT).save_pretrained(out)
    return out


# The shape of SmolVLM's and Idefics3's chat template (the image first in the user's turn).
IDEFICS3_CHAT = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_SPECIALS = ("<|im_start|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                     *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])


def _build_idefics3_family(out: Path, family: str, seed: int, hidden: int, image_size: int, patch: int,
                           scale: int) -> Path:
    import transformers as T

    classes = {"idefics3": (T.Idefics3Config, T.Idefics3ForConditionalGeneration, T.Idefics3Processor,
                            T.Idefics3ImageProcessor),
               "smolvlm": (T.SmolVLMConfig, T.SmolVLMForConditionalGeneration, T.SmolVLMProcessor,
                           T.SmolVLMImageProcessor)}
    config, model, processor, image_processor = classes[family]
    tok = _vlm_tokenizer(IDEFICS3_SPECIALS)
    end = tok.convert_tokens_to_ids("<end_of_utterance>")  # the real models end a turn with it
    cfg = config(
        vision_config=dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=end,
                         pad_token_id=tok.pad_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale, pad_token_id=tok.pad_token_id,
    )
    _seed(seed)
    m = model(cfg).eval()
    m.generation_config.eos_token_id = end
    m.save_pretrained(out)
    # images up to twice the vision tower's side: split into up to 2x2 crops plus the whole image
    ip = image_processor(size={"longest_edge": image_size * 2}, max_image_size={"longest_edge": image_size})
    extra = {"video_processor": T.SmolVLMVideoProcessor()} if family == "smolvlm" else {}
    processor(image_processor=ip, tokenizer=tok, image_seq_len=(image_size // patch) ** 2 // scale ** 2,
              chat_template=IDEFICS3_CHAT, **extra).save_pretrained(out)
    return out


def build_idefics3(out: str | Path, *, seed: int = 0, hidden: int = 64, image_size: int = 32, patch: int = 8,
                   scale: int = 2) -> Path:
    """A tiny random-weight Idefics3 (SigLIP-style tower, pixel shuffle, Llama; SmolVLM-256M's
    architecture), its image splitting processor and chat template."""
    return _build_idefics3_family(Path(out), "idefics3", seed, hidden, image_size, patch, scale)


def build_smolvlm(out: str | Path, *, seed: int = 0, hidden: int = 64, image_size: int = 32, patch: int = 8,
                  scale: int = 2) -> Path:
    """A tiny random-weight SmolVLM (SmolVLM2's model_type; its processor needs num2words)."""
    return _build_idefics3_family(Path(out), "smolvlm", seed, hidden, image_size, patch, scale)


def build_florence2(out: str | Path, *, seed: int = 0, hidden: int = 64, image_size: int = 64) -> Path:
    """A tiny random-weight Florence-2 as transformers carries it natively (DaViT tower, BART
    encoder-decoder; the florence-community checkpoints' format, no remote code) and its processor."""
    import transformers as T

    out = Path(out)
    tok = _vlm_tokenizer(("<s>", "<image>"), image_token="<image>")
    tok.bos_token = "<s>"
    text = T.BartConfig(vocab_size=len(tok), d_model=hidden, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=hidden * 2,
                        decoder_ffn_dim=hidden * 2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id,
                        tie_word_embeddings=False)
    vision = T.Florence2VisionConfig(depths=(1, 1, 1, 1), embed_dim=(16, 32, 32, 64), num_heads=(2, 2, 2, 2),
                                     num_groups=(2, 2, 2, 2), window_size=2, projection_dim=hidden, drop_path_rate=0.0)
    # untied: a random decoder with tied embeddings predicts its start token (the end) at once
    cfg = T.Florence2Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                            image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    _seed(seed)
    T.Florence2ForConditionalGeneration(cfg).eval().save_pretrained(out)
    ip = T.CLIPImageProcessor(size={"height": image_size, "width": image_size}, do_center_crop=False,
                              crop_size={"height": image_size, "width": image_size})
    ip.image_seq_length = (image_size // 32) ** 2 + 1  # the tower's stride is 32, plus one pooled token
    T.Florence2Processor(image_processor=ip, tokenizer=tok).save_pretrained(out)
    return out


def build_causal_lm(out: str | Path, *, seed: int = 0, hidden: int = 64, chat: bool = True) -> Path:
    """A tiny random-weight Llama causal LM and its tokenizer, for chained and fused caption groups:
    with a Qwen-style chat template (`chat`), or none (CapsFusion's LLaMA takes a plain prompt)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tok = _vlm_tokenizer(QWEN_SPECIALS[:3])
    if chat:
        tok.chat_template = QWEN2_VL_CHAT
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    _seed(seed)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


# Every tiny VLM family, by transformers' model_type: tests caption with each of them.
VLM_BUILDERS = {"qwen2_vl": build_qwen2_vl, "llava": build_llava, "idefics3": build_idefics3,
                "smolvlm": build_smolvlm, "florence2": build_florence2, "qwen2_5_vl": build_qwen2_5_vl,
                "llava_next": build_llava_next}


def _open_clip_dir(out: Path, model_cfg: dict, seed: int) -> str:
    import open_clip
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
        }}, indent=1)
    )
    _seed(seed)
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # "no weights found" is the point here: we make them
    try:
        model = open_clip.create_model(f"local-dir:{out}", load_weights=False)
    finally:
        root.setLevel(level)
    # open_clip leaves CoCa's decoder projection as torch.empty memory (its init skips it): garbage
    # that differed build to build, up to 1e28 logits, so cached and uncached decoding disagreed
    proj = getattr(getattr(model, "text_decoder", None), "text_projection", None)
    if proj is not None:
        import torch

        torch.nn.init.normal_(proj.data, std=proj.shape[0] ** -0.5)
    # Tied or shared tensors must be cloned for safetensors.
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()},
              str(out / "open_clip_model.safetensors"))
    return f"local-dir:{out}"


def build_clip(out: str | Path, *, seed: int = 0, width: int = 64, image_size: int = 64, embed_dim: int = 32) -> str:
    """A tiny random-weight open_clip model in a local-dir: folder (`embed_dim` wide embeddings: 768
    feeds the LAION heads of ViT-L/14 at their real input width)."""
    cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": width, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": 2},
    }
    return _open_clip_dir(Path(out), cfg, seed)


def build_coca(out: str | Path, *, seed: int = 0, width: int = 64, image_size: int = 64) -> str:
    """A tiny random-weight open_clip CoCa in a local-dir: folder."""
    cfg = {
        "embed_dim": width,  # CoCa's decoder attends to pooled image tokens of this width
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": width, "patch_size": 16,
                       "attentional_pool": True, "attn_pooler_queries": 16, "attn_pooler_heads": 2,
                       "output_tokens": True},
        "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": width, "heads": 2,
                     "layers": 2, "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": width, "heads": 2,
                           "layers": 2, "attn_pooler_heads": 2},
        "custom_text": True,
    }
    return _open_clip_dir(Path(out), cfg, seed)


def build_sentence_transformer(out: str | Path, *, seed: int = 0) -> Path:
    """A tiny BERT + mean pooling + normalize, saved in sentence-transformers' layout."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel, BertTokenizer

    out = Path(out)
    raw = out / "_hf"
    vocab = _bert_vocab(raw)
    tok = BertTokenizer(str(vocab), do_lower_case=True, model_max_length=32)
    _seed(seed)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(raw)
    tok.save_pretrained(raw)
    word = models.Transformer(str(raw), max_seq_length=32)
    st = SentenceTransformer(modules=[word, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    st.save(str(out))
    return out


def build_all(root: str | Path) -> dict[str, str]:
    """Every tiny model under root (built once, then reused); returns their paths by name."""
    root = Path(root)
    done = root / "_ok.json"
    builders = ("blip", "blip2", "blip2t5", "clip", "coca", "vlm", "text", "text_plain")
    if done.exists():
        cached = json.loads(done.read_text())
        if set(builders) <= set(cached):
            return cached
    paths = {
        "blip": str(build_blip(root / "blip")),
        "blip2": str(build_blip2_opt(root / "blip2-opt")),
        "blip2t5": str(build_blip2_t5(root / "blip2-t5")),
        "clip": build_clip(root / "clip"),
        "coca": build_coca(root / "coca"),
        "vlm": str(build_qwen2_vl(root / "qwen2-vl")),
        "text": str(build_causal_lm(root / "llama-text")),
        "text_plain": str(build_causal_lm(root / "llama-plain", chat=False)),
    }
    done.write_text(json.dumps(paths, indent=1))
    return paths
