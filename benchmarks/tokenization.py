"""Tokenization on switching Markov sources: how close does a unigram model over tokens get to
the entropy rate, as the dictionary grows?

  python benchmarks/tokenization.py                        # k in {2, 4}, p = q in {0.8, 0.9}
  python benchmarks/tokenization.py --orders=4 --probs=0.8 --sizes=2,64,1024

Part A (token-unigram models): for each k-th-order switching chain x_n | x_{n-k} (p = q, so the
symbol marginal is uniform and a character unigram costs h(pi) = 1 bit), it samples training
and held-out blocks under different seeds, fits LZW and BPE dictionaries (data/tokenization.py)
of each size on the training characters concatenated, and measures the end-to-end loss of an
add-one-smoothed token-unigram model in bits per character, end-of-block token included
(tokenization.unigram_bits_per_char). A character unigram cannot go below h(pi) whatever its
data; the question is how much of the gap to the entropy rate H_inf the dictionary closes.

Part B (transformers): the same 2-layer model trained on characters and on LZW and BPE tokens
of one source (configs/lm_tokenized.py:cpu: k = 4, p = q = 0.8, blocks of 128 characters, each
a document closed by EOS), seeds trained together under one jax.vmap per tokenizer
(study.train_together). It reports held-out bits per character against the step, and for each
seed whether and when the loss leaves the unigram plateau: the first evaluation at which it has
closed PLATEAU_EXIT of the gap between the character unigram h(pi) and the block's Bayes loss.

It prints the tables, how close LZW and BPE at the largest size get to H_inf, and the wall
times, and writes ROOT/tokenization.json, ROOT/unigram.png (one panel per source) and
ROOT/transformers.png (the loss curves); each transformer seed's eval/lm.json is in
ROOT/lm/<tokenizer>/seed<K>.
"""
import contextlib
import io
import json
import math
import os
import platform
import time

import jax
import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

import study
from substrax.configs import lm_tokenized
from substrax.data import lm, tokenization
from substrax.train import trainer
from substrax.train.errors import ConfigError
from substrax.train.tasks import lm as lm_task

flags.DEFINE_list("orders", ["2", "4"], "Orders k of the switching sources.")
flags.DEFINE_list("probs", ["0.8", "0.9"], "Switching probabilities, p = q.")
flags.DEFINE_list("sizes", [str(2 ** i) for i in range(1, 11)], "Dictionary sizes.")
flags.DEFINE_list("kinds", ["lzw", "bpe"], "Part A: dictionary kinds (lzw, bpe).")
flags.DEFINE_integer("train_blocks", 100, "Training blocks (documents).")
flags.DEFINE_integer("test_blocks", 20, "Held-out blocks.")
flags.DEFINE_integer("block", 10_000, "Characters per block.")
flags.DEFINE_integer("seed", 0, "Training blocks use this seed, held-out blocks seed + 1.")
flags.DEFINE_list("lm_kinds", ["char", "lzw", "bpe"],
                  "Part B: tokenizers the transformer trains on (empty: skip part B).")
flags.DEFINE_integer("lm_dictionary", 256, "Part B: LZW and BPE dictionary size.")
flags.DEFINE_list("lm_seeds", ["0", "1", "2"], "Part B: training seeds.")
flags.DEFINE_string("lm_preset", "cpu", "Part B: preset of configs/lm_tokenized.py.")
flags.DEFINE_integer("lm_eval_every", 50, "Part B: steps between held-out evaluations (the "
                     "resolution of the plateau exit).")
flags.DEFINE_string("root", "runs/tokenization", "Where the JSON and the plots go.")
FLAGS = flags.FLAGS


def bits(nats: float) -> float:
  return nats / math.log(2)


def source_name(s: dict) -> str:
  return f"k={s['order']}, p=q={s['p']:g}"


# ------------------------------------------------------------------- part A: token unigrams

