#!/usr/bin/env bash
# Remake docs/report.png and docs/dashboard.png from studies.db.example with headless Chromium (Debian's chromium).
#   bash docs/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CHROME=${CHROME:-chromium}
STORAGE=sqlite:///studies.db.example
STUDY=${STUDY:-sst2-lr-dropout}
PORT=${PORT:-8765}
tmp=$(mktemp -d)
trap 'kill $dash 2>/dev/null || true; rm -rf "$tmp"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --hide-scrollbars
       --user-data-dir="$tmp/profile" --virtual-time-budget=8000)

"$BIN/hpsearch" report --study "$STUDY" --storage "$STORAGE" --output "$tmp/report.html"
"$CHROME" "${flags[@]}" --window-size=1200,2400 --screenshot="$PWD/docs/report.png" "file://$tmp/report.html"

"$BIN/hpsearch" dashboard --storage "$STORAGE" --port "$PORT" & dash=$!
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$PORT/api/studies" >/dev/null && break; sleep 0.5; done
id=$(curl -sf "http://127.0.0.1:$PORT/api/studies" | "$BIN/python" -c \
     "import json,sys; print(next(s['study_id'] for s in json.load(sys.stdin)['study_summaries'] if s['study_name']=='$STUDY'))")
"$CHROME" "${flags[@]}" --window-size=1400,1000 --screenshot="$PWD/docs/dashboard.png" \
    "http://127.0.0.1:$PORT/dashboard/studies/$id"
echo "wrote docs/report.png docs/dashboard.png"
