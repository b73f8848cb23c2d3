"""The `sieve` group: SIEVE's similarity of the masked alt-text and candidates (docs/formats.md#sieve-score)."""
from __future__ import annotations

from recaption.annotators.base import (Annotator, Column, Option, check_model_path, model_identity, on_device,
                                       recipe_section)

RECIPE_KEYS = {"model", "mask"}


class Sieve(Annotator):
    """`sieve`, `sieve_mean`, `sieve_best` from the texts alone: every text of a shard embedded in
    one call when the shard has been read (or from the file, without reading the shard)."""

    name = "sieve"
    columns = (Column("sieve", "float32"), Column("sieve_mean", "float32"), Column("sieve_best", "string"))
    after = ("captions",)
    reads_images = False
    add_hint = "recaption score INPUT -a ANN"
    options = (
        Option("sieve_model", str, None,
               "sentence-transformers id or path (default: all-MiniLM-L6-v2, bundled copy when installed)"),
        Option("no_sieve", bool, False, "skip SIEVE scores", flags=("--no-sieve",)),
        Option("mask", str, "sieve", "SIEVE mask list: sieve, sieve-long, none, or a file with one phrase a line"),
    )

    @classmethod
    def configure(cls, values: dict, others: dict):
        """A `SieveConfig`, or None with --no-sieve."""
        from recaption.scoring.sieve import SieveConfig, resolve_sieve_model

        if values.get("no_sieve"):
            return None
        return SieveConfig(resolve_sieve_model(values.get("sieve_model")), values.get("mask") or "sieve")

    @classmethod
    def from_recipe(cls, recipe: dict, others: dict):
        """`sieve: {model, mask}` (model `default`: all-MiniLM-L6-v2) or null."""
        from recaption.scoring.sieve import SieveConfig, default_sieve_model

        s = recipe_section(recipe, "sieve", RECIPE_KEYS)
        if s is None:
            return None
        model = s.get("model") or "default"
        return SieveConfig(default_sieve_model() if model == "default" else str(model), s.get("mask") or "sieve")

    @classmethod
    def settings(cls, c, run) -> dict:
        """The embedder and the mask list."""
        return {"model": model_identity(c.model), "mask": c.mask}

    @classmethod
    def check(cls, c) -> None:
        """A local embedder folder must exist; a hub id must be here or reachable (one line saying
        which package or path provides it, never minutes of hub retries)."""
        from recaption.scoring.masks import load_mask_list
        from recaption.scoring.sieve import check_sieve_model

        check_model_path(c.model, "SIEVE model")
        check_sieve_model(c.model)
        load_mask_list(c.mask)  # a misspelt list name, said before any shard is read

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        from recaption.scoring.sieve import SieveScorer

        s = on_device(config, ctx.device)
        self.scorer = SieveScorer(s.model, s.mask, device=s.device)

    def finish_shard(self, rows: list[dict]) -> None:
        """Fill the SIEVE columns of the shard's ok rows."""
        live = [r for r in rows if r["key"] is not None and r["status"] == "ok"]
        res = self.scorer.score([r["raw_caption"] for r in live], [r["captions"] or [] for r in live])
        for r, x in zip(live, res):
            r["sieve"], r["sieve_mean"], r["sieve_best"] = x.sieve, x.sieve_mean, x.sieve_best
