"""In-context RL in darkroom, a tabular MDP (data/darkroom.py), with the bandit task's learner.

  substrax-train --config=configs/darkroom.py:cpu --workdir=runs/darkroom_ad
  substrax-train --config=configs/darkroom.py:gpu --config.data.objective=dpt --workdir=runs/dr

The goal of a size x size grid is hidden; AD imitates the `sweep` expert (search the grid row by
row, stay once rewarded), DPT learns the shortest-path move from the history. The evaluation
lets the model act in new grids beside the optimal, sweep and uniform policies.

Presets: tiny (tests), cpu (5 x 5, 30 steps), gpu (Lee et al.'s 10 x 10 grid and 100 steps,
100,000 episodes, 8 layers).
"""
import ml_collections

from substrax.configs import bandit


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  c = bandit.get_config(preset)
  c.data.update(env="darkroom", expert="sweep", size=5, horizon=30)
  if preset == "tiny":
    c.data.update(size=3, horizon=10)
  elif preset in ("gpu", "pod"):
    c.data.update(size=10, horizon=100)
  return c
