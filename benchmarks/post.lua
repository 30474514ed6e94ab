-- wrk script: every request POSTs a JSON body: $BENCHMARK_BODY, else the echo's.
wrk.method = "POST"
wrk.body = os.getenv("BENCHMARK_BODY") or '{"hello": "world"}'
wrk.headers["Content-Type"] = "application/json"
