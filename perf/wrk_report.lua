-- wrk's own report has rounded, unit-suffixed numbers; this prints the
-- figures the benchmark driver needs as one JSON line (latencies in µs).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "seconds": %.6f, "bytes": %d, ' ..
    '"errors": %d, "latency_us": {"mean": %.2f, "p50": %.2f, "p99": %.2f, "p99.9": %.2f, "max": %.2f}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
