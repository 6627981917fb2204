"""FluidWorld, Transformer and ConvLSTM (parameter-matched) on Gray-Scott reaction-diffusion.

  substrax-train --config=configs/fluid_grayscott.py:cpu --workdir=runs/gs_fluid_s0 \
      [--config.model.name=transformer|convlstm] [--config.seed=1]

Gray-Scott-32 (docs/fluidworld.md §3): 2,000 training and 200 test videos of 20
frames, the v field as a grey image, five pattern regimes (data/video.py REGIMES), simulated
once and cached under data.cache_dir. Everything else, models, presets and the 1,200-step cpu
budget (~80 min for 3 models x 2 seeds on 2 cores), is configs/fluid_mmnist.py's; the first
run adds the simulation (11 s at 32 px on 2 cores). The evaluator rolls out all 200 test videos.
tiny simulates 20 + 10 videos at 16 px; gpu and pod use 64 px frames and the paper's model size.
"""
import ml_collections

from substrax.configs import fluid_mmnist


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  c = fluid_mmnist.base(preset, "grayscott")
  if preset in ("cpu", "gpu", "pod"):
    c.eval.update(num_sequences=c.data.sizes[1], batch_size=100)
  return c
