"""Text hidden in a small LM's weights: does Unconditional Token Forcing find it, and does the
confusion defence stop it? (Hoscilowicz et al., arXiv 2406.02481; docs/hidden-text.md.)

  python benchmarks/hidden_text.py                       # cpu preset, 20 secrets, minutes
  python benchmarks/hidden_text.py --preset=tiny         # 4 secrets, under a minute

Pretrains one character-level LM on a synthetic Zipf language, hides each secret in its own
fine-tune of it (all at once under jax.vmap), once without and once with the confusion defence,
then attacks every fine-tune with UTF and look-ahead UTF. Prints markdown tables (rates with
exact 95% intervals, base-task loss, the pass criteria, the machine and wall time) and writes
OUT/hidden_text.json with every secret's recalled text and top-ranked attack outputs.
"""
import argparse
import os

from substrax.train.analysis import hidden_text, reporting


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(hidden_text.PRESETS), default="cpu")
  parser.add_argument("--out", default="runs/hidden_text")
  args = parser.parse_args()
  result = hidden_text.run_study(args.preset, log=lambda line: print(line, flush=True))
  print(hidden_text.format_report(result))
  path = os.path.join(args.out, "hidden_text.json")
  reporting.write_json(path, result)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
