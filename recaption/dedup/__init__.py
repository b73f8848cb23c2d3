"""Duplicates and evaluation-set overlap, as a library below the mix: fingerprints in, pairs and
survivors out. It knows no pool, strategy or output; the mix reaches it through one bridge,
`recaption.mixing.removal` (and reads its options, `options`, in `MixConfig`).

`options` (--dedup and --decontaminate as data, no numpy), `duplicates` (the rules over a pool's
files: per-file keys, merged on the driver), `hamming` (every pair of 64-bit hashes within k bits),
`semantic` (SemDeDup-style pairs within k-means clusters), `survivors` (first kept in order, the
others name it), `overlap` (an evaluation set fingerprinted, rows matched against it).
"""
