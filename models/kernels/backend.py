"""What both kernels share about where they run: interpret mode, compiler params, padding rules.

The Pallas GPU backend is chosen here and nowhere else: today Triton (jax >= 0.10 lowers a bare
pallas_call with Mosaic GPU, which does not lower these kernels); moving to Mosaic GPU later
touches only this file and the kernels, not their callers.
"""
import jax

MIN_DIM = 16  # Triton's dot needs every operand dim >= 16.


def next_pow2(n):
  return 1 << max(int(n) - 1, 0).bit_length()


def resolve_interpret(interpret):
  """None: interpret mode on CPU, compiled on GPU/TPU. Anything else goes to pallas_call as is
  (True, False, or an interpret-params object such as pltpu.InterpretParams())."""
  return jax.default_backend() == "cpu" if interpret is None else interpret


def compiler_params(interpret, *, grid_rank, num_warps=4):
  """Compiler parameters for a compiled call; None when interpreting. All grid axes are
  independent programs ("parallel" on TPU)."""
  if interpret is not False:
    return None
  backend = jax.default_backend()
  if backend == "gpu":
    try:  # deprecated upstream in favour of Mosaic GPU; if a later jax drops it, use the default
      from jax.experimental.pallas import triton as pltriton
    except ImportError:
      return None
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=2)
  if backend == "tpu":
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * grid_rank)
  return None
