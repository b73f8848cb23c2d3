"""Run a trainer module as `python -m MODULE ARGS` would, with open_clip's sample filter (every
training sample passes it after the shuffle, before decoding) writing what it sees to a file:
one JSON line a sample (key, shard URL, txt). Usage: python tests/trainer_probe.py SEEN MODULE ARGS...

The trainer is open_clip_train's own code; the probe only watches. A test cannot see inside the
trainer's process otherwise, and "training read every sample" needs exactly that."""
import json
import runpy
import sys


def main() -> None:
    """Install the probe, then run MODULE as __main__ with the remaining arguments."""
    seen, module = sys.argv[1], sys.argv[2]
    from open_clip_train import data

    passes = data.filter_no_caption_or_no_image  # open-clip-torch 3.3's filter of the training samples

    def probe(sample):
        txt = sample.get("txt")
        with open(seen, "a") as f:  # one short append a sample: lines from worker processes stay whole
            f.write(json.dumps({"key": sample["__key__"], "url": sample["__url__"],
                                "txt": txt.decode("utf-8") if isinstance(txt, bytes) else txt}) + "\n")
        return passes(sample)

    data.filter_no_caption_or_no_image = probe
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
