"""VLM prompts as chat messages: one template file (prompts/templates) serves every VLM backend.

A template is the text of the user's turn, with `<image>` where the image goes (first when it is
absent) and `{alt_text}` for the sample's alt-text; an optional first line `system: TEXT` is the
system turn. A text model's template (the `text` and `vllm-text` backends: chained and fused
caption groups) has no image, and may also read `{caption:GROUP}`, the best candidate of another
caption group (`{caption}`: the unnamed group's), which its backend is handed as a `Context`.

The model's own processor renders the messages (`apply_chat_template` in the transformers backend,
vLLM's `LLM.chat`), so no template holds a model's markup: one that does is refused,
since rendering it again would wrap a model's turn markers inside another's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from recaption.errors import RecaptionError
from recaption.resources import named_or_path

# the template a VLM renders where none is configured (prompts/templates/caption.txt); what it
# loads and what the captions group records come from this one name
DEFAULT_TEMPLATE = "caption"
DEFAULT_TEXT_TEMPLATE = "refine"  # a text model's (chained and fused caption groups)
ALT_TEXT = "{alt_text}"
IMAGE = "<image>"
CAPTION = re.compile(r"\{caption(?::([a-z][a-z0-9-]{0,31}))?\}")  # {caption:GROUP}; {caption}: the unnamed group
FILLED = re.compile(r"\{alt_text\}|" + CAPTION.pattern)
MAX_ALT_CHARS = 1000
# Turn and image markers of the chat formats recaption's VLMs use: a template holding one was
# written for one model's raw prompt, which the processor's own rendering would double.
MARKUP = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "USER:",
          "ASSISTANT:", "<|user|>", "<|assistant|>", "<end_of_utterance>", "[INST]", "<start_of_turn>",
          "<|start_header_id|>", "<|eot_id|>", "<fake_token_around_image>")


@dataclass(frozen=True)
class ChatTemplate:
    """A prompt as chat turns: the system text (or None), and the user's text before and after the image."""

    name: str
    system: str | None
    before: str
    after: str

    def refs(self) -> list[str | None]:
        """The caption groups `{caption:GROUP}` reads, in order of first use (None: the unnamed group)."""
        text = "\n".join(t for t in (self.system, self.before, self.after) if t)
        return list(dict.fromkeys(m.group(1) for m in CAPTION.finditer(text)))

    def text_messages(self, context: str | None) -> list[dict]:
        """A text model's conversation: the template's turns, `{alt_text}` and `{caption:GROUP}`
        filled from `context` (a `Context`, or a plain alt-text)."""
        before, after = self.texts(context)
        system = [{"role": "system", "content": fill(self.system, context)}] if self.system else []
        return system + [{"role": "user", "content": " ".join(t for t in (before, after) if t)}]

    def texts(self, raw_caption: str | None) -> tuple[str, str]:
        """The user's text before and after the image, `{alt_text}` filled."""
        return fill(self.before, raw_caption), fill(self.after, raw_caption)

    def messages(self, raw_caption: str | None, image_part: dict) -> list[dict]:
        """One conversation for one image: `image_part` is the backend's content part for it."""
        before, after = self.texts(raw_caption)
        content = ([{"type": "text", "text": before}] if before else []) + [image_part] + (
            [{"type": "text", "text": after}] if after else [])
        system = [{"role": "system", "content": [{"type": "text", "text": self.system}]}] if self.system else []
        return system + [{"role": "user", "content": content}]

    def digest(self) -> str:
        """sha256 of the text the prompts are rendered from (system turn, user text around the
        image; comments and the file's name left out): a folder records it, so an edited template is seen."""
        import hashlib
        import json

        text = json.dumps([self.system, self.before, self.after], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def plain(self, raw_caption: str | None) -> str:
        """The user's text alone, for a model with no chat template (Florence-2's task prompts)."""
        before, after = self.texts(raw_caption)
        return " ".join(t for t in (before, after) if t)


class Context(str):
    """A sample's alt-text (the string itself, "" where it has none) with the best candidate of
    each caption group a chained template reads (`captions`: group -> text; None: the unnamed group)."""

    captions: dict

    def __new__(cls, alt_text: str | None, captions: dict | None = None):
        self = super().__new__(cls, alt_text or "")
        self.captions = dict(captions or {})
        return self


def fill(text: str, raw_caption: str | None, max_alt_chars: int = MAX_ALT_CHARS) -> str:
    """Fill `{alt_text}` and, from a `Context`, `{caption:GROUP}` (in one pass: an alt-text that
    holds such a marker is not filled again); a missing alt-text becomes an empty string, a huge
    one is cut (so is a caption)."""
    captions = getattr(raw_caption, "captions", None)
    if captions is None:
        return text.replace(ALT_TEXT, (raw_caption or "")[:max_alt_chars])

    def one(m):
        if m.group(0) == ALT_TEXT:
            return str(raw_caption)[:max_alt_chars]
        return (captions.get(m.group(1)) or "")[:max_alt_chars]

    return FILLED.sub(one, text)


def parse_template(text: str, name: str = "<template>") -> ChatTemplate:
    """A template file's text as chat turns; '#' lines are comments, a literal backslash-n is a newline."""
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    system = None
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines and lines[0].lower().startswith("system:"):
        system = lines.pop(0).split(":", 1)[1].strip().replace("\\n", "\n") or None
    body = "\n".join(lines).strip().replace("\\n", "\n")
    found = [m for m in MARKUP if m in body or (system and m in system)]
    if found:
        raise RecaptionError(f"prompt template {name}: holds the chat markup {found[0]!r}; a template is the "
                             f"message text alone (the model's processor adds its markup), with {IMAGE} where the "
                             "image goes")
    if body.count(IMAGE) > 1:
        raise RecaptionError(f"prompt template {name}: {body.count(IMAGE)} {IMAGE} markers; one image per prompt")
    if not body.replace(IMAGE, "").strip():
        raise RecaptionError(f"prompt template {name}: no instruction text")
    before, _, after = body.partition(IMAGE) if IMAGE in body else ("", "", body)
    return ChatTemplate(name, system, before.strip(), after.strip())


def load_template(name_or_path: str) -> ChatTemplate:
    """A prompt template from prompts/templates (by name) or a file."""
    path = named_or_path("templates", name_or_path, ".txt")
    return parse_template(path.read_text(encoding="utf-8"), name_or_path)
