"""TLS echo benchmarks: the Protocol and streams echo servers behind
`ssl=` (servers/echo_tls.py) per loop, at 1 and 100 KiB, driven by the load
generator in its --tls mode (OpenSSL), server and load on separate CPUs as in
echo_bench.py. Each connection's handshake happens before the clock starts,
so a cell measures record encryption and the loop's TLS layer, not
handshakes. A self-signed certificate is made with the `openssl` command for
the run."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import echo_bench
import serverproc

SERVER = os.path.join(echo_bench.SERVERS_DIR, "echo_tls.py")
APIS = ("protocol", "streams")
SIZES = {"1KiB": 1024, "100KiB": 100 * 1024}
QUICK_SIZES = ("1KiB",)
# The skipped cell's reason when a loop raises NotImplementedError in the server.
MISSING = "lacks the TLS this server uses (raised NotImplementedError)"
# An EC key: quick to generate, and the handshake is outside the measured
# interval anyway, so the key type does not show in the figures.
CERT_SUBJECT = "/CN=localhost"


def build_tls_loadgen():
    return echo_bench.build_loadgen(defines=("-DLOADGEN_TLS",), libs=("-lssl", "-lcrypto"))


def make_certificate(directory):
    """(cert, key) paths of a fresh self-signed certificate in directory."""
    if not shutil.which("openssl"):
        raise RuntimeError("no openssl command to make a certificate (apt-get install openssl)")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    res = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                          "-nodes", "-days", "2", "-subj", CERT_SUBJECT, "-keyout", key, "-out", cert],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"openssl req failed: {res.stderr.strip()[-500:]}")
    return cert, key


def server_argv(loop, api, cert, key):
    return [sys.executable, SERVER, "--api", api, "--cert", cert, "--key", key, "--loop", loop, "--port", "0"]


def cell(loadgen, loop, api, size, cfg, cpus, cert, key):
    server_cpus, load_cpus = cpus
    with serverproc.Server(server_argv(loop, api, cert, key), r"READY (?P<port>\d+)", cpus=server_cpus) as server:
        r = echo_bench.run_loadgen(loadgen, server, server.port, size, cfg, load_cpus,
                                   extra_args=("--tls", "--tls-ca", cert))
    out = serverproc.load_cell(r["requests"], r["seconds"], r["latency_us"],
                               r["server_cpu_s"]["user"], r["server_cpu_s"]["sys"])
    out["tls"] = r.get("tls")
    return out


def part(cfg, loops, skipped_loops, add_step):
    """Registers one step per (api, size, loop) with add_step and returns the
    part's result dict, which those steps fill in."""
    result, cpus = echo_bench.new_result(
        "TLS echo", (f"closed loop over TLS, {cfg.connections} connections, each waits for the full echo; "
                     f"handshakes before the clock; {cfg.duration:g} s measured after {cfg.warmup:g} s warm-up"))
    cert_dir = tempfile.mkdtemp(prefix="shardloop-tls-bench-")
    atexit.register(shutil.rmtree, cert_dir, True)
    try:
        loadgen = build_tls_loadgen()
        cert, key = make_certificate(cert_dir)
    except RuntimeError as e:
        result["status"] = "skipped"
        result["reason"] = str(e)
        return result
    result["status"] = "ran"
    result["notes"].append("self-signed EC P-256 certificate; the load generator verifies it")

    def note_protocol(c):
        """The version and cipher the first measured cell negotiated (all use
        the same contexts, so they all negotiate the same)."""
        tls = c.get("tls")
        if tls and not any(n.startswith("negotiated") for n in result["notes"]):
            result["notes"].append(f"negotiated {tls['version']}, {tls['cipher']} (OpenSSL defaults on both sides)")

    def run_cell(loop, api, size):
        c = serverproc.guarded_cell(loop, MISSING, lambda: cell(loadgen, loop, api, size, cfg, cpus, cert, key))
        note_protocol(c)
        return c

    # A second or so more than a plain echo cell: the handshakes.
    grid = ("tls", cfg.warmup + cfg.duration + 1.0, APIS, SIZES, QUICK_SIZES)
    echo_bench.add_cells(result, cfg, loops, skipped_loops, add_step, grid, run_cell)
    return result
