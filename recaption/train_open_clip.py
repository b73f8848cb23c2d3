"""open_clip's own trainer on the input shards read through a mix overlay, without the mixed tars.

    python -m recaption.train_open_clip --overlay overlay/ \\
        --overlay-text-key 'recaption_raw;recaption_synthetic' --overlay-text-key-probs 0.5 0.5 \\
        --train-data 'shards/{00000..00127}.tar' --train-num-samples N --dataset-type webdataset ...

Every argument not starting with `--overlay` goes to `open_clip_train.main` as it is. The
trainer's webdataset pipeline (`open_clip_train.data.get_wds_dataset`) reads training shards with
one function, `tarfile_to_samples_nothrow`; this entry point wraps it so that the overlay stage
(`recaption.webdataset.overlay`) runs on each sample right after it is read, before open_clip's
shuffle and decode: dropped samples are left out, `txt` is the mix's caption, or one chosen
among the caption keys (`--overlay-text-key`, open_clip's `--json-text-key` rule), drawn anew each
epoch from the trainer's own shared epoch. `--val-data` is read as it is, without the overlay.
"""
from __future__ import annotations

import argparse
import sys

from recaption.errors import RecaptionError, require
from recaption.webdataset import Overlay, overlay


class _ReadThroughOverlay:
    """open_clip's shard reader followed by the overlay stage (picklable, for spawned workers)."""

    def __init__(self, read, stage: Overlay):
        self.read, self.stage = read, stage

    def __call__(self, src, **kw):
        return self.stage(self.read(src, **kw))


class _EpochFrom:
    """open_clip's webdataset builder, handing the trainer's shared epoch to the overlay stage."""

    def __init__(self, build, stage: Overlay):
        self.build, self.stage = build, stage

    def __call__(self, *args, **kw):
        info = self.build(*args, **kw)
        is_train = kw["is_train"] if "is_train" in kw else len(args) > 2 and args[2]  # (args, preprocess, is_train)
        if is_train and getattr(info, "shared_epoch", None) is not None:
            self.stage.epoch = info.shared_epoch  # read as each sample is: workers see set_epoch
        return info


def parser() -> argparse.ArgumentParser:
    """The overlay's own options; every other argument is open_clip_train's."""
    p = argparse.ArgumentParser(prog="python -m recaption.train_open_clip", allow_abbrev=False,
                                description="open_clip_train.main on shards read through a recaption overlay")
    p.add_argument("--overlay", required=True, help="the overlay folder (recaption mix ... --overlay), or a mix's")
    p.add_argument("--overlay-text-key", default=None,
                   help="put a caption chosen among these caption keys into txt: 'KEY1;KEY2' (needs the mix's "
                        "--caption-keys); the first the sample has wins unless weighted")
    p.add_argument("--overlay-text-key-probs", type=float, nargs="+", default=None,
                   help="weights of --overlay-text-key's keys, in order (unlisted: 0, a fallback)")
    p.add_argument("--overlay-seed", type=int, default=0, help="seed of the caption draw (with the sample and epoch)")
    p.add_argument("--overlay-verify", choices=("full", "size"), default="full",
                   help="size: compare shard sizes only (an unchanged copy whose mtime differs)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run open_clip_train.main with the overlay applied to its training shards; its exit status."""
    args, rest = parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    require("open_clip_train", "train")
    from open_clip_train import data
    from open_clip_train import main as trainer

    if args.overlay_text_key_probs is not None and args.overlay_text_key is None:
        raise RecaptionError("--overlay-text-key-probs weighs the keys of --overlay-text-key: give those too")
    stage = overlay(args.overlay, verify=args.overlay_verify, captions=args.overlay_text_key,
                    caption_probs=args.overlay_text_key_probs, seed=args.overlay_seed)
    if not hasattr(data, "tarfile_to_samples_nothrow") or not hasattr(data, "get_wds_dataset"):
        raise RecaptionError("this open_clip_train has no tarfile_to_samples_nothrow/get_wds_dataset to read "
                             "through an overlay (tested with open-clip-torch 3.3)")
    data.tarfile_to_samples_nothrow = _ReadThroughOverlay(data.tarfile_to_samples_nothrow, stage)
    data.get_wds_dataset = _EpochFrom(data.get_wds_dataset, stage)
    rc = trainer.main(rest)
    return 1 if isinstance(rc, int) and rc < 0 else 0  # open_clip's main returns -1 where it gives up


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RecaptionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
