-- wrk script for bench/run.py:  wrk ... -s wrk_bench.lua URL -- BODY_FILE [DELAY_MS]
--
-- POSTs the JSON body in BODY_FILE. With DELAY_MS > 0 every connection waits about that
-- long before each request, which paces the whole run to connections * 1000 / DELAY_MS
-- requests per second. done() prints one "BENCH_RESULT {json}" line for run.py to parse.

function init(args)
   local fh = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.body = fh:read("*a")
   fh:close()
   wrk.headers["Content-Type"] = "application/json"
   local delay_ms = tonumber(args[2] or "0") or 0
   -- Defined only when pacing: wrk checks for delay() after init(), and any delay()
   -- (even one returning 0) sends every request through a timer, slowing peak runs.
   if delay_ms > 0 then
      math.randomseed(os.time() + math.floor(os.clock() * 1e6))
      local lo, hi = math.floor(delay_ms * 0.5), math.ceil(delay_ms * 1.5)
      -- Uniform around the mean rather than constant: with a fixed pause the connections
      -- stay in lock-step and arrive in bursts, inflating p99 with self-made queueing.
      delay = function()
         return math.random(lo, hi)
      end
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"socket_errors":%d,"http_errors":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(99), latency.max,
      e.connect + e.read + e.write + e.timeout, e.status))
end
