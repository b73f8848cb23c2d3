"""Captioners: a batch of images (and their alt-texts) in, N candidate captions per image out."""
from recaption.captioners.base import CaptionerConfig, Decoding, build_captioner, list_presets, load_preset

__all__ = ["CaptionerConfig", "Decoding", "build_captioner", "list_presets", "load_preset"]
