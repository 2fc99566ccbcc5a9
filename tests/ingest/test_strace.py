"""strace -f -ttt -T output: every line form, bad lines alone, file names, the store."""

from __future__ import annotations

import errno
from pathlib import Path

import pyarrow as pa
import pytest

from spanomaly.ingest.base import DecodeOptions
from spanomaly.ingest.files import sniff
from spanomaly.ingest.formats import REGISTRY, identify
from spanomaly.ingest.strace import decode_file, file_labels
from spanomaly.pipeline.ingest import ingest, open_store

# stderr of `strace -f -ttt -T`: the leader (10) unprefixed until its first child exists
STDERR = b"""\
1700000000.000001 execve("/bin/sh", ["sh"], 0x7ffc /* 3 vars */) = 0 <0.000300>
1700000000.000400 brk(NULL)             = 0x5636ff64b000 <0.000011>
1700000000.000500 openat(AT_FDCWD, "/x", O_RDONLY) = -1 ENOENT (No such file or directory) <0.000010>
1700000000.000600 vfork(strace: Process 11 attached
 <unfinished ...>
[pid    11] 1700000000.000700 execve("/bin/ls", ["ls"], 0x5636 /* 3 vars */ <unfinished ...>
[pid    10] 1700000000.000900 <... vfork resumed>) = 11 <0.000300>
[pid    10] 1700000000.001000 wait4(-1,  <unfinished ...>
[pid    11] 1700000000.001100 <... execve resumed>) = 0 <0.000400>
[pid    11] 1700000000.001200 write(1, "a) = 5 (b\\n", 9) = 9 <0.000020>
[pid    11] 1700000000.001300 read(3, "x", 1) = ? ERESTARTSYS (To be restarted if SA_RESTART is set) <0.000005>
this line is the traced program's own output
[pid    11] 1700000000.001400 exit_group(0)     = ?
[pid    11] 1700000000.001500 +++ exited with 0 +++
[pid    10] 1700000000.001600 <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 11 <0.000600>
1700000000.001700 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=11} ---
1700000000.001800 poll([{fd=3, events=POLLIN}], 1, 0) = 0 (Timeout) <0.000004>

1700000000.001900 exit_group(0 <unfinished ...>
1700000000.002000 <... exit_group resumed>) = ?
1700000000.002100 +++ exited with 0 +++
"""

# `strace -f -o FILE`: every line opens with its thread; a thread cloned with CLONE_THREAD
PER_PID = b"""\
20 1700000001.000000 clone3({flags=CLONE_VM|CLONE_THREAD|CLONE_SETTLS, exit_signal=0}, 88 <unfinished ...>
21 1700000001.000100 futex(0x7f, FUTEX_WAIT_PRIVATE, 2, NULL <unfinished ...>
20 1700000001.000200 <... clone3 resumed> => {parent_tid=[22]}, 88) = 22 <0.000200>
22 1700000001.000300 gettid() = 22 <0.000001>
garbage in the middle
21 1700000001.000400 <... futex resumed>) = -1 EAGAIN (Resource temporarily unavailable) <0.000300>
22 1700000001.000500 read(5, <unfinished ...>
22 1700000001.000600 +++ killed by SIGKILL +++
"""


def _rows(path: Path) -> tuple[pa.Table, list[str]]:
    tables, rejects = [], []
    for chunk in decode_file(path, DecodeOptions()):
        tables.append(chunk.data)
        rejects += [r.message() for r in chunk.rejects]
    return pa.concat_tables(tables).sort_by("time_ns"), rejects


def _write(tmp_path: Path, name: str, text: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text)
    return path