def unigram_study(orders, probs, sizes, kinds, train_blocks: int, test_blocks: int,
                  block: int, seed: int) -> dict:
  """Token-unigram bits per character for each source, kind and size, with the references
  (character unigram h(pi), entropy rate H_inf, in bits) and each cell's fit and measure time."""
  sources = []
  for order in orders:
    for p in probs:
      train = lm.markov_heldout(seed, train_blocks, block, order, p, p)
      test = lm.markov_heldout(seed + 1, test_blocks, block, order, p, p)
      entry = dict(order=order, p=p, q=p,
                   unigram_bits=bits(lm.binary_entropy(lm.markov_stationary(p, p))),
                   entropy_rate_bits=bits(lm.markov_entropy_rate(p, p)))
      for kind in kinds:
        cells = {}
        for size in sizes:
          start = time.perf_counter()
          tok = tokenization.fit(kind, train.ravel(), size, 2)
          fit_s = time.perf_counter() - start
          cell = tokenization.unigram_bits_per_char(tok, train, test)
          cells[str(size)] = dict(cell, fit_s=fit_s, measure_s=time.perf_counter() - start - fit_s)
        entry[kind] = cells
        fit = sum(c["fit_s"] for c in cells.values())
        measure = sum(c["measure_s"] for c in cells.values())
        print(f"{source_name(entry)} {kind}: fit {fit:.1f} s, encode and score {measure:.1f} s "
              f"over {len(sizes)} sizes", flush=True)
      sources.append(entry)
  return dict(sizes=list(sizes), kinds=list(kinds), train_chars=train_blocks * block,
              test_chars=test_blocks * block, block=block, seed=seed, sources=sources)


