"""edgeq: Stable Diffusion to fast, accuracy-checked INT8 deployables for edge runtimes."""

__version__ = "0.1.0"
