"""Turns a bench.py result (the JSON document) into Markdown tables and PNG
plots. Works on a loaded JSON file as well, so a report can be redrawn from
an old run: python perf/report.py perf/results/latest.json"""

import os
import sys
import textwrap

REFERENCES = ("rloop", "uvloop", "asyncio")
COLORS = {"shardloop": "#d62728", "uvloop": "#1f77b4", "asyncio": "#7f7f7f",
          "shardloop native": "#d62728", "plain C epoll": "#7f7f7f", "Go": "#17becf", "Node.js": "#2ca02c"}
# For columns without a colour of their own (shard counts, interpreters).
PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#7f7f7f", "#9467bd")
PERCENTILES = ("p50", "p99", "p99.9")


def color(column, i):
    return COLORS.get(column, PALETTE[i % len(PALETTE)])


def ratio_pairs(loops):
    """(a, ref) for every loop a against each reference loop it is not, with
    a reference only compared to the ones after it: shardloop vs uvloop,
    shardloop vs asyncio, uvloop vs asyncio."""
    refs = [r for r in REFERENCES if r in loops]
    pairs = [(a, ref) for ref in refs for a in loops
             if a != ref and (a not in refs or refs.index(a) < refs.index(ref))]
    return sorted(pairs, key=lambda p: (loops.index(p[0]), loops.index(p[1])))


def fmt_value(v):
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_cpu(us):
    """CPU µs per request: two decimals below 10 µs, where the native
    servers' figures differ by tenths."""
    return f"{us:.2f}" if us < 10 else f"{us:.1f}"


def fmt_cell(cell, key=None):
    if cell is None:
        return "—"
    if "skipped" in cell:
        return "skipped"
    if "error" in cell:
        return "error"
    return key(cell) if key else fmt_value(cell["value"])


def ratio(a, b, higher_is_better):
    if not a or not b or "value" not in a or "value" not in b or not a["value"] or not b["value"]:
        return "—"
    r = a["value"] / b["value"] if higher_is_better else b["value"] / a["value"]
    return f"{r:.2f}x"


def table(head, rows, numeric=True):
    align = "---:" if numeric else "---"
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + [align] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def cell_notes(part):
    """One line per distinct skip/error reason, with how many cells it hit."""
    reasons = {}
    for row in part.get("results", {}).values():
        for cell in row.values():
            for kind in ("skipped", "error"):
                if kind in cell:
                    reasons.setdefault((kind, cell[kind]), 0)
                    reasons[(kind, cell[kind])] += 1
    return [f"- {kind}: {why} ({n} cell{'s' if n > 1 else ''})" for (kind, why), n in reasons.items()]


def columns_of(part, loops):
    """What a part's cells are keyed by: the loops, or the part's own
    columns (servers, shard counts), with its own ratio pairs."""
    if "columns" in part:
        return part["columns"], [tuple(p) for p in part.get("ratios", [])]
    return loops, ratio_pairs(loops)


def shards_markdown(part):
    """The shards part's extras: how the connections spread, and the
    cross-shard messaging table."""
    out = []
    spread = [[b] + [str(row[c].get("connections_per_shard", "—")) if c in row else "—" for c in part["columns"]]
              for b, row in part["results"].items() if any("value" in c for c in row.values())]
    if spread:
        out += [f"### {part['title']}: connections accepted per shard", "",
                table(["benchmark"] + part["columns"], spread, numeric=False), ""]
    cross = part.get("cross_shard")
    if cross and cross["results"]:
        def show(c):
            text = fmt_value(c["value"])
            return text + (f" ({c['cpu_us_per_op']:.1f})" if "cpu_us_per_op" in c else "")
        out += [f"### {part['title']}: cross-shard messaging", "", cross["description"] + ".", ""]
        rows = [[b] + [fmt_cell(row.get(c), show) for c in cross["columns"]] + [cross["units"].get(b, "")]
                for b, row in cross["results"].items()]
        out += [table(["benchmark"] + cross["columns"] + ["unit"], rows), ""]
        notes = cell_notes(cross)
        if notes:
            out += notes + [""]
    return out


