"""Caption-quality metrics, dependency-free, as the standard tools define them.

- BLEU-4: corpus BLEU (uniform weights), brevity penalty against the closest reference length
  per caption (as pycocoevalcap's Bleu does).
- CIDEr-D: tf-idf n-gram (1..4) vectors, idf over the references of the corpus, clipped
  similarity, Gaussian length penalty (sigma 6), times 10 (as pycocoevalcap's CiderD does,
  including its length being counted in bigrams).
- CLIP-S = 2.5 * max(cos(image, caption), 0); RefCLIP-S = harmonic mean of CLIP-S and
  max(max_r cos(caption, r), 0) (Hessel et al. 2021); every text, caption and reference, is
  embedded as CLIPSCORE_PREFIX + text, as the reference code does.
- Tokens: pycocoevalcap's PTB tokenisation, reimplemented (tokenize).
- mean length in words, and the number of unique trigrams over all captions (Nguyen et al. 2023).
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

# pycocoevalcap runs Stanford PTBTokenizer 3.4.1 with -lowerCase, then drops these tokens. Its list
# also names -LRB- -RRB- -LCB- -RCB-, which never match since tokens are lowercased first: brackets
# stay as -lrb- ... -rcb- there, and so they do here.
PTB_DROPPED = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_PTB_FORMS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-",
              "…": "...", "–": "--", "—": "--", '"': "''", "“": "``", "”": "''", "‘": "`", "’": "'",
              "«": "``", "»": "''"}
# words PTB splits in two ("cannot" -> "can not")
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                "wanna": ("wan", "na"), "gimme": ("gim", "me"), "lemme": ("lem", "me")}
# abbreviations PTB keeps with their period ("st." stays whole; "dog." is "dog" + ".")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc ca inc co ltd corp mt ft ave blvd prof gen rev capt sgt lt col"
    " jan feb mar apr jun jul aug sep sept oct nov dec".split())
_CLITIC_END = re.compile(r"(?:n['’]t|['’](?:s|re|ve|ll|d|m))$", re.I)
_TIME_AMPM = re.compile(r"(\d+[.:]\d+)([ap]m)", re.I)  # 4:45pm -> 4:45 pm (but 5pm stays whole)
_INITIALS = re.compile(r"[^\W\d_](?:\.[^\W\d_])*")  # a, u.s, e.g: the period after them is kept
_TOKEN = re.compile(r"""
    (?P<url>(?:https?://|www\.)\S+)
  | (?P<email>[\w.+-]+@\w[\w-]*(?:\.[\w-]+)+)
  | (?P<tag>[#@][^\W\d_]\w*)
  | (?P<word>(?:(?<!\w)[-+.](?=\d))?           # sign or leading point of a number: -5 +5 .5
        \w+(?:(?:[-./]|(?<=\d)[,:](?=\d)|['’](?=\w))\w+)*   # black-and-white 3.5 1,000 4:45 o'clock
        (?P<period>\.)?)                     # the period after it, kept for initials and abbreviations
  | (?P<clitic>n['’]t\b|['’](?:s|re|ve|ll|d|m)\b|['’]\d\ds?(?![\w%:]))   # 's n't ..., years '90s
  | (?P<dashes>--+)
  | (?P<mark>\.\.\.|``|''|[!?]+|\S)          # "!!" and "?!" stay whole, as in PTB
""", re.X | re.I)


def tokenize(text: str) -> list[str]:
    """Tokens as pycocoevalcap's PTBTokenizer leaves them, in Python (see eval/README.md)."""
    out: list[str] = []
    for m in _TOKEN.finditer(text):
        kind, tok = m.lastgroup, m.group()
        if kind == "word":
            out += _word(m.group("word"), m.group("period"))
        elif kind == "dashes":
            out.append("--")
        elif kind == "mark":
            out.append(_PTB_FORMS.get(tok, tok))
        else:
            out.append(tok.lower().replace("’", "'"))
    return [t for t in out if t not in PTB_DROPPED]


def _word(word: str, period: str | None) -> list[str]:
    w = word[:-1] if period else word
    if period and (_INITIALS.fullmatch(w) or w.lower() in _ABBREVIATIONS):
        return [word.lower()]
    tail = [period] if period else []
    while (m := _CLITIC_END.search(w)) and m.start() > 0:
        tail.insert(0, m.group().lower().replace("’", "'"))
        w = w[:m.start()]
    w = w.lower()
    if w in _SPLIT_WORDS:
        return [*_SPLIT_WORDS[w], *tail]
    if m := _TIME_AMPM.fullmatch(w):
        return [m.group(1), m.group(2), *tail]
    return [w, *tail]


def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu4(hyps: list[str], refs: list[list[str]]) -> float:
    match, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, rs in zip(hyps, refs):
        ht, rts = tokenize(h), [tokenize(r) for r in rs]
        hyp_len += len(ht)
        ref_len += min((abs(len(r) - len(ht)), len(r)) for r in rts)[1]
        for n in range(1, 5):
            hc = ngrams(ht, n)
            best = Counter()
            for r in rts:
                best |= ngrams(r, n)
            match[n - 1] += sum(min(c, best[g]) for g, c in hc.items())
            total[n - 1] += max(len(ht) - n + 1, 0)
    if min(match) == 0 or hyp_len == 0:
        return 0.0
    logp = sum(math.log(m / t) for m, t in zip(match, total)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(logp)


def _counts(tokens):
    c = Counter()
    for n in range(1, 5):
        c.update(ngrams(tokens, n))
    return c


def cider_d(hyps: list[str], refs: list[list[str]], sigma: float = 6.0) -> float:
    crefs = [[_counts(tokenize(r)) for r in rs] for rs in refs]
    df = defaultdict(float)
    for rs in crefs:
        for g in set(g for r in rs for g in r):
            df[g] += 1
    log_n = math.log(float(len(crefs)))

    def vec(cnts):
        v = [dict() for _ in range(4)]
        norm, length = [0.0] * 4, 0
        for g, tf in cnts.items():
            n = len(g) - 1
            v[n][g] = tf * (log_n - math.log(max(1.0, df[g])))
            norm[n] += v[n][g] ** 2
            if n == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for h, rs in zip(hyps, crefs):
        vh, nh, lh = vec(_counts(tokenize(h)))
        total = [0.0] * 4
        for r in rs:
            vr, nr, lr = vec(r)
            for n in range(4):
                val = sum(min(x, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, x in vh[n].items())
                if nh[n] and nr[n]:
                    val /= nh[n] * nr[n]
                total[n] += val * math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
        scores.append(sum(total) / 4 / len(rs) * 10.0)
    return sum(scores) / len(scores)


# jmhessel/clipscore embeds "A photo depicts " + text, for candidates and references alike
CLIPSCORE_PREFIX = "A photo depicts "


def clip_s(cos_image_caption: float) -> float:
    return 2.5 * max(cos_image_caption, 0.0)


def ref_clip_s(cos_image_caption: float, cos_caption_refs: list[float]) -> float:
    a, b = clip_s(cos_image_caption), max(max(cos_caption_refs), 0.0)
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def mean_length(captions: list[str]) -> float:
    return sum(len(tokenize(c)) for c in captions) / max(len(captions), 1)


def unique_trigrams(captions: list[str]) -> int:
    return len({g for c in captions for g in ngrams(tokenize(c), 3)})
