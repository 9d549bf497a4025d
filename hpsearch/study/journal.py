"""The journal file (``journal:///x.log``): Optuna's, made to survive a torn line.

A crash or a full disk in the middle of an append leaves a last line without its end. Optuna's reader skips it,
but its next append writes onto it, and from then on the file has an unreadable line in the middle and every
command fails. Here each append first sets such a tail aside (into ``x.log.torn`` beside the file, with a note of
when and from which byte) and truncates the file to its last whole line, under the journal's own lock; the study
opens and resumes, having lost only the operation that never finished writing.

An unreadable line in the middle (a file torn before this check existed) is refused when the storage opens, with
the file, the line and byte, and the command that repairs it: :func:`repair` (``hpsearch repair``) moves every
unreadable line aside, keeping any whole records that were appended onto a torn one.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend

RECORD_START = b'{"op_code"'
"""How every record of Optuna's journal begins (its first key), where a record appended onto a torn line starts."""


def _readable(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _set_aside(path: Path, data: bytes, offset: int, why: str) -> None:
    """Append ``data`` (cut from ``path`` at byte ``offset``) to ``path.torn``, after a line saying what it is."""
    with open(f"{path}.torn", "ab") as out:
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        out.write(f"# {stamp}: {len(data)} bytes from byte {offset} of {path.name}: {why}\n".encode())
        out.write(data if data.endswith(b"\n") else data + b"\n")


def set_aside_torn_tail(path: Path) -> int:
    """Cut an unfinished last line (no line end, or not a record) off ``path`` into ``path.torn``; return the bytes
    set aside (0: the file ends with a whole record)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "r+b") as f:
        start = _last_line_start(f, size)
        f.seek(start)
        last = f.read()
        if last.endswith(b"\n") and _readable(last):
            return 0
        _set_aside(path, last, start, "a write that did not finish" if not last.endswith(b"\n") else
                   "not a journal record")
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    return len(last)


def _last_line_start(f: Any, size: int, chunk: int = 1 << 16) -> int:
    """Where the last line of the open file ``f`` (``size`` bytes) begins."""
    end = size - 1  # a last line's own line end is not where it begins
    while end > 0:
        begin = max(0, end - chunk)
        f.seek(begin)
        found = f.read(end - begin).rfind(b"\n")
        if found != -1:
            return begin + found + 1
        end = begin
    return 0


class TornSafeJournalFile(JournalFileBackend):
    """Optuna's journal file backend that sets a torn last line aside before every append (:mod:`.journal`)."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        acquired = self._lock.acquire()
        try:
            set_aside_torn_tail(Path(self._file_path))
            with open(self._file_path, "ab") as f:  # as Optuna's own append, which takes this lock itself
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        finally:
            if acquired:
                self._lock.release()


@dataclass(frozen=True)
class Unreadable:
    """An unreadable line of a journal file."""

    line: int
    """Counted from 1."""
    offset: int
    """Its first byte."""
    data: bytes


def unreadable_lines(path: Path) -> list[Unreadable]:
    """Every line of ``path`` that is not a journal record (the last one included)."""
    out, offset = [], 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not (line.endswith(b"\n") and _readable(line)):
                out.append(Unreadable(number, offset, line))
            offset += len(line)
    return out


def salvage(line: bytes) -> list[bytes]:
    """The whole records in an unreadable line: those appended onto a torn one start where a record starts."""
    parts, start = [], line.find(RECORD_START, 1)
    while start != -1:
        end = line.find(RECORD_START, start + 1)
        candidate = line[start:end if end != -1 else None].rstrip(b"\n")
        if _readable(candidate):
            parts.append(candidate + b"\n")
        start = end
    return parts


def repair(path: Path, lock: Any) -> dict[str, int]:
    """Move every unreadable line of the journal file ``path`` into ``path.torn``, keeping the whole records
    appended onto a torn line; the file is rewritten whole (the old one replaced at once), under the journal's
    ``lock`` (its workers' own). Returns what it did."""
    acquired = lock.acquire()
    try:
        return _repair(path)
    finally:
        if acquired:
            lock.release()


def _repair(path: Path) -> dict[str, int]:
    bad = unreadable_lines(path)
    if not bad:
        return {"lines_set_aside": 0, "records_kept": 0, "bytes_set_aside": 0}
    where = {b.line: b for b in bad}
    kept = 0
    tmp = path.with_name(path.name + ".repairing")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for number, line in enumerate(src, 1):
            if number not in where:
                dst.write(line)
                continue
            saved = salvage(line)
            kept += len(saved)
            dst.writelines(saved)
            _set_aside(path, line, where[number].offset, f"line {number} was not a journal record"
                       + (f" ({len(saved)} whole record(s) after it kept)" if saved else ""))
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    return {"lines_set_aside": len(bad), "records_kept": kept, "bytes_set_aside": sum(len(b.data) for b in bad)}
