#!/usr/bin/env python3
"""Page through every suppression entry of a running Gannet over its HTTP API, as a client would
(issue 17: "the API pages through them"): GET /api/v1/suppressions?limit=1000, passing
next_cursor back until it is null. Prints the entries, pages, seconds, the rate and the page
latency (p50/p99). Build a large list first with
  SUPPRESSION_BENCH_ENTRIES=10000000 SUPPRESSION_BENCH_DIR=DIR cargo bench --bench suppression_lookup
then start Gannet with `[suppression] path = "DIR/suppression"` and `[storage] key_file =
"DIR/gannet.key"`, and run:  benches/suppression_page.py HOST PORT [TOKEN]
(TOKEN: a bearer token of scope `suppression` when `[[api_token]]` entries are configured)."""
import http.client
import json
import sys
import time
import urllib.parse

host, port = sys.argv[1], int(sys.argv[2])
headers = {"Authorization": f"Bearer {sys.argv[3]}"} if len(sys.argv) > 3 else {}
conn = http.client.HTTPConnection(host, port)
cursor, entries, pages, latencies = None, 0, 0, []
t0 = time.time()
while True:
    query = {"limit": "1000"}
    if cursor:
        query["cursor"] = cursor
    t = time.time()
    conn.request("GET", "/api/v1/suppressions?" + urllib.parse.urlencode(query), headers=headers)
    r = conn.getresponse()
    body = r.read()
    latencies.append(time.time() - t)
    if r.status != 200:
        sys.exit(f"page {pages + 1}: HTTP {r.status}: {body[:300]!r}")
    v = json.loads(body)
    entries += len(v["entries"])
    pages += 1
    cursor = v.get("next_cursor")
    if not cursor:
        break
dt = time.time() - t0
latencies.sort()
print(
    f"entries {entries} pages {pages} in {dt:.1f} s = {entries / dt:.0f} entries/s; "
    f"page latency p50 {latencies[len(latencies) // 2] * 1000:.1f} ms "
    f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms"
)
