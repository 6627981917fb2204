"""Pallas kernels for the hot attention path, each with a plain-JAX reference in `reference`.

All tensors are [batch, length, heads, head_dim]. `interpret=None` runs the kernel in Pallas
interpret mode on CPU and compiled on GPU/TPU. Which Pallas GPU backend lowers them (Triton
today, Mosaic GPU later) stays behind these two functions.
"""
from substrax.models.kernels import reference
from substrax.models.kernels.flash import flash_attention
from substrax.models.kernels.linear import linear_attention

__all__ = ["flash_attention", "linear_attention", "reference"]
