"""The deployable runtime: tokenizer, numpy schedulers, runners, pipeline (no torch, no build stages)."""

SCHEDULERS = ("ddim", "euler", "dpmpp_2m", "lcm")  # here, so the CLI can list them without importing numpy
