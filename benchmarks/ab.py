"""A/B train-step speed of two revisions: benchmarks/train_step.py, runs interleaved, one venv.

  python benchmarks/ab.py HEAD~1 HEAD [--runs=3] [-- --steps=100 --config.batch_size=64]
  python benchmarks/ab.py HEAD WORKTREE      # this checkout's uncommitted change against HEAD

A REV is any git revision, or WORKTREE: a copy of this checkout's working tree as it is now
(tracked and untracked, not ignored, files). Each gets a checkout under /tmp (`git worktree add
--detach`), and each run is that checkout's own benchmarks/train_step.py started in it, with
the checkout imported as `substrax`: a directory holding only the link substrax -> checkout goes
first on PYTHONPATH, ahead of this venv's editable install of the main checkout (setup.py maps
substrax.<folder> to <folder>, so the link maps the same packages). The child checks where
substrax.train came from before it runs the script, and reports the config the script parsed;
two revisions whose batch size, width, depth or heads differ are refused, so a changed preset
cannot pass for a speedup. Arguments after `--` go to both. The runs go A B A B ...; printed:
each run's median ms/step, each revision's median, and A/B with the min-max of the ratios of
the runs taken side by side. The checkouts are removed at the end, also after an error or Ctrl-C.
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

from absl import flags

import study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join("benchmarks", "train_step.py")
SHAPE = ("batch_size", "width", "depth", "num_heads")

flags.DEFINE_integer("runs", 3, "Runs of each revision (at least 3), alternating.")
FLAGS = flags.FLAGS

# Runs in the child, before the revision's train_step.py: checks the import, then wraps
# absl's app.run so that the config the script parsed is printed before it times anything.
CHILD = r"""
import json, os, runpy, sys
root, script, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
import substrax.train.trainer
where = os.path.realpath(substrax.train.trainer.__file__)
if not where.startswith(os.path.realpath(root) + os.sep):
  sys.exit(f"substrax.train was imported from {where}, not from the checkout {root}")
from absl import app, flags
run = app.run

def run_after_shape(main, *args, **kwargs):
  def shaped(argv):
    c = flags.FLAGS.config
    shape = {"batch_size": c.batch_size, **{k: c.model.get(k) for k in %r}}
    print("ab-child " + json.dumps({"substrax_train": where, "shape": shape}), flush=True)
    return main(argv)
  return run(shaped, *args, **kwargs)

app.run = run_after_shape
sys.argv = [script, *extra]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
""" % (SHAPE[1:],)


def git(*args) -> subprocess.CompletedProcess:
  return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def resolve(rev: str) -> str:
  """The commit hash of `rev`, or WORKTREE."""
  if rev == "WORKTREE":
    return rev
  proc = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
  if proc.returncode != 0:
    study.stop(f"unknown rev {rev!r} (not a commit of {REPO})", 2)
  return proc.stdout.strip()


class Checkouts:
  """One checkout per commit under a temporary directory; all removed on exit."""

  def __enter__(self):
    self.base = tempfile.mkdtemp(prefix="ab-", dir="/tmp")
    self.worktrees = []
    return self

  def add(self, commit: str) -> tuple[str, str]:
    """(checkout, the directory to put first on PYTHONPATH) of a commit or WORKTREE."""
    name = commit if commit == "WORKTREE" else commit[:12]
    tree, link_dir = (os.path.join(self.base, name, d) for d in ("tree", "path"))
    if commit == "WORKTREE":
      files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
      for path in filter(None, files.split("\0")):
        source = os.path.join(REPO, path)
        if os.path.lexists(source):   # a tracked file deleted in the tree is left out
          os.makedirs(os.path.dirname(os.path.join(tree, path)), exist_ok=True)
          shutil.copy2(source, os.path.join(tree, path), follow_symlinks=False)
    else:
      proc = git("worktree", "add", "--detach", tree, commit)
      if proc.returncode != 0:
        study.stop(f"git worktree add {tree} {commit[:12]} failed: "
                   f"{proc.stderr.strip().splitlines()[-1]}", 1)
      self.worktrees.append(tree)
    if not os.path.exists(os.path.join(tree, SCRIPT)):
      study.stop(f"{name} has no {SCRIPT}", 2)
    os.makedirs(link_dir)
    os.symlink(tree, os.path.join(link_dir, "substrax"))
    return tree, link_dir

  def __exit__(self, *exc):
    for tree in self.worktrees:
      proc = git("worktree", "remove", "--force", tree)
      if proc.returncode != 0:
        print(f"ab.py: warning: git worktree remove {tree}: {proc.stderr.strip()}",
              file=sys.stderr)
    shutil.rmtree(self.base, ignore_errors=True)


def time_once(label: str, tree: str, link_dir: str, extra: list[str]) -> dict:
  """One run of the checkout's train_step.py: its JSON result plus what the child reported."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [link_dir, os.environ.get("PYTHONPATH")])))
  proc = subprocess.run([sys.executable, "-c", CHILD, tree, os.path.join(tree, SCRIPT), *extra],
                        cwd=tree, env=env, capture_output=True, text=True)
  lines = proc.stdout.splitlines()
  child = next((json.loads(x[len("ab-child "):]) for x in lines if x.startswith("ab-child ")),
               None)
  result = next((json.loads(x) for x in reversed(lines) if x.startswith("{")), None)
  if proc.returncode != 0 or child is None or result is None:
    last = [x.strip() for x in proc.stderr.splitlines() if x.strip()]
    study.stop(f"{label}: {SCRIPT} failed (exit {proc.returncode}): "
               f"{last[-1] if last else 'no output'}", 1)
  return result | child


