"""recaption: regenerate, score and mix the captions of WebDataset image-text shards.

    import recaption as rc

    rc.annotate(shards, ann, captions={"captioner": "sieve"}, clip={"model": "ViT-L-14"})
    rc.mix(shards, ann, out, strategy="sieve", fraction=0.2)

The verbs, the config types and the result types are attributes of this package, imported when
first used (PEP 562), so `import recaption` imports no torch, pyarrow, numpy or Ray: a verb
imports what it runs. README.md's "Python API" lists every name in `__all__`.
"""
__version__ = "0.1.0"

# name -> the module that defines it
_PUBLIC = {
    # verbs (recaption.api)
    "annotate": "recaption.api", "mix": "recaption.api", "run": "recaption.api", "report": "recaption.api",
    "verify": "recaption.api", "import_captions": "recaption.api", "recipes": "recaption.api",
    "presets": "recaption.api",
    # config types
    "CaptionerConfig": "recaption.captioners.base", "Decoding": "recaption.captioners.base",
    "ClipConfig": "recaption.scoring.clip", "SieveConfig": "recaption.scoring.sieve",
    "RerankStep": "recaption.scoring.rerank", "MixConfig": "recaption.mixing.config",
    "DecodeOptions": "recaption.stages.inputs", "ReadLimits": "recaption.io.shards",
    "Execution": "recaption.engines",
    # result types (recaption.results)
    "AnnotateResult": "recaption.results", "ImportResult": "recaption.results", "MixResult": "recaption.results",
    "RunResult": "recaption.results", "Verification": "recaption.results", "Page": "recaption.results",
    "Table": "recaption.results",
    # errors, and the stand-ins to try it offline
    "RecaptionError": "recaption.errors",
    "sample_shards": "recaption.demo", "tiny_models": "recaption.demo",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    """A public name, imported from its module when first asked for."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'recaption' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    if name not in _SHADOWED:
        globals()[name] = value  # asked once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# Two verbs share their names with subpackages (recaption/report/, recaption/recipes/), which the
# import system sets as attributes of this package when they are imported: properties keep
# `rc.report` and `rc.recipes` the verbs (the subpackages stay importable by their full names).
_SHADOWED = ("report", "recipes")


def _verb(name: str):
    def get(self):
        return __getattr__(name)

    def keep(self, value):  # the import system setting the subpackage: the verb stays
        pass

    return property(get, keep, doc=f"recaption.api.{name}")


import sys as _sys  # noqa: E402
import types as _types  # noqa: E402


class _Package(_types.ModuleType):
    """This package's module type: `report` and `recipes` are always the verbs."""

    report = _verb("report")
    recipes = _verb("recipes")


_sys.modules[__name__].__class__ = _Package