def part_markdown(name, part, loops):
    out = [f"## {part['title']} ({part['unit']})", ""]
    if part.get("status") == "skipped":
        return out + [f"skipped: {part['reason']}", ""]
    if part.get("description"):
        took = f" Took {part['elapsed_s']:.0f} s." if "elapsed_s" in part else ""
        out += [part["description"] + "." + took, ""]
    for note in part.get("notes", []):
        out += [f"- {note}"]
    if part.get("notes"):
        out.append("")
    results = part["results"]
    hib = part["higher_is_better"]
    loops, pairs = columns_of(part, loops)
    head = ["benchmark"] + loops + [f"{a} vs {b}" for a, b in pairs]
    rows = []
    for bench, row in results.items():
        rows.append([bench] + [fmt_cell(row.get(l)) for l in loops]
                    + [ratio(row.get(a), row.get(b), hib) for a, b in pairs])
    out += [table(head, rows), ""]
    better = "more " + part["unit"] if hib else "fewer " + part["unit"]
    out += [f"\"a vs b\": how many times better a is than b ({better} is better).", ""]
    if any("latency_us" in c for row in results.values() for c in row.values()):
        out += [f"### {part['title']}: latency (µs, p50 / p99 / p99.9)", ""]
        lat = lambda c: " / ".join(fmt_value(c["latency_us"][p]) for p in PERCENTILES)  # noqa: E731
        out += [table(["benchmark"] + loops, [[b] + [fmt_cell(row.get(l), lat) for l in loops]
                                              for b, row in results.items()]), ""]
        out += [f"### {part['title']}: server CPU per request (µs, user / system)", ""]
        cpu = lambda c: " / ".join(fmt_cpu(c["cpu_us_per_request"][k]) for k in ("user", "sys"))  # noqa: E731
        out += [table(["benchmark"] + loops, [[b] + [fmt_cell(row.get(l), cpu) for l in loops]
                                              for b, row in results.items()]), ""]
    notes = cell_notes(part)
    if notes:
        out += notes + [""]
    if name == "shards":
        out += shards_markdown(part)
    if part.get("plots"):
        out += [f"![{p}]({p})" for p in part["plots"]] + [""]
    return out


def markdown(doc):
    env, settings = doc["environment"], doc["settings"]
    loops = settings["loops"]
    out = ["# shardloop benchmarks", "",
           f"shardloop vs uvloop vs asyncio's own loop, measured {env['date']} on {env['cpu']} "
           f"({env['cores']} cores), Linux {env['kernel']}, {env['python']}."
           + (" **--quick run: smoke test, not a measurement.**" if settings.get("quick") else ""), "",
           "## Environment", "", table(["what", "value"], [[k, str(v)] for k, v in env.items()], numeric=False), ""]
    for name, part in doc["parts"].items():
        out += part_markdown(name, part, loops)
    if doc.get("pending"):
        out += ["## Not measured yet", ""]
        out += [f"- {name}: skipped: {why}" for name, why in doc["pending"].items()] + [""]
    return "\n".join(out)


