"""Keeping pyoomd itself alive when the host runs out of memory: the only moment it matters.

- oom_score_adj -1000: the kernel's OOM killer never picks it (needs CAP_SYS_RESOURCE to lower; without it the
  value stays, and we say so).
- mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT): its pages are never reclaimed, so it does not stall on
  page-ins of its own code while the host thrashes. Needs CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK; checked
  first, and a loud warning when memory cannot be locked. Called by every process on the detection and kill path
  (a lock is not inherited across exec).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
from pathlib import Path

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
CAP_IPC_LOCK = 14


def _has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def lower_oom_score(log: logging.Logger) -> bool:
    try:
        Path("/proc/self/oom_score_adj").write_text("-1000")
        return True
    except OSError as e:
        log.warning("cannot set oom_score_adj to -1000 (%s): the kernel's OOM killer may pick pyoomd; run it with "
                    "CAP_SYS_RESOURCE, or OOMScoreAdjust=-1000 in its unit", e.strerror)
        return False


def lock_memory(log: logging.Logger) -> bool:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if not _has_capability(CAP_IPC_LOCK) and soft != resource.RLIM_INFINITY:
        log.warning("cannot lock pyoomd's memory (no CAP_IPC_LOCK, RLIMIT_MEMLOCK %d KiB): under memory pressure it "
                    "may stall paging its own code back in; give it CAP_IPC_LOCK or LimitMEMLOCK=infinity",
                    soft // 1024)
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        err = ctypes.get_errno()
        log.warning("mlockall failed (%s): pyoomd's memory is not locked", os.strerror(err))
        return False
    return True


def protect_self(log: logging.Logger, oom_score: bool = True) -> None:
    if oom_score:
        lower_oom_score(log)
    lock_memory(log)
