"""pigeon-bench: evaluation and benchmarking toolkit for personalized image generation."""

__version__ = "0.1.0"
