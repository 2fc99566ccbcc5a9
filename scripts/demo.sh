#!/usr/bin/env bash
# The current main job: unpack the TrainTicket data (if present), ingest it, print stats.
set -euo pipefail
data=${1:-../shared/data}
db=${2:-demo.duckdb}
archive="$data/trainticket-2023-01-30.tar.zst"
if [ ! -f "$archive" ]; then
  echo "demo: $archive not found; put the shared data beside the repository" >&2
  exit 2
fi
mkdir -p demo-data
if [ ! -d demo-data/trainticket-2023-01-30 ]; then
  echo "unpacking $archive"
  .venv/bin/python - "$archive" demo-data <<'PY'
import sys, tarfile, zstandard
with open(sys.argv[1], "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as s, \
        tarfile.open(fileobj=s, mode="r|") as tar:
    tar.extractall(sys.argv[2], filter="data")
PY
fi
rm -f "$db" "$db.wal"
.venv/bin/spanomaly ingest demo-data/trainticket-2023-01-30 --db "$db"
.venv/bin/spanomaly stats --db "$db"
