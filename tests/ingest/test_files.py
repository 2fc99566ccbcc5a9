"""`spanomaly.ingest.files.content_view`: mapped plain files, read compressed ones."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from spanomaly.ingest import files


@pytest.mark.parametrize("kind", ["plain", "empty", "gzip"])
def test_content_view_gives_the_decompressed_bytes(tmp_path: Path, kind: str) -> None:
    content = b"" if kind == "empty" else bytes(range(256)) * 100
    path = tmp_path / "f.bin"
    path.write_bytes(gzip.compress(content) if kind == "gzip" else content)
    with files.content_view(path) as data:
        assert bytes(data) == content
    # a mapping is released with the block: the file can be replaced at once
    path.write_bytes(b"new")
    with files.content_view(path) as data:
        assert bytes(data) == b"new"


def test_content_view_releases_the_mapping_after_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="boom"), files.content_view(path) as data:
        assert bytes(data) == b"abc"
        raise ValueError("boom")
    assert isinstance(data, memoryview)
    with pytest.raises(ValueError):  # released: reading it now is refused
        bytes(data)