def test_every_line_form_of_stderr_output(tmp_path: Path) -> None:
    path = _write(tmp_path, "shop@shop-1.strace", STDERR)
    rows, rejects = _rows(path)
    assert rejects == [f"{path}: line 12: not a line of strace -ttt output"]
    columns = [rows.column(c).to_pylist() for c in ("tid", "name", "duration_ns", "ret")]
    got = list(zip(*columns, strict=True))
    assert got == [
        (10, "execve", 300_000, 0),
        (10, "brk", 11_000, 0x5636FF64B000),
        (10, "openat", 10_000, -errno.ENOENT),
        (10, "vfork", 300_000, 11),  # from the line strace's attach message cut
        (11, "execve", 400_000, 0),
        (10, "wait4", 600_000, 11),
        (11, "write", 20_000, 9),  # `) = ` inside the string is not the return
        (11, "read", 5_000, None),  # ERESTARTSYS: not a user-visible errno
        (11, "exit_group", None, None),
        (10, "poll", 4_000, 0),
        (10, "exit_group", None, None),
    ]
    assert rows.column("time_ns")[3].as_py() == 1_700_000_000_000_600_000  # the entry
    assert set(rows.column("service").to_pylist()) == {"shop"}
    assert set(rows.column("instance").to_pylist()) == {"shop-1"}
    assert set(rows.column("source").to_pylist()) == {str(path)}
    assert rows.column("pid").to_pylist() == rows.column("tid").to_pylist()
    assert rows.column("cpu").null_count == rows.num_rows


def test_per_pid_output_threads_and_processes(tmp_path: Path) -> None:
    rows, rejects = _rows(_write(tmp_path, "run.log", PER_PID))
    assert rejects == [f"{tmp_path / 'run.log'}: line 5: not a line of strace -ttt output"]
    by_name = {r["name"]: r for r in rows.to_pylist()}
    assert by_name["clone3"]["ret"] == 22 and by_name["clone3"]["duration_ns"] == 200_000
    assert by_name["futex"]["ret"] == -errno.EAGAIN
    assert by_name["futex"]["time_ns"] == 1_700_000_001_000_100_000
    assert (by_name["gettid"]["tid"], by_name["gettid"]["pid"]) == (22, 20)  # a thread of 20
    assert by_name["read"]["duration_ns"] is None and by_name["read"]["ret"] is None
    assert {r["instance"] for r in rows.to_pylist()} == {"run"}
    assert {r["service"] for r in rows.to_pylist()} == {None}


def test_a_call_split_across_reading_blocks_is_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spanomaly.ingest import strace

    monkeypatch.setattr(strace, "_BLOCK_BYTES", 64)  # a block or two per line
    rows, rejects = _rows(_write(tmp_path, "x.strace", PER_PID))
    assert len(rejects) == 1 and rows.num_rows == 4
    assert {r["name"]: r["duration_ns"] for r in rows.to_pylist()}["futex"] == 300_000


def test_without_threads_or_with_a_pid_file_suffix(tmp_path: Path) -> None:
    text = b"1700000000.000001 getpid() = 7 <0.000001>\n"
    plain, _ = _rows(_write(tmp_path, "one.strace", text))
    assert plain.column("tid").to_pylist() == [-1] and plain.column("pid").null_count == 1
    per_file, _ = _rows(_write(tmp_path, "api@api-0.strace.4242", text))
    assert per_file.column("tid").to_pylist() == [4242]
    assert file_labels(tmp_path / "api@api-0.strace.4242.gz") == ("api", "api-0", 4242)
    assert file_labels(tmp_path / "trace.txt") == (None, "trace", None)


def test_sniffed_by_content_or_name_and_named_by_format(tmp_path: Path) -> None:
    assert sniff(_write(tmp_path, "a", STDERR)) == "strace"
    assert sniff(_write(tmp_path, "b", PER_PID)) == "strace"
    assert sniff(_write(tmp_path, "c.strace", b"odd first line, then calls\n")) == "strace"
    assert sniff(_write(tmp_path, "d.csv", b"a,b\n1,2\n")) == "csv"
    odd = _write(tmp_path, "e", b"program output, a, b\n" + PER_PID)
    assert identify(odd, "strace", DecodeOptions(), {}) is REGISTRY["strace"]


@pytest.mark.parametrize("db", ["duck.duckdb", "parquet:pq"])
def test_stored_and_a_second_import_counts_duplicates(tmp_path: Path, db: str) -> None:
    files = [_write(tmp_path, "shop@shop-1.strace", STDERR), _write(tmp_path, "r.log", PER_PID)]
    target = db.replace("pq", str(tmp_path / "pq")) if db.startswith("parquet:") else tmp_path / db
    store = open_store(target)
    try:
        first = ingest(files, store, "strace")
        again = ingest(files, store, "strace")
        count = store.sql("SELECT count(*) AS n FROM syscalls").column("n")[0].as_py()
    finally:
        store.close()
    assert (first.syscalls, first.rejected) == (15, 2) and count == 15
    assert (again.syscalls, again.duplicates, again.rejected) == (0, 15, 2)
