"""Length extrapolation of every positional scheme on the HMM language model (configs/lm_hmm.py).

  python benchmarks/length_extrapolation.py                       # L=32, 7 schemes, ~5-10 min
  python benchmarks/length_extrapolation.py --length=64 --steps=2000 --width=128 --depth=4 \
      --out=/tmp/lx64

Trains configs/lm_hmm.py once per `model.positions` scheme (one seed) at length L and evaluates
the held-out loss at L, 2L and 4L beside the HMM's Bayes floor at each length. Each run is one
substrax-train subprocess (benchmarks/study.py) with the cpu preset and these overrides:

  data.length=L  model.max_len=4L  eval.lengths=(L,2L,4L)  model.positions=<scheme>
  model.width/depth/num_heads, num_steps, batch_size (flags below), eval and checkpoint at the end

model.max_len=4L only gives the table schemes entries to read at 4L; training never sees a
position past L, so those entries are untrained:
  learned     rows L..4L-1 of the table stay at their N(0, 0.02^2) initialisation
  sinusoidal  fixed, defined everywhere, but rows past L were never seen in training
  rpe, urpe   T5 buckets of distances >= L are shared with shorter ones or untrained (zero
              bias); the script prints which buckets training reaches. URPE's Toeplitz
              multipliers c(j - i) for |j - i| >= L stay at their initial 1
  rope        no parameters; rotation angles past L were never seen
  alibi       no parameters; the linear distance penalty applies at any length
  none        no parameters (causal attention: order only through the mask)

Excess is the repo's eval/lm.json figure, loss / floor - 1 (so 0 is the Bayes floor); the floor
itself falls with length because a longer context pins down the hidden state better. The table
also gives loss - floor in nats. Runs land in OUT/runs/<scheme>; a finished run is skipped and a
killed one resumes, so rerunning the command completes the study (use a new --out when changing
sizes). Writes OUT/length_extrapolation.json and prints markdown tables with the machine.
"""
import json
import os
import platform
import time

from absl import app, flags
from matplotlib.figure import Figure

import study
from substrax.models import positions

flags.DEFINE_integer("length", 32, "Training length L; evaluation at L, 2L, 4L.")
flags.DEFINE_list("schemes", list(positions.SCHEMES), "model.positions values to train.")
flags.DEFINE_integer("steps", 2000, "Training steps per run.")
flags.DEFINE_integer("batch", 32, "Sequences per step.")
flags.DEFINE_integer("width", 64, "model.width.")
flags.DEFINE_integer("depth", 2, "model.depth.")
flags.DEFINE_integer("heads", 4, "model.num_heads.")
flags.DEFINE_integer("eval_sequences", 512, "eval.num_sequences at each length.")
flags.DEFINE_integer("seed", 0, "Training seed (the HMM and held-out data are fixed).")
flags.DEFINE_string("out", "/tmp/substrax-length-extrapolation", "Runs and the table JSON.")
FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "lm_hmm.py")


