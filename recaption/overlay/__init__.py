"""The read side of a mix: decisions applied to samples as a trainer reads the original shards
(`reader`), and the caption a reader may draw among a sample's caption keys (`caption_choice`).
Users reach it through `recaption.webdataset` and `python -m recaption.train_open_clip`.
"""
