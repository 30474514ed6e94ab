-- wrk script: every request POSTs the echo body as JSON.
wrk.method = "POST"
wrk.body = '{"hello": "world"}'
wrk.headers["Content-Type"] = "application/json"
