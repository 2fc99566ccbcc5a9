#!/usr/bin/env bash
# `make trainticket`: the method on the real TrainTicket day end to end.
# Ingest traces, metrics and fault labels; train on the fault-free hours 14:15-23:00 UTC;
# detect over the whole day; rank root causes; evaluate against the 17 labelled faults.
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
rm -rf "$db" "$db.wal" demo-model
sp=.venv/bin/spanomaly
echo "== ingest"
$sp ingest demo-data/trainticket-2023-01-30 --db "$db"
$sp stats --db "$db"
echo "== train on the fault-free hours 14:15-23:00 UTC"
$sp train --db "$db" --model demo-model --from 2023-01-30T14:15:00Z --to 2023-01-30T23:00:00Z
echo "== detect over the whole day"
$sp detect --db "$db" --model demo-model
echo "== root causes in the fault period 11:38-14:15 UTC"
$sp rca --db "$db" --from 2023-01-30T11:38:00Z --to 2023-01-30T14:15:00Z > demo-rca.txt
head -n 12 demo-rca.txt
echo "== evaluation against the 17 labelled faults"
$sp evaluate --db "$db" --from 2023-01-30T11:38:00Z --to 2023-01-30T14:15:00Z
