"""Turn an HF causal LM into FIRP projection heads (or Medusa heads for comparison).

``python -m vllm_firp_training.generate_data`` (self-distillation data), ``python -m vllm_firp_training.train`` (frozen base
model, KL-to-teacher loss through the engine's own ``forward_rows``), ``python -m vllm_firp_training.evaluate``
(accuracy, tau, hidden-state similarity). See training/README.md.
"""