def unigram_table(result: dict) -> str:
  """Rows: sources; cells: bits per character of each kind at each size ("LZW / BPE")."""
  kinds, sizes = result["kinds"], result["sizes"]
  head = "| source | h(pi) | H_inf | " + " | ".join(str(s) for s in sizes) + " |"
  lines = [f"Token-unigram bits per character ({' / '.join(k.upper() for k in kinds)}) by "
           f"dictionary size; {result['train_chars']:,} training and {result['test_chars']:,} "
           f"held-out characters in blocks of {result['block']:,}.", "",
           head, "|" + "---|" * (3 + len(sizes))]
  for s in result["sources"]:
    cells = [" / ".join(f"{s[k][str(size)]['bits_per_char']:.3f}" for k in kinds)
             for size in sizes]
    lines.append(f"| {source_name(s)} | {s['unigram_bits']:.3f} | {s['entropy_rate_bits']:.4f} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def closeness(result: dict) -> str:
  """How near each kind's largest dictionary gets to the entropy rate."""
  size = str(max(result["sizes"]))
  lines = []
  for s in result["sources"]:
    rate = s["entropy_rate_bits"]
    parts = []
    for kind in result["kinds"]:
      cell = s[kind][size]
      b = cell["bits_per_char"]
      parts.append(f"{kind.upper()} {b:.4f} = {b / rate:.3f} x H_inf (+{b - rate:.4f} bits; "
                   f"EOS {cell['eos_bits_per_char']:.4f}, {cell['chars_per_token']:.1f} chars/token)")
    lines.append(f"{source_name(s)}, size {size}: " + "; ".join(parts))
  return "\n".join(lines)


def plot_unigram(path: str, result: dict):
  sources = result["sources"]
  fig = Figure(figsize=(3.2 * len(sources), 2.8), dpi=110)
  axes = fig.subplots(1, len(sources), squeeze=False, sharey=True)[0]
  sizes = result["sizes"]
  for ax, s in zip(axes, sources):
    for kind in result["kinds"]:
      ax.plot(sizes, [s[kind][str(n)]["bits_per_char"] for n in sizes], "o-", ms=3, lw=1.5,
              label=kind.upper())
    ax.axhline(s["unigram_bits"], color="grey", ls="--", lw=1, label="char unigram h(pi)")
    ax.axhline(s["entropy_rate_bits"], color="black", ls=":", lw=1, label="entropy rate")
    ax.set_xscale("log", base=2)
    ax.set_title(source_name(s), fontsize=9)
    ax.set_xlabel("dictionary size")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("bits per character")
  axes[0].legend(fontsize=7)
  fig.suptitle("Token-unigram loss on switching Markov sources", fontsize=10)
  fig.tight_layout()
  fig.savefig(path)


# ---------------------------------------------------------------- part B: transformers

# A seed has left the unigram plateau once its held-out loss has closed this share of the gap
# between the character unigram and the block's Bayes loss.
PLATEAU_EXIT = 0.1


def lm_config(kind: str, seed: int):
  c = lm_tokenized.get_config(FLAGS.lm_preset)
  c.update_from_flattened_dict({"data.tokenizer": kind, "data.dictionary": FLAGS.lm_dictionary,
                                "seed": seed})
  trainer.validate(c)
  return c


def transformer_study(kinds, seeds) -> dict:
  """Per tokenizer: each seed's held-out curve (bits per character), its final report and the
  step at which it left its tokenizer's unigram plateau (None if it never did)."""
  out = {}
  for kind in kinds:
    start = time.perf_counter()
    configs = [lm_config(kind, s) for s in seeds]
    config = configs[0]
    task, states, curve = study.train_together(configs, lm_task.build, FLAGS.lm_eval_every,
                                               kind, evaluate=True)
    cell = {"steps": curve["step"], "seeds": {}}
    for i, seed in enumerate(seeds):
      workdir = os.path.join(FLAGS.root, "lm", kind, f"seed{seed}")
      study.write_curve(workdir, curve, i)
      params = jax.tree.map(lambda x: x[i], states.params)
      with contextlib.redirect_stdout(io.StringIO()):   # the task's table
        report = task.evaluate(params, {}, workdir, config.num_steps)
      row = report["lengths"][0]
      bits_curve = [bits(float(v)) for v in curve["loss"][:, i]]
      # The plateau is what this tokenizer's token unigram reaches without context.
      plateau = bits(row["unigram_nats"] - PLATEAU_EXIT * (row["unigram_nats"]
                                                           - row["floor_nats"]))
      exit_step = next((s for s, b in zip(curve["step"], bits_curve) if b <= plateau), None)
      cell["seeds"][str(seed)] = {"curve_bits": bits_curve, "final_bits": row["loss_bits_per_char"],
                                  "tokens_per_char": row["tokens_per_char"],
                                  "token_unigram_bits": bits(row["unigram_nats"]),
                                  "plateau_bits": plateau, "left_plateau_at": exit_step}
    cell.update(dictionary=report["dictionary"], floor_bits=bits(row["floor_nats"]),
                char_unigram_bits=bits(report["char_unigram_nats"]),
                entropy_rate_bits=bits(report["entropy_rate_nats"]),
                block=config.data.length, steps_trained=config.num_steps,
                wall_s=time.perf_counter() - start)
    out[kind] = cell
    print(f"{kind}: {cell['wall_s'] / 60:.1f} min for {len(seeds)} seeds", flush=True)
  return out


def transformer_table(result: dict) -> str:
  first = next(iter(result.values()))
  lines = [f"Held-out bits per character (blocks of {first['block']} characters, EOS included); "
           f"character unigram {first['char_unigram_bits']:.3f}, block Bayes loss "
           f"{first['floor_bits']:.4f}, entropy rate {first['entropy_rate_bits']:.4f}. A seed "
           f"leaves its plateau when it has closed {PLATEAU_EXIT:.0%} of the gap between its "
           f"tokens' unigram loss and the Bayes loss.", "",
           "| tokens | dictionary | tokens per char | token unigram | plateau below | "
           "final bits/char, mean [min, max] | left the plateau at step |",
           "|---|---|---|---|---|---|---|"]
  for kind, cell in result.items():
    seeds = list(cell["seeds"].values())
    finals = np.array([s["final_bits"] for s in seeds])
    exits = ", ".join("never" if s["left_plateau_at"] is None else str(s["left_plateau_at"])
                      for s in seeds)
    mean = lambda key: np.mean([s[key] for s in seeds])
    lines.append(f"| {kind} | {cell['dictionary']} | {mean('tokens_per_char'):.3f} | "
                 f"{mean('token_unigram_bits'):.4f} | {mean('plateau_bits'):.4f} | "
                 f"{finals.mean():.4f} [{finals.min():.4f}, {finals.max():.4f}] | {exits} "
                 f"(of {cell['steps_trained']}) |")
  return "\n".join(lines)


def plot_transformers(path: str, result: dict):
  fig = Figure(figsize=(6.4, 4.2), dpi=120)
  ax = fig.subplots()
  for (kind, cell), color in zip(result.items(), ("C0", "C1", "C2", "C3")):
    for i, s in enumerate(cell["seeds"].values()):
      ax.plot(cell["steps"], s["curve_bits"], color=color, lw=1.2, alpha=0.8,
              label=f"{kind} ({cell['dictionary']})" if i == 0 else None)
    ax.axhline(np.mean([s["token_unigram_bits"] for s in cell["seeds"].values()]), color=color,
               ls="--", lw=0.8, alpha=0.7)
  first = next(iter(result.values()))
  ax.axhline(first["floor_bits"], color="black", ls=":", lw=1, label="block Bayes loss")
  ax.set(xlabel="step", ylabel="held-out bits per character",
         title="Characters against tokens (dashed: each one's token-unigram loss)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)


def main(argv):
  del argv
  try:   # a bad flag fails in one line before any work
    orders = [int(k) for k in FLAGS.orders]
    probs = [float(p) for p in FLAGS.probs]
    sizes = sorted(int(s) for s in FLAGS.sizes)
    lm_seeds = [int(s) for s in FLAGS.lm_seeds]
    for k in orders:
      for p in probs:
        lm.check_markov(k, p, p)
    bad = [k for k in FLAGS.kinds if k not in ("lzw", "bpe")]
    if bad or not sizes or min(sizes) < 2:
      raise ValueError(f"--kinds must be among lzw, bpe and --sizes at least 2 (binary "
                       f"sources), got {FLAGS.kinds} and {FLAGS.sizes}")
    if FLAGS.lm_eval_every < 1:
      raise ValueError(f"--lm_eval_every must be positive, got {FLAGS.lm_eval_every}")
    if FLAGS.lm_kinds and not lm_seeds:
      raise ValueError("--lm_seeds is empty while --lm_kinds asks for transformers")
    for kind in FLAGS.lm_kinds:
      lm_config(kind, 0)
  except (ConfigError, ValueError) as err:
    raise app.UsageError(str(err)) from None
  os.makedirs(FLAGS.root, exist_ok=True)
  start = time.perf_counter()
  unigram = unigram_study(orders, probs, sizes, FLAGS.kinds, FLAGS.train_blocks,
                          FLAGS.test_blocks, FLAGS.block, FLAGS.seed)
  unigram["wall_s"] = time.perf_counter() - start
  print(unigram_table(unigram))
  print(closeness(unigram))
  print(f"part A (token unigrams): {unigram['wall_s']:.1f} s")
  plot_unigram(os.path.join(FLAGS.root, "unigram.png"), unigram)
  report = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus", "unigram": unigram}
  if FLAGS.lm_kinds:
    tick = time.perf_counter()
    report["transformers"] = transformer_study(FLAGS.lm_kinds, lm_seeds)
    print(transformer_table(report["transformers"]))
    print(f"part B (transformers): {(time.perf_counter() - tick) / 60:.1f} min")
    plot_transformers(os.path.join(FLAGS.root, "transformers.png"), report["transformers"])
  report["wall_s"] = time.perf_counter() - start
  out = os.path.join(FLAGS.root, "tokenization.json")
  with open(out, "w") as f:
    json.dump(report, f, indent=1)
  print(f"this command {report['wall_s'] / 60:.1f} min; {out}; plots in {FLAGS.root}")


if __name__ == "__main__":
  study.run(main, lambda: "nothing is kept; rerun the command")
