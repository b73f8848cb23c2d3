"""What a kept sample becomes on disk, for the mix writer and the overlay readers alike: `members`
(its txt, json and extra members), `recaption_field` (the json's `recaption` object, column-wise),
`caption_keys` (`--caption-keys`: captions under top-level json keys) and `spans` (kept samples
copied as byte spans from the member index). It knows no strategy: a caller passes the strategy's
name and its extra members. The tar blocks themselves are `recaption.io.tarcopy`'s.
"""
