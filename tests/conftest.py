"""Test-wide settings."""

import torch

# Tiny models gain nothing from intra-op threads, and OpenMP spinning on a busy 2-core machine
# makes each small matmul ~40x slower.
torch.set_num_threads(1)