def describe(shape: dict) -> str:
  return ", ".join(f"{k} {v}" for k, v in shape.items())


def main(argv, extra):
  if len(argv) != 3:
    study.stop("give two revisions, e.g. ab.py HEAD~1 HEAD [--runs=3] [-- TRAIN_STEP_ARGS]", 2)
  if FLAGS.runs < 3:
    study.stop(f"--runs: at least 3 runs of each revision, got {FLAGS.runs}", 2)
  revs = {"A": argv[1], "B": argv[2]}
  commits = {side: resolve(rev) for side, rev in revs.items()}
  names = {side: rev if commits[side] == "WORKTREE" else f"{rev} ({commits[side][:10]})"
           for side, rev in revs.items()}
  with Checkouts() as checkouts:
    trees = {}
    for commit in dict.fromkeys(commits.values()):
      trees[commit] = checkouts.add(commit)
    runs = {"A": [], "B": []}
    for i in range(FLAGS.runs):
      for side in ("A", "B"):
        r = time_once(f"{side} run {i + 1}", *trees[commits[side]], extra)
        runs[side].append(r)
        print(f"run {i + 1} {side} {names[side]}: {r['ms_per_step_median']:.2f} ms/step",
              flush=True)
      if i == 0:
        shape = {side: runs[side][0]["shape"] for side in runs}
        if shape["A"] != shape["B"]:
          study.stop(f"A and B time different shapes (A: {describe(shape['A'])}; B: "
                     f"{describe(shape['B'])}); pass the same overrides to both after --", 2)
        print(f"both: {describe(shape['A'])}; substrax.train from "
              f"{', '.join(os.path.dirname(runs[s][0]['substrax_train']) for s in runs)}; "
              f"device {runs['A'][0]['device']}; XLA GFLOP/step A "
              f"{runs['A'][0]['flops_per_step_xla'] / 1e9:.3f}, B "
              f"{runs['B'][0]['flops_per_step_xla'] / 1e9:.3f}", flush=True)
  ms = {side: [r["ms_per_step_median"] for r in rs] for side, rs in runs.items()}
  median = {side: statistics.median(v) for side, v in ms.items()}
  for side in ("A", "B"):
    print(f"{side} = {names[side]}: median {median[side]:.2f} ms/step over {FLAGS.runs} runs "
          f"(min {min(ms[side]):.2f}, max {max(ms[side]):.2f})")
  ratio = median["A"] / median["B"]
  paired = [a / b for a, b in zip(ms["A"], ms["B"])]   # runs side by side share the host's load
  low, high = min(paired), max(paired)
  verdict = ("B is faster" if low > 1 else "A is faster" if high < 1 else
             "no clear difference: the interval holds 1")
  print(f"A/B = {ratio:.3f} (paired runs: min {low:.3f}, max {high:.3f}): {verdict}")


if __name__ == "__main__":
  # Everything after `--` goes to train_step.py unparsed.
  cut = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
  sys.argv, extra_args = sys.argv[:cut], sys.argv[cut + 1:]
  signal.signal(signal.SIGTERM, lambda *_: study.stop(   # exits through the clean-up
      "terminated (SIGTERM); the checkouts under /tmp are removed", 143))
  study.run(lambda argv: main(argv, extra_args),
            lambda: "the runs so far are printed above; the checkouts under /tmp were removed")
