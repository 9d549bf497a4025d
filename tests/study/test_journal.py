"""A journal file torn by a crash or a full disk: a torn last line is set aside at the next append and the study
resumes; a torn line in the middle is one error naming the line, its byte and the repair, which mends it."""
from __future__ import annotations

from pathlib import Path

from hpsearch.study.journal import salvage, set_aside_torn_tail


def _tear(path: Path, keep: float = 0.5) -> bytes:
    """Cut the journal's last line in half, as a write cut short leaves it; return what was cut off."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = start + int((len(data) - start) * keep)
    path.write_bytes(data[:cut])
    return data[cut:]


def test_a_torn_last_line_is_set_aside_and_the_study_resumes(make_space, hpsearch, tmp_path: Path) -> None:
    url = "journal:///j.log"
    space = str(make_space(fixed__epochs=1))
    hpsearch("run", "--space", space, "--trials", "2", "--storage", url, "--quiet", check=True)
    log = tmp_path / "j.log"
    _tear(log)
    hpsearch("run", "--space", space, "--trials", "1", "--storage", url, "--quiet", check=True)  # appends safely
    torn = tmp_path / "j.log.torn"
    assert torn.is_file() and "a write that did not finish" in torn.read_text()
    hpsearch("run", "--space", space, "--trials", "1", "--storage", url, "--quiet", check=True)  # and again
    listing = hpsearch("trials", "--study", "tiny", "--storage", url, check=True).stdout
    assert listing.count("COMPLETE") + listing.count("PRUNED") >= 3


def test_a_torn_line_in_the_middle_is_named_and_repaired(make_space, hpsearch, tmp_path: Path) -> None:
    url = "journal:///j.log"
    space = str(make_space(fixed__epochs=1))
    hpsearch("run", "--space", space, "--trials", "2", "--storage", url, "--quiet", check=True)
    log = tmp_path / "j.log"
    lines = log.read_bytes().splitlines(keepends=True)
    torn_at = len(lines) - 3
    offset = sum(len(x) for x in lines[:torn_at])
    # what a journal without the guard got: a line cut short, the next append written onto it
    half = lines[torn_at][: len(lines[torn_at]) // 2]
    log.write_bytes(b"".join(lines[:torn_at]) + half + b"".join(lines[torn_at + 1:]))
    res = hpsearch("trials", "--study", "tiny", "--storage", url)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"line {torn_at + 1} (byte {offset})" in res.stderr
    assert "set it aside with: hpsearch repair --storage journal:///j.log" in res.stderr
    fixed = hpsearch("repair", "--storage", url, check=True).stdout
    assert "set aside 1 unreadable line(s)" in fixed and "kept 1 whole record(s)" in fixed  # the appended one
    assert hpsearch("trials", "--study", "tiny", "--storage", url).returncode == 0
    assert "nothing to repair" in hpsearch("repair", "--storage", url, check=True).stdout
    refused = hpsearch("repair", "--storage", f"sqlite:///{tmp_path}/x.db")
    assert refused.returncode == 2 and "journal files" in refused.stderr


def test_setting_aside_and_salvaging_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    record = b'{"op_code":0,"worker_id":"a","study_name":"s"}\n'
    log.write_bytes(record + record[:20])
    assert set_aside_torn_tail(log) == 20 and log.read_bytes() == record
    assert set_aside_torn_tail(log) == 0
    log.write_bytes(record + b'{"op_code": 1, "x"\n')  # a last line with its end, but no record
    assert set_aside_torn_tail(log) > 0 and log.read_bytes() == record
    assert salvage(record[:15] + record) == [record] and salvage(record[:15]) == []
