"""Incremental CoCa decoding with a KV cache.

open_clip's CoCa towers recompute the whole sequence for every new token (O(L^2) per caption).
Here each step feeds only the new token: self-attention keys/values of earlier positions are
cached per layer, and the image tokens' keys/values for cross-attention are projected once.
The text tower's appended CLS token sits after every text position and causal masking hides it
from them, so it plays no part in the logits and is never computed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _qkv(attn: torch.nn.MultiheadAttention, x):
    return F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)


def _heads(x, n):  # [B, L, E] -> [B, n, L, E/n]
    b, length, e = x.shape
    return x.view(b, length, n, e // n).transpose(1, 2)


def _merge(x):  # [B, n, L, d] -> [B, L, n*d]
    b, n, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, n * d)


class _SelfCache:
    def __init__(self):
        self.k = self.v = None

    def add(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], 2)
        self.v = v if self.v is None else torch.cat([self.v, v], 2)
        return self.k, self.v

    def reorder(self, rows):
        self.k, self.v = self.k[rows], self.v[rows]


def _self_block(block, x, cache: _SelfCache):
    a = block.attn
    q, k, v = _qkv(a, block.ln_1(x))
    k, v = cache.add(_heads(k, a.num_heads), _heads(v, a.num_heads))
    o = F.scaled_dot_product_attention(_heads(q, a.num_heads), k, v)  # the new token sees all before it
    x = x + block.ls_1(a.out_proj(_merge(o)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _cross_block(block, x, kv):
    a = block.attn
    e = a.embed_dim
    q = F.linear(block.ln_1(x), a.in_proj_weight[:e], a.in_proj_bias[:e])
    o = F.scaled_dot_product_attention(_heads(q, a.num_heads), *kv)
    x = x + block.ls_1(a.out_proj(_merge(o)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class CachedCocaDecoder:
    """`step(ids)` feeds one token per row and returns next-token logits [B, V] (float32)."""

    def __init__(self, model, image_embs):
        self.text, self.dec = model.text, model.text_decoder
        self.pos = 0
        self.text_caches = [_SelfCache() for _ in self.text.transformer.resblocks]
        self.dec_caches = [_SelfCache() for _ in self.dec.resblocks]
        self.image_kv = []
        for block in self.dec.cross_attn:
            a, e = block.attn, block.attn.embed_dim
            kv_in = block.ln_1_kv(image_embs)
            k = F.linear(kv_in, a.in_proj_weight[e:2 * e], a.in_proj_bias[e:2 * e])
            v = F.linear(kv_in, a.in_proj_weight[2 * e:], a.in_proj_bias[2 * e:])
            self.image_kv.append([_heads(k, a.num_heads), _heads(v, a.num_heads)])

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits for the next token after appending the last generated one to the cache."""
        t = self.text
        dtype = t.transformer.get_cast_dtype()
        x = t.token_embedding(ids[:, None]).to(dtype) + t.positional_embedding[self.pos].to(dtype)
        for block, cache in zip(t.transformer.resblocks, self.text_caches):
            x = _self_block(block, x, cache)
        for block, cache, cross, kv in zip(self.dec.resblocks, self.dec_caches, self.dec.cross_attn, self.image_kv):
            x = _self_block(block, x, cache)
            x = _cross_block(cross, x, kv)
        self.pos += 1
        out = self.dec.ln_final(x)
        if self.dec.text_projection is not None:
            out = out @ self.dec.text_projection
        return out[:, -1].float()

    def prefill(self, prefix: torch.Tensor) -> torch.Tensor:
        """Logits after the prompt, filling the cache with its keys and values."""
        logits = None
        for i in range(prefix.shape[1]):
            logits = self.step(prefix[:, i])
        return logits

    def reorder(self, rows):
        """Beam search: keep the caches of the beams that survive, in their new order."""
        rows = torch.as_tensor(rows, device=self.image_kv[0][0].device)
        for c in self.text_caches + self.dec_caches:
            c.reorder(rows)
        for kv in self.image_kv:
            kv[0], kv[1] = kv[0][rows], kv[1][rows]


def supported(model) -> bool:
    """Plain open_clip CoCa (built-in text tower, batch-first blocks) — not HF text towers."""
    text = getattr(model, "text", None)
    blocks = getattr(getattr(text, "transformer", None), "resblocks", None)
    return bool(blocks) and getattr(text, "cls_emb", None) is not None and all(
        isinstance(b.attn, torch.nn.MultiheadAttention) and b.attn.batch_first for b in blocks)
