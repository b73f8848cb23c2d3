"""recaption: regenerate, score and mix the captions of WebDataset image-text shards."""
__version__ = "0.1.0"
