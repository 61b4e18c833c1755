"""longrl: long-context reasoning RL (QwenLong-L1 recipe and beyond)."""

__version__ = "0.1.0"
