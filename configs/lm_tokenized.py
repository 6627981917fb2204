"""Language modelling on tokens of a switching Markov source, every loss per character.

  substrax-train --config=configs/lm_tokenized.py:cpu --workdir=runs/lm_bpe
  substrax-train --config=configs/lm_tokenized.py:cpu --workdir=runs/lm_char \\
      --config.data.tokenizer=char

Binary characters; x_n depends only on x_{n-4} (p = q = 0.8: the character unigram loss is
1 bit, the entropy rate 0.722). The source is cut into blocks of data.length characters, and
each block is a document [EOS] tokens [EOS] under a char, LZW or BPE dictionary of
data.dictionary entries fit on the training blocks (data/tokenization.py). Losses are nats per
character, the closing EOS included; eval/lm.json puts them beside the block's Bayes loss (the
first `order` characters of a block have no context) and the unigram loss.

Presets: tiny (tests), cpu (a 2-layer model in about a minute on 2 cores), gpu/pod (longer
blocks, a larger model).
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.lm_base(preset)
  c.data = ml_collections.ConfigDict(dict(
      source="markov",
      order=4, p=0.8, q=0.8,
      tokenizer="bpe",       # char, lzw or bpe
      dictionary=256,        # entries of an lzw or bpe dictionary (char uses the 2 symbols)
      length=128,            # characters per block
      contexts=8192,         # training blocks, drawn once (eval.seed + 1)
  ))
  c.model.max_len = 129      # positions of the longest document: a char block and its EOS
  c.eval.lengths = (128,)
  if preset == "tiny":
    c.data.update(length=16, contexts=256, dictionary=16)
    c.model.max_len = 17
    c.eval.lengths = (16,)
  elif preset == "cpu":
    c.model.update(width=64, depth=2, num_heads=4)
    c.batch_size = 32
    c.num_steps = 3000
    c.log_every_steps = 100
    c.eval_every_steps = 250
    c.checkpoint.every_steps = 1000
  else:
    c.data.update(order=8, length=512, contexts=65_536, dictionary=1024)
    c.model.max_len = 513
    c.eval.lengths = (512,)
  return c
