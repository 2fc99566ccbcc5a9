"""LTTng kernel traces: the syscalls of a real trace, counted against babeltrace2's text."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from spanomaly.errors import InputError
from spanomaly.ingest.base import DecodeOptions
from spanomaly.ingest.files import expand
from spanomaly.ingest.formats import REGISTRY, plan
from spanomaly.pipeline.ingest import ingest, open_store
from tests.conftest import SHARED_DATA, unpack_zst_tar

ARCHIVE = SHARED_DATA / "lttng-kernel.tar.zst"


def _has_bt2() -> bool:
    from spanomaly.ingest.lttng import load_bt2

    try:
        load_bt2(Path("."))
    except InputError:
        return False
    return True


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked many-threads trace, or a skip saying what is missing."""
    if not ARCHIVE.exists():
        pytest.skip(f"LTTng trace not found at {ARCHIVE} (set SPANOMALY_SHARED_DATA)")
    if not _has_bt2():
        pytest.skip("babeltrace2's Python binding is absent (Debian python3-bt2)")
    dest = tmp_path_factory.mktemp("lttng")
    unpack_zst_tar(ARCHIVE, dest)
    return dest / "lttng-kernel" / "many-threads"


def _entries_by_babeltrace2(trace: Path) -> Counter[str]:
    """syscall_entry_* events per syscall, counted in the babeltrace2 CLI's text output."""
    if shutil.which("babeltrace2") is None:
        pytest.skip("the babeltrace2 command is absent (Debian babeltrace2)")
    text = subprocess.run(
        ["babeltrace2", str(trace)], check=True, capture_output=True, text=True
    ).stdout
    return Counter(re.findall(r"\] \(\+[?.\d]+\) \S+ (?:compat_)?syscall_entry_(\w+):", text))


def test_a_trace_folder_is_one_input_of_format_lttng(trace: Path) -> None:
    assert expand([trace.parent]) == [trace]  # not its metadata and channel files
    work, refused = plan(expand([trace]), "auto", DecodeOptions())
    assert refused == [] and [w.format for w in work] == [REGISTRY["lttng"]]


def test_every_syscall_entry_is_a_row_with_its_thread(trace: Path, tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.duckdb")
    try:
        report = ingest([trace], store, "lttng")
        counts = store.sql("SELECT name, count(*) AS n FROM syscalls GROUP BY name").to_pylist()
        checks = store.sql(
            "SELECT count(*) FILTER (WHERE tid < 0) AS unattributed, "
            "count(*) FILTER (WHERE duration_ns < 0) AS negative, "
            "count(*) FILTER (WHERE process IS NULL) AS nameless, "
            "count(*) FILTER (WHERE cpu IS NULL) AS cpuless, "
            "count(*) FILTER (WHERE ret IS NOT NULL AND duration_ns IS NULL) AS odd, "
            "count(duration_ns) AS finished, count(pid) AS with_pid, count(*) AS n FROM syscalls"
        ).to_pylist()[0]
        again = ingest([trace], store, "lttng")
    finally:
        store.close()
    expected = _entries_by_babeltrace2(trace)
    assert {r["name"]: r["n"] for r in counts} == dict(expected)
    assert report.syscalls == sum(expected.values()) == checks["n"] and report.rejected == 0
    assert checks["unattributed"] == checks["negative"] == checks["nameless"] == 0
    assert checks["cpuless"] == checks["odd"] == 0
    assert checks["finished"] > 0.8 * checks["n"] and checks["with_pid"] > 0.9 * checks["n"]
    assert (again.syscalls, again.duplicates) == (0, checks["n"])


def test_a_folder_that_is_not_a_trace_is_refused(tmp_path: Path) -> None:
    (tmp_path / "metadata").write_bytes(b"not CTF")
    from spanomaly.ingest.lttng import decode_trace

    with pytest.raises(InputError, match=str(tmp_path)):
        list(decode_trace(tmp_path, DecodeOptions()))
