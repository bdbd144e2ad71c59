"""One job per workdir: a lock file that names its holder.

`run_job` holds `<workdir>/.pavjax.lock` for the life of a job. The file is made
with O_CREAT|O_EXCL, so of two jobs started on one workdir exactly one gets it,
and it holds JSON `{pid, host, started, job}`. The other job stops at once with a
`ConfigError` naming the holder (`pavjax: bad config: ...`, exit code 2).

A lock whose holder is gone is broken with a warning: one written on this host by
a process that no longer exists, or by this very process id without this process
having taken it (a restarted container reuses small pids). A lock written on
another host is never broken here, since this host cannot tell whether that job
still runs; the message says which file to remove.

Only one lock per directory: the pipeline's stages run in-process on
sub-directories of the pipeline's workdir, each locking its own directory, and a
nested `hold` of a directory this process already holds only counts up. With
several processes (multi-host), process 0 takes the lock for all of them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
from typing import Iterator

LOCK_NAME = ".pavjax.lock"

# path -> (the holder record this process wrote, how many nested `hold`s use it)
_held: dict[str, tuple[dict, int]] = {}
_held_guard = threading.Lock()


def lock_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), LOCK_NAME)


def _read(path: str) -> dict | None:
  """The holder record, or None when the file is gone; {} when it cannot be parsed."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    return None
  try:
    record = json.loads(text)
  except ValueError:
    return {}
  return record if isinstance(record, dict) else {}


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  except OSError as e:
    return e.errno != errno.ESRCH
  return True


def _describe(record: dict) -> str:
  return (f"pid {record.get('pid')} on host {record.get('host')!r} since "
          f"{record.get('started')} (job {record.get('job')!r})")


def _is_stale(record: dict) -> bool:
  """True iff the holder is known to be gone (never for another host's lock)."""
  if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
    return False
  if record["pid"] == os.getpid():
    return True  # this process did not take it (that case is in `_held`): an earlier one did
  return not _pid_alive(record["pid"])


def acquire(workdir: str, job: str) -> None:
  """Takes the workdir's lock (creating the workdir), or raises ConfigError naming the holder."""
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top
  path = lock_path(workdir)
  with _held_guard:
    if path in _held:
      record, count = _held[path]
      _held[path] = (record, count + 1)
      return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "job": job}
    for _ in range(20):
      try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read(path)
        if holder is None:
          continue  # released between our open and our read: try again
        if not holder:
          time.sleep(0.05)  # another job is still writing its record
          holder = _read(path)
          if holder is None:
            continue
        if not holder:
          raise config_lib.ConfigError(
              "workdir", f"{os.path.dirname(path)} has an unreadable lock file {path}; if no "
              "job is running on this workdir, remove that file and start again") from None
        if not _is_stale(holder):
          where = ("" if holder.get("host") == socket.gethostname() else
                   "; if that job is no longer running there, remove the file and start "
                   "again")
          raise config_lib.ConfigError(
              "workdir", f"{os.path.dirname(path)} is in use by {_describe(holder)} "
              f"(lock file {path}){where}") from None
        # Break it only if it is still the record we judged stale.
        if _read(path) == holder:
          logging.warning("breaking the stale lock %s of %s, which no longer runs", path,
                          _describe(holder))
          with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        continue
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
      _held[path] = (record, 1)
      return
    raise config_lib.ConfigError("workdir", f"could not take the lock {path} (it keeps "
                                 "changing hands)")


def release(workdir: str) -> None:
  """Gives back one `acquire`; the file goes when the outermost one is given back."""
  path = lock_path(workdir)
  with _held_guard:
    if path not in _held:
      return
    record, count = _held[path]
    if count > 1:
      _held[path] = (record, count - 1)
      return
    del _held[path]
    if _read(path) == record:  # never remove a lock another job took after breaking ours
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _agree(ok: bool) -> bool:
  """Process 0's `ok` on every process (itself when there is one process)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return ok
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def hold(workdir: str, job: str, lead: bool = True) -> Iterator[None]:
  """The workdir's lock for the body's duration.

  Only the lead process (`lead`, process 0) takes it; with several processes the
  others learn whether it did, so all of them stop when the workdir is taken.
  """
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top
  taken = False
  try:
    if lead:
      acquire(workdir, job)
      taken = True
  finally:
    if not _agree(taken if lead else True) and not lead:
      raise config_lib.ConfigError(
          "workdir", f"{os.path.abspath(workdir)}: process 0 could not take the lock "
          f"{lock_path(workdir)} (its log names the holder)")
  try:
    yield
  finally:
    if taken:
      release(workdir)
