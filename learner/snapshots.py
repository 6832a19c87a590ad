"""The learner's side of weight snapshots: version numbers across restarts, and the fault
policy for a full disk.

What it does:
* `resume_version(root, checkpoint_version)`: the version a resumed learner publishes its
  checkpoint as. A learner killed after its checkpoint may have published later versions
  (v c+1 .. v k) that died with it; reusing those numbers for other weights would let one
  version name two different snapshots. So: the checkpoint's own version when nothing
  newer is on disk, else one above the highest version folder there (READY or not).
  Versions only go up, over any number of restarts.
* `SnapshotPublisher.publish`: `publish_snapshot`, with this fault policy for a full disk
  (ENOSPC, EDQUOT, EFBIG, as OSError or as safetensors' "os error 28"): log it with the numbers, delete every snapshot but the newest
  READY one (the one actors serve), retry once; if that fails too, keep serving the
  previous snapshot and return None (counted in `failures`, consecutive ones in
  `consecutive`, so the stall monitor can stop the run past `[monitor]
  publish_failures_stop`). Any other error propagates.

What it does not do: it writes no snapshot itself (protocol/weights.py does, atomically
with READY last) and handles no full disk for checkpoints or the ledger.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
from pathlib import Path

from protocol.weights import latest_snapshot, publish_snapshot

log = logging.getLogger("scca.snapshots")

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # errors the disk-full policy handles
# safetensors' Rust writer reports them as SafetensorError("... (os error 28)"), not OSError
_NO_SPACE_TEXT = re.compile(r"os error (%s)\b|No space left on device|Disk quota exceeded|File too large"
                            % "|".join(str(e) for e in sorted(NO_SPACE)))
_VERSION_RE = re.compile(r"^v(\d{6,})$")


def is_disk_full(exc: BaseException) -> bool:
    """True for a full disk, a quota or a file-size limit, whoever raised it."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        if _NO_SPACE_TEXT.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def version_folders(root: Path) -> list[tuple[int, Path]]:
    """(version, folder) of every `v{version}` folder under root, READY or not, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _VERSION_RE.match(p.name)) and p.is_dir())


def resume_version(root: Path, checkpoint_version: int) -> int:
    highest = max((v for v, _ in version_folders(root)), default=-1)
    return checkpoint_version if highest <= checkpoint_version else highest + 1


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def _free_bytes(root: Path) -> int:
    try:
        return shutil.disk_usage(root).free
    except OSError:
        return -1


class SnapshotPublisher:
    def __init__(self, keep: int):
        self.keep = keep
        self.failures = 0  # publishes that wrote nothing, all run long
        self.consecutive = 0  # ... in a row (reset by a good one)
        self.last_error = ""

    def publish(self, root: Path, version: int, model, tokenizer, dtype=None) -> dict | None:
        """`publish_snapshot` (tensors in `dtype`, None: as the model holds them) under the
        disk-full policy; None = not published this time."""
        try:
            info = publish_snapshot(root, version, model, tokenizer, keep=self.keep, dtype=dtype)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.error("snapshot v%d not written: %s (%d bytes free under %s); deleting all snapshots but the "
                      "newest and trying again", version, _short(exc), _free_bytes(root), root)
            self.prune_to_newest(root)
            try:
                info = publish_snapshot(root, version, model, tokenizer, keep=1, dtype=dtype)
            except Exception as exc2:
                if not is_disk_full(exc2):
                    raise
                self.failures += 1
                self.consecutive += 1
                self.last_error = f"{_short(exc2)} writing v{version} under {root}"
                newest = latest_snapshot(root)
                log.error("snapshot v%d not written again (%s): %s keeps serving (%d failures in a row)",
                          version, _short(exc2), newest.name if newest else "no snapshot", self.consecutive)
                return None
            log.warning("snapshot v%d written after freeing space (only it is kept now)", version)
        self.consecutive = 0
        return info

    @staticmethod
    def prune_to_newest(root: Path) -> int:
        """Delete every version folder but the newest READY one; returns how many went."""
        newest = latest_snapshot(root)
        gone = 0
        for _, folder in version_folders(root):
            if folder != newest:
                shutil.rmtree(folder, ignore_errors=True)
                gone += 1
        return gone
