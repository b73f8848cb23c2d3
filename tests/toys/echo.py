"""A toy captioner backend: says the image's size and mean grey level, and serves model ids
`echo:ANYTHING`. One module; its registration is one line
(`BACKENDS.register("echo", ECHO)`, or an entry point of `recaption.captioners` naming `ECHO`)."""
from __future__ import annotations

from recaption.captioners.base import Backend, Captioner


class Echo(Captioner):
    """No model: a caption computed from the pixels, the same for the same image."""

    @property
    def image_size(self) -> int:
        """Images are decoded at no less than this."""
        return 64

    def prepare(self, images):
        """Nothing to prepare ahead: the images are taken as they are."""
        return None

    def _generate(self, images, raw_captions):
        out = []
        for im in images:
            grey = sum(im.convert("L").resize((4, 4)).tobytes()) // 16
            out.append([f"an echo of grey {grey}"] * self.cfg.decoding.num_captions)
        return out


def serves(model: str) -> bool:
    """Model ids `echo:NAME`."""
    return model.startswith("echo:")


ECHO = Backend("tests.toys.echo:Echo", serves=serves)