def short(v, _=None):
    """Axis label: 7.5M, 400k, 1,493."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:,.0f}"


def _figure(n):
    import matplotlib
    matplotlib.use("Agg")  # no display on a benchmark box
    import matplotlib.pyplot as plt
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.4 * rows + 0.6), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n])


def _save(plt, fig, title, path):
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    # Small enough to commit: 80 dpi and a palette-friendly plain style.
    fig.savefig(path, dpi=80)
    plt.close(fig)


def bar_plot(part, loops, path):
    """Small multiples: one panel per benchmark, one bar per loop, each panel
    on its own scale (call_soon and tasks differ by 10x)."""
    benches = [b for b, row in part["results"].items() if any("value" in c for c in row.values())]
    if not benches:
        return False
    from matplotlib.ticker import FuncFormatter
    plt, fig, axes = _figure(len(benches))
    for ax, bench in zip(axes, benches):
        row = part["results"][bench]
        # Only the columns this benchmark has (the native HTTP row has one
        # server); colours keep to the column's place in the whole part.
        shown = [(i, l) for i, l in enumerate(loops) if l in row]
        values = [row[l].get("value", 0) for _, l in shown]
        bars = ax.bar(range(len(shown)), values, color=[color(l, i) for i, l in shown])
        for bar, (_, l), v in zip(bars, shown, values):
            label = fmt_value(v) if v else fmt_cell(row[l])
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(shown)), [textwrap.fill(l, 10) for _, l in shown], fontsize=8)
        ax.set_title(bench, fontsize=9)
        ax.yaxis.set_major_formatter(FuncFormatter(short))
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.15)
    better = "higher" if part["higher_is_better"] else "lower"
    _save(plt, fig, f"{part['title']}: {part['unit']} ({better} is better)", path)
    return True


def latency_plot(part, loops, path):
    """Per benchmark, p50/p99/p99.9 grouped by percentile, one bar per loop,
    log scale because the tail is often 10x the median."""
    benches = [b for b, row in part["results"].items() if any("latency_us" in c for c in row.values())]
    if not benches:
        return False
    from matplotlib.ticker import FuncFormatter
    plt, fig, axes = _figure(len(benches))
    width = 0.8 / len(loops)
    for ax, bench in zip(axes, benches):
        row = part["results"][bench]
        for i, l in enumerate(loops):
            lat = row.get(l, {}).get("latency_us")
            if lat:
                xs = [k + (i - (len(loops) - 1) / 2) * width for k in range(len(PERCENTILES))]
                ax.bar(xs, [lat[p] for p in PERCENTILES], width, color=color(l, i), label=l)
        ax.set_yscale("log")
        # Plain numbers: "2 x 10^2"-style labels are hard to read at a glance.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:,.0f}" if f"{v:.0e}"[0] in "25" else ""))
        ax.tick_params(axis="y", which="minor", labelsize=6)
        ax.set_xticks(range(len(PERCENTILES)), PERCENTILES, fontsize=8)
        ax.set_title(bench, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    # One legend for all panels, in the first (a figure legend would sit on
    # the title), listing every loop that has bars in any panel.
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    axes[0].legend(handles.values(), handles.keys(), fontsize=7)
    _save(plt, fig, f"{part['title']}: latency percentiles, µs (lower is better)", path)
    return True


def scaling_plot(part, _columns, path):
    """Shards: req/s and server CPU per request against the shard count, one
    line per interpreter (CPU: total solid, user dashed)."""
    lines = {}
    for bench, row in part["results"].items():
        cells = sorted((c for c in row.values() if "value" in c), key=lambda c: c["shards"])
        if cells:
            lines[bench.removeprefix("echo, ")] = cells
    if not lines:
        return False
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    plt, fig, (rps, cpu) = _figure(2)
    for i, (label, cells) in enumerate(lines.items()):
        c = PALETTE[i % len(PALETTE)]
        xs = [c["shards"] for c in cells]
        rps.plot(xs, [c["value"] for c in cells], "o-", color=c, label=label)
        per = [c["cpu_us_per_request"] for c in cells]
        cpu.plot(xs, [p["user"] + p["sys"] for p in per], "o-", color=c, label=label)
        cpu.plot(xs, [p["user"] for p in per], "o--", color=c, alpha=0.6)
    for ax, title in ((rps, "req/s (higher is better)"), (cpu, "server CPU µs/request\n(total; user dashed)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("shards", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(short))
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.margins(y=0.15)
    rps.legend(fontsize=6)
    _save(plt, fig, f"{part['title']}: sharded echo server scaling", path)
    return True


def plots(doc, out_dir):
    """Writes the PNGs next to the Markdown and records their names in each
    part's "plots"; returns None, or why there are no plots."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    for name, part in doc["parts"].items():
        if part.get("status") != "ran":
            continue
        loops = columns_of(part, doc["settings"]["loops"])[0]
        made = []
        for suffix, draw in (("", scaling_plot if name == "shards" else bar_plot), ("_latency", latency_plot)):
            png = f"{name}{suffix}.png"
            path = os.path.join(out_dir, png)
            if draw(part, loops, path):
                made.append(png)
            elif os.path.exists(path):
                os.remove(path)  # from an earlier run; it would not match this report
        part["plots"] = made
    return None


def main():
    import json
    if len(sys.argv) != 2:
        sys.exit("usage: report.py RESULT.json")
    with open(sys.argv[1]) as f:
        print(markdown(json.load(f)))


if __name__ == "__main__":
    main()
