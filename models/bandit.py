"""The in-context decision maker: a causal transformer over an episode, one token per step.

Token t holds the action set (the arms' features, flattened), the action taken at step t - 1
(its features and its one-hot index) and its reward, a flag that is 1 from t = 1 on, and in an
MDP the state at t (darkroom's actions are "arms" with one-hot features). The logits read at
token t are the policy for step t given the history before it, so one forward pass scores every
step of an episode (Lin, Bai & Mei 2024 interleave an action-set token and an (action, reward)
token; one token per step carries the same information at half the length).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from substrax.models.sharding import param_init
from substrax.models.transformer import BlockConfig, Transformer, residual_width


def encode(arms, actions, rewards, observations=None):
  """arms [B, A, f], actions int [B, H], rewards [B, H], observations [B, H, o] (an MDP's state
  at each step, or None) -> tokens [B, H, A f + f + A + 2 (+ o)]."""
  b, horizon = actions.shape
  num_arms = arms.shape[1]
  shift = lambda x: jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], 1)
  prev = shift(jax.nn.one_hot(actions, num_arms))
  prev_features = shift(jnp.take_along_axis(arms, actions[..., None], 1))   # [B, H, f]
  prev_reward = shift(rewards)[..., None]
  started = jnp.broadcast_to(jnp.arange(horizon)[:, None] > 0, (b, horizon, 1))
  action_set = jnp.broadcast_to(arms.reshape(b, 1, -1), (b, horizon, arms[0].size))
  extra = [] if observations is None else [observations]
  return jnp.concatenate([action_set, prev_features, prev, prev_reward,
                          started.astype(jnp.float32), *extra], -1)


class BanditTransformer(nn.Module):
  """Any number of actions: the head scores each row of `arms`."""
  width: int
  depth: int
  horizon: int
  block: BlockConfig

  @nn.compact
  def __call__(self, arms, actions, rewards, observations=None):
    """-> logits [B, H, num_arms] in float32; entry t depends on the actions and rewards before
    t and the observations up to t only."""
    tokens = encode(arms, actions, rewards, observations).astype(self.block.dtype)
    stream = residual_width(self.width, self.block.norm)
    x = nn.Dense(stream, dtype=self.block.dtype, name="read_in",
                 kernel_init=param_init(nn.initializers.lecun_normal(), None, "embed"),
                 bias_init=param_init(nn.initializers.zeros, "embed"))(tokens)
    h = Transformer(self.width, self.depth, self.horizon, self.block, causal=True,
                    name="backbone")(x)
    # The head scores every arm with one shared MLP of (h_t, the arm's features), so what it
    # learns about one arm holds for all: logit_a = w . gelu(U h_t + W x_a + c) + b.
    hidden = 2 * self.width
    per_step = nn.Dense(hidden, name="head_state",
                        kernel_init=param_init(nn.initializers.lecun_normal(), "embed", "mlp"),
                        bias_init=param_init(nn.initializers.zeros, "mlp"))(h)
    per_arm = nn.Dense(hidden, use_bias=False, name="head_arm",
                       kernel_init=param_init(nn.initializers.lecun_normal(), None, "mlp"))(arms)
    u = nn.gelu(per_step[:, :, None, :] + per_arm[:, None, :, :])       # [B, H, A, hidden]
    return nn.Dense(1, name="head_out",
                    kernel_init=param_init(nn.initializers.normal(0.02), "mlp", None),
                    bias_init=param_init(nn.initializers.zeros, None))(u)[..., 0].astype(
                        jnp.float32)
