"""The FluidWorld paper's three models at their published size (Polly 2026, Table 1).

  substrax-inspect --config=configs/fluid_paper.py --config.model.name=fluid        # 800,975
  substrax-inspect --config=configs/fluid_paper.py --config.model.name=transformer  # 800,067
  substrax-inspect --config=configs/fluid_paper.py --config.model.name=convlstm     # 801,995

64x64x3 frames, patch 4 -> 16x16 latent, d=128, decoder mid 64. FluidWorld: 3 content-gated
PDE layers x 6 steps, dilations {1,4,16}, MemoryPump and local memory, BeliefField 3 steps
{1,4} with its unused projections kept (dead_params), fatigue and Hebbian gain. Transformer: 2
encoder blocks + 1 temporal block, 8 heads, FFN 384. ConvLSTM: bottleneck 88, hidden 64.

The paper trained on UCF-101, which needs a prepared TFDS dataset; here the data is Moving MNIST
at 64 px with its grey channel repeated three times (data.channels=3), so the models keep their
3-channel input and output layers and the counts above stay exact. Losses are the paper's
equation (MSE on sigmoid outputs, as for its RGB data), plus the code's PDE-alive term 0.5.

Presets: every preset keeps the paper's models. tiny: 2 steps on 8 sequences (a slow smoke
test: FluidWorld at this size compiles for over a minute and takes ~14 s a step on 2 cores);
cpu: 20 steps; gpu: the paper's protocol, batch 16, 8,000 steps, AdamW 3e-4, wd 0.04, warmup
400; pod: the same with a batch of 128.
"""
import ml_collections

from substrax.configs import fluid_mmnist


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  c = fluid_mmnist.base(preset, "moving_mnist")
  c.data.update(size=64, channels=3)
  c.model.update(dim=128, patch=4, decoder_mid=64)
  c.model.fluid.update(num_layers=3, layer_steps=6, dilations=(1, 4, 16), belief_steps=3,
                       belief_dilations=(1, 4), content_gate=True, memory=True,
                       dead_params=True, dt_clip=(0.005, 0.15))
  c.model.transformer.update(num_heads=8, depth=2, temporal_depth=1, ffn=384)
  c.model.convlstm.update(enc_mid=88, enc_groups=8, hidden=64)
  c.loss.recon = "mse"
  if preset == "tiny":
    c.num_steps = 2
    c.checkpoint.every_steps = 2
  elif preset == "cpu":
    c.num_steps = 20
    c.optim.warmup_steps = 2
    c.log_every_steps = 1
    c.eval_every_steps = 10
    c.checkpoint.every_steps = 10
    c.eval.update(num_sequences=64, latent_sequences=64, held_out_windows=16)
  return c
