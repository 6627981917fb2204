"""The ways a run ends by design. Each is one line on stderr and an exit status (train/main.py);
any other exception is a bug and keeps its traceback.

  0    done
  1    NonFiniteLoss: the loss, gradient or parameters became NaN/Inf
  2    ConfigError: a bad config value, flag, file or directory (also substrax.data.DataError)
  74   StorageError: a checkpoint, metric or evaluation output could not be written, or a
       checkpoint could not be read for a reason outside its files (out of memory,
       permissions): the checkpoints are left as they are
  130  SIGINT, 143 SIGTERM (Stopped): in a training step, after saving it (the message names
       the step); before the first step or while evaluating, at once, nothing unsaved lost;
       a second SIGINT stops at once without saving
"""
import _thread
import errno
import os
import re
import threading

from substrax.data import one_line


class ConfigError(ValueError):
  """A bad config value or input, described in one line."""


class NonFiniteLoss(FloatingPointError):
  """A NaN/Inf loss, gradient norm or parameter norm; no checkpoint was written after the last
  finite step."""


class StorageError(Exception):
  """Writing to the run directory or the checkpoint directory failed (disk full, read-only,
  permissions). Earlier checkpoints are left as they were."""


class Stopped(KeyboardInterrupt):
  """SIGINT or SIGTERM ended the run; `exit_status` is 128 + the signal number. A
  KeyboardInterrupt, so that neither `except Exception` nor asyncio, which re-raises only
  KeyboardInterrupt and SystemExit out of its callbacks, swallows it."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_status = 128 + signum


_caught = threading.Event()


def stop(signum: int, message: str):
  """Raises Stopped from a signal handler. Python drops an exception raised while the main
  thread runs a GC callback or a __del__ (JAX has one), so the signal is delivered again half a
  second later, until `caught()` reports that a raise got through. The retry goes to whichever
  handler is installed by then: the training loop's, if the run got that far, saves first."""
  def retry():
    if not _caught.is_set():
      _thread.interrupt_main(signum)

  timer = threading.Timer(0.5, retry)
  timer.daemon = True
  timer.start()
  raise Stopped(message, signum)


def caught():
  """The program has caught a Stopped and is exiting: no more retries."""
  _caught.set()


# Errnos that mean the storage, not the program, is at fault.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO,
                  errno.EFBIG}


def reason(e: BaseException) -> str:
  """A short cause for a one-line message. Orbax and TensorStore wrap OS errors in long
  messages that end in `[os_error_code='28']`; that becomes 'No space left on device'."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  code = re.search(r"os_error_code='(\d+)'", str(e))
  return os.strerror(int(code.group(1))) if code else one_line(e)
