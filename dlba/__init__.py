"""dlba: a Decrypting Load Balancing Array on Twisted."""

__version__ = "0.1.0"
