-- wrk script for the benchmark: sends one fixed request and prints a JSON summary at the end.
--
--   BENCH_REQUEST=FILE [BENCH_MEAN_GAP_MS=MS] wrk ... -s bench/request.lua URL
--
-- FILE holds the whole request (request line, headers, body) byte for byte, so every system
-- gets exactly the same bytes. With BENCH_MEAN_GAP_MS each connection waits a random
-- (exponential) time of that mean before each request: an offered load below the peak,
-- for tail latency at a given share of it. Without it wrk sends as fast as answers come.

local file = assert(io.open(assert(os.getenv("BENCH_REQUEST"), "BENCH_REQUEST is not set"), "rb"))
local raw = file:read("*a")
file:close()

function request()
  return raw
end

local mean_gap = tonumber(os.getenv("BENCH_MEAN_GAP_MS") or "")
if mean_gap then
  -- wrk only schedules delays when a delay function exists, so define it only when pacing.
  function delay()
    return -mean_gap * math.log(1 - math.random())
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