def overrides(scheme: str) -> dict:
  n = FLAGS.length
  return {"data.length": n, "model.max_len": 4 * n, "eval.lengths": f"({n},{2 * n},{4 * n})",
          "model.positions": scheme, "model.width": FLAGS.width, "model.depth": FLAGS.depth,
          "model.num_heads": FLAGS.heads, "num_steps": FLAGS.steps, "batch_size": FLAGS.batch,
          "optim.warmup_steps": min(100, FLAGS.steps // 10), "log_every_steps":
          max(1, FLAGS.steps // 4), "eval_every_steps": FLAGS.steps,
          "checkpoint.every_steps": FLAGS.steps, "eval.num_sequences": FLAGS.eval_sequences,
          "seed": FLAGS.seed}


def rpe_reach(n: int) -> str:
  """Which causal T5 buckets distances < n use, and which distances < 4n add."""
  import numpy as np
  buckets = np.asarray(positions.rpe_buckets(4 * n, causal=True))[-1, ::-1]  # by distance
  trained = sorted(set(buckets[:n].tolist()))
  new = sorted(set(buckets[n:].tolist()) - set(trained))
  return (f"rpe/urpe buckets: distances < {n} use {trained[0]}..{trained[-1]}; distances "
          f"{n}..{4 * n - 1} add {new if new else 'none'} (untrained, zero bias)")


def machine() -> dict:
  return {"platform": platform.platform(), "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}


def main(argv):
  del argv
  n = FLAGS.length
  lengths = (n, 2 * n, 4 * n)
  result = {"machine": machine(), "config": "configs/lm_hmm.py:cpu",
            "overrides": {s: overrides(s) for s in FLAGS.schemes}, "runs": {}}
  m = result["machine"]
  print(f"machine: {m['cpu_count']} CPUs, load {m['load_avg_1m']:.1f}, {m['platform']}")
  print(rpe_reach(n), flush=True)
  start = time.perf_counter()
  for scheme in FLAGS.schemes:
    workdir = os.path.join(FLAGS.out, "runs", scheme)
    eval_json = os.path.join(workdir, "eval", "lm.json")
    label = f"{scheme:<10}"
    if study.finished(eval_json, FLAGS.steps):
      print(f"{label}: done already")
    elif not study.train(label, CONFIG, workdir, overrides(scheme), "cpu"):
      result["runs"][scheme] = {"failed": True}
      continue
    with open(eval_json) as f:
      r = json.load(f)
    result["runs"][scheme] = {"wall_s": study.read_wall(workdir), "step": r["step"],
                              "lengths": r["lengths"], "unigram_nats": r["unigram_nats"]}
  result["wall_s"] = time.perf_counter() - start
  result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
  table(result, lengths)
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "length_extrapolation.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(FLAGS.out, "length_extrapolation.png"))
  print(f"\nstudy wall {result['wall_s'] / 60:.1f} min; wrote "
        f"{FLAGS.out}/length_extrapolation.{{json,png}}")


def plot(result: dict, path: str):
  """Held-out loss against the evaluation length, one line per scheme, with the floor."""
  t = result["table"]
  fig = Figure(figsize=(6.4, 4.2), dpi=120)
  ax = fig.subplots()
  for s, losses in t["loss_nats"].items():
    ax.plot(t["lengths"], losses, "o-", label=s)
  ax.plot(t["lengths"], [t["floor_nats"][str(n)] for n in t["lengths"]], "k--",
          label="Bayes floor")
  unigram = next(iter(result["runs"].values())).get("unigram_nats")
  if unigram:
    ax.axhline(unigram, color="grey", ls=":", label="unigram")
  ax.set(xlabel="evaluation length (trained at the first)",
         ylabel="held-out nats per token", title="HMM language model: length extrapolation")
  ax.set_xticks(t["lengths"], [str(n) for n in t["lengths"]])
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)


def table(result: dict, lengths):
  done = {s: r for s, r in result["runs"].items() if not r.get("failed")}
  at = lambda r, n: next(x for x in r["lengths"] if x["length"] == n)
  rows = {}
  for s, r in done.items():
    rows[s] = [at(r, n) for n in lengths]
  floors = {}
  for n in lengths:
    values = {round(at(r, n)["floor_nats"], 6) for r in done.values()}
    floors[n] = sorted(values)
  result["table"] = {
      "lengths": list(lengths),
      "floor_nats": {str(n): floors[n][0] for n in lengths if floors[n]},
      "excess_over_floor": {s: [x["excess_over_floor"] for x in v] for s, v in rows.items()},
      "loss_minus_floor_nats": {s: [x["loss_nats"] - x["floor_nats"] for x in v]
                                for s, v in rows.items()},
      "loss_nats": {s: [x["loss_nats"] for x in v] for s, v in rows.items()},
      "failed": [s for s, r in result["runs"].items() if r.get("failed")]}
  o = result["overrides"][next(iter(result["overrides"]))]
  print(f"\n## Excess held-out loss over the Bayes floor, trained at L={lengths[0]} "
        f"(width {o['model.width']}, depth {o['model.depth']}, {o['model.num_heads']} heads, "
        f"{o['num_steps']} steps x {o['batch_size']}, {o['eval.num_sequences']} held-out "
        f"sequences per length)\n")
  head = " | ".join(f"excess @{n}" for n in lengths)
  nats = " | ".join(f"loss - floor @{n} (nats)" for n in lengths)
  print(f"| positions | {head} | {nats} | run wall |")
  print("|---|" + "---|" * (2 * len(lengths) + 1))
  for s, v in rows.items():
    wall = done[s]["wall_s"]
    wall = f"{wall:.0f} s" if wall else ""
    print(f"| {s} | " + " | ".join(f"{x['excess_over_floor']:+.2%}" for x in v) + " | "
          + " | ".join(f"{x['loss_nats'] - x['floor_nats']:+.4f}" for x in v) + f" | {wall} |")
  for s in result["table"]["failed"]:
    print(f"| {s} | FAILED |")
  print("| Bayes floor (nats) | " + " | ".join(
      "/".join(f"{f:.4f}" for f in floors[n]) for n in lengths) + " | | | | |")
  if done:
    print(f"| unigram (nats) | {next(iter(done.values()))['unigram_nats']:.4f} | | | | | | |")


if __name__ == "__main__":
  app.run(main)
