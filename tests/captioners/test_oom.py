"""CUDA out-of-memory halves the batch and retries (simulated: no GPU here)."""
import logging

import torch

from recaption.captioners.base import Captioner, CaptionerConfig


class Fussy(Captioner):
    calls: list

    def _generate(self, images, raws):
        self.calls.append(len(images))
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [[f"cap {i}"] for i in images]


def test_oom_halves_and_says_so(caplog):
    c = Fussy(CaptionerConfig(backend="blip", model="x"))
    c.calls = []
    with caplog.at_level(logging.WARNING, logger="recaption"):
        out = c.caption(list(range(7)), [None] * 7, "k")
    assert out == [[f"cap {i}"] for i in range(7)]  # every image, in order
    assert c.calls[0] == 7 and sum(n for n in c.calls if n <= 2) == 7  # halved until batches fit
    assert "out of memory" in caplog.text and "retrying" in caplog.text
