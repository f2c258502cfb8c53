"""vllm-firp: FIRP self-speculative decoding."""
__version__ = "0.1.0"
