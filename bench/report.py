#!/usr/bin/python3
"""Turns bench/run.sh's per-run records into latest.md, latest.json and the
chart data. Standard library only, so Debian's /usr/bin/python3 runs it.

Raw record (tab-separated, one per run):
  workload alloc threads run status code ops maxrss_kb minflt wall_s extra detail
status is ok, exit, signal, timeout, noresult or error; extra holds the
workload's key=value fields after "ops/s" (fragment's RSS figures, largeheap's
faults, CPU split and RSS).

`report.py modes ...` makes the mode table (modes.md, modes.json) from the
same records, one "allocator" per hakmem mode.
"""
import argparse
import json
import math
import os
import statistics
import sys

# One line under each table heading; bench/NAME.c has the details.
ABOUT = {
    "larson": "Server simulation: random free+malloc of 8-1000 B, arrays handed to new threads.",
    "larson_mid": "The same with the seed's 2-32 KiB blocks.",
    "prodcons": "Producers allocate 2-32 KiB blocks, consumers free them. T = pairs: 2T threads, pinned to up to 2T CPUs.",
    "crossnode": "Producer-consumer pairs of 16-1024 B blocks, the two threads of a pair on different "
                 "nodes (HAKMEM_NODES=2): every free is cross-node. T = pairs: 2T threads, pinned to up to 2T CPUs. "
                 "hakmem-batch1 = HAKMEM_MAILBOX_BATCH=1.",
    "churn_small": "Random replace of 8-512 B blocks in per-thread working sets.",
    "churn_mid": "Random replace of 2-32 KiB blocks in per-thread working sets.",
    "pingpong": "Pairs free each other's 16-512 B blocks in batches. T = pairs: 2T threads, pinned to up to 2T CPUs.",
    "falseshare": "Counter increments in small blocks; slow if threads share cache lines.",
    "realloc_grow": "Vectors doubling to 4 MiB, strings growing by 1-128 B appends. One op = one realloc.",
    "fragment": "Waves of 16 B - 1 MiB blocks, 10% survive; RSS at the end vs live bytes below.",
    "largeheap": "A heap of 16-64 KiB blocks (256 MiB, 1 GiB with BENCH_FULL) built, touched, "
                 "freed and built again, 4 rounds; RSS after 2x the purge delay idle below.",
    "largelive": "128 live blocks of one size (256 with BENCH_FULL, and up to 32 MiB), each written "
                 "once, a fresh child process per size; below: (RSS with them live - RSS before) / "
                 "live bytes, 1.00 = no overhead. One op = one block.",
    "hugereplace": "20 live blocks of 5-25 MiB, 200 replaced at random (2000 with BENCH_FULL), each "
                   "zeroed with memset after malloc. One op = one replacement; secs = the timed loop.",
    "manythreads": "256 threads on T CPUs hand 16 B - 64 KiB blocks to each other through "
                   "mutex-protected inboxes for 1 s (3 s with BENCH_FULL). One op = one malloc + free; "
                   "end RSS = after all blocks are freed.",
}

# Extra fields shown in a workload's second table (all go to the JSON).
SHOWN = {
    "crossnode": ["nodes", "cross_node_frees", "batches"],
    "largeheap": ["s_per_round", "app_cpu_s", "helper_cpu_s", "freed_rss_kb"],
    "hugereplace": ["secs"],
    "manythreads": ["end_rss_kb"],
}


def fmt_extra(k, v):
    """_kb fields in MiB, seconds with milliseconds, counts whole."""
    if v is None:
        return "-"
    if k.endswith("_kb"):
        return "%.1f" % (v / 1024)
    if k.startswith("rss_live") or k == "worst":
        return "%.2f" % v
    if k.endswith("_s") or k.startswith("s_") or k == "secs":
        return "%.3f" % v
    return "%.0f" % v


def size_order(k):
    """rss_live_<count>_<size> keys by count, then size (128k < 1m < 1536k); others keep their place."""
    if not k.startswith("rss_live_"):
        return (2, 0, 0)
    n, _, size = k[len("rss_live_"):].partition("_")
    kb = float(size[:-1]) * (1024 if size.endswith("m") else 1)
    return (1, int(n), kb)


def extra_head(k):
    if k.startswith("rss_live_"):  # rss_live_128_512k -> RSS/live 128x512k
        n, _, size = k[len("rss_live_"):].partition("_")
        return "RSS/live %sx%s" % (n, size)
    return k.replace("_kb", " MiB")

FIELDS = ["workload", "alloc", "threads", "run", "status", "code", "ops", "maxrss_kb", "minflt",
          "wall_s", "extra", "detail"]


def read_raw(path):
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            parts += [""] * (len(FIELDS) - len(parts))
            r = dict(zip(FIELDS, parts))
            r["threads"] = int(r["threads"])
            r["ok"] = r["status"] == "ok" and r["ops"] != ""
            r["extras"] = {}
            for kv in r["extra"].split():
                k, _, v = kv.partition("=")
                try:
                    r["extras"][k] = float(v)
                except ValueError:
                    pass
            rows.append(r)
    return rows


def num(v):
    return float(v) if v not in ("", None) else None


def summarize(runs):
    """Median/min/max over the good runs of one cell, and its failures."""
    good = [r for r in runs if r["ok"]]
    bad = [r for r in runs if not r["ok"]]
    cell = {"runs": len(good), "failed": len(bad), "bad": bad}
    ops = [float(r["ops"]) for r in good]
    rss = [num(r["maxrss_kb"]) for r in good if num(r["maxrss_kb"]) is not None]
    flt = [num(r["minflt"]) for r in good if num(r["minflt"]) is not None]
    cell["median"] = statistics.median(ops) if ops else None
    cell["min"] = min(ops) if ops else None
    cell["max"] = max(ops) if ops else None
    cell["rss"] = statistics.median(rss) if rss else None
    cell["flt"] = statistics.median(flt) if flt else None
    keys = sorted({k for r in good for k in r["extras"]})
    cell["extras"] = {}
    for k in keys:
        vals = [r["extras"][k] for r in good if k in r["extras"]]
        cell["extras"][k] = (statistics.median(vals), min(vals), max(vals))
    return cell


def tidy(v):
    """Whole numbers as ints in the JSON."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def fmt_ops(v):
    if v is None:
        return "-"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return "%.2f%s" % (v / div, suf)
    return "%.0f" % v


def fmt(v, pattern):
    return "-" if v is None else pattern % v


def ratio(a, b):
    return a / b if a is not None and b else None


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def append_sections(md, failures, notes):
    """The Failures and Notes sections, each only when it has lines."""
    for title, lines in (("Failures", failures), ("Notes", notes)):
        if lines:
            md += ["## " + title, ""] + ["- " + l for l in lines] + [""]


# --- servers (bench/servers.sh) ---
SRV_FIELDS = ["server", "alloc", "run", "test", "size", "status", "value", "peak_kb", "detail",
              "cpu"]
SRV_ABOUT = {
    "redis": "redis-server (Debian's, linked with jemalloc 5.3) with --save '' --appendonly no, "
             "pinned to one CPU; redis-benchmark -P 16 -c 50 -t set,get,lpush,lpop -d SIZE on the "
             "other (LPUSH builds one list of N values that LPOP empties: N x SIZE live at the top). "
             "glibc = LD_PRELOAD=libc.so.6 (binds before redis's jemalloc); jemalloc = the same "
             "libjemalloc.so.2 preloaded; jemalloc-linked = no preload.",
    "memcached": "memcached -m 1024 -t 2 -U 0, pinned to one CPU; memaslap (memcaslap) -T 1 -c 16 "
                 "on the other, 40000 operations (200000 with BENCH_FULL; the same work under every "
                 "allocator): keys 16-64 B, values 64 B - 128 KiB, 30% set, 70% get, about 0.8 GB "
                 "set into a 1 GB cache. "
                 "memcached keeps its 1 MiB slab pages after flush_all, so RSS after idle is about "
                 "its peak under every allocator.",
    "postgres": "postgres (Debian's) with fsync=off, pinned to one CPU, on a pgbench cluster of "
                "scale 5 (500,000 accounts); pgbench -c 4 -j 1 on the other CPU, 3 s per test (10 "
                "with BENCH_FULL): select = its select-only script (-S), sort = an in-memory sort "
                "of 20,000 rows by their 84-byte filler per transaction (sort memory of a few MB, "
                "malloc'd and freed each time). A process per connection: peak RSS = the sum of "
                "the processes' anonymous PSS, sampled every 0.1 s; RSS after idle = the same "
                "after the run and the idle wait; requests = transactions, a value size = a script.",
}


def read_servers(path, servers):
    """{(server, alloc, test, size): [record, ...]} plus the order of allocators."""
    cells = {}
    order = []
    if not os.path.exists(path):
        return {"cells": cells, "order": order, "servers": servers}
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            p += [""] * (len(SRV_FIELDS) - len(p))
            r = dict(zip(SRV_FIELDS, p))
            if r["server"] not in servers:
                continue
            r["ok"] = r["status"] == "ok" and r["value"] != ""
            if r["alloc"] not in order:
                order.append(r["alloc"])
            cells.setdefault((r["server"], r["alloc"], r["test"], r["size"]), []).append(r)
    return {"cells": cells, "order": order, "servers": servers}


def srv_alloc_order(srv):
    return srv.get("order", []) if srv else []


def srv_tests(srv, s):
    """(test, size) columns of server s, in the order first seen; idle and start last/out."""
    seen = []
    for (sv, al, t, z) in srv["cells"]:
        if sv == s and t not in ("idle", "start") and (t, z) not in seen:
            seen.append((t, z))
    return seen


def srv_cell(srv, s, al, t, z):
    runs = srv["cells"].get((s, al, t, z), [])
    good = [r for r in runs if r["ok"]]
    bad = [r for r in runs if not r["ok"]]
    bad += [r for r in srv["cells"].get((s, al, "start", "-"), [])]
    vals = [float(r["value"]) for r in good]
    peaks = [float(r["peak_kb"]) for r in good if r["peak_kb"]]
    cpus = [float(r["cpu"]) for r in good if r["cpu"]]
    return {"runs": len(good), "failed": len(bad), "bad": bad,
            "cpu": statistics.median(cpus) if cpus else None,
            "cpu_min": min(cpus) if cpus else None, "cpu_max": max(cpus) if cpus else None,
            "median": statistics.median(vals) if vals else None,
            "min": min(vals) if vals else None, "max": max(vals) if vals else None,
            "peak": statistics.median(peaks) if peaks else None,
            "peak_min": min(peaks) if peaks else None, "peak_max": max(peaks) if peaks else None}


def srv_base(srv, s):
    order = [al for al in srv["order"] if any(k[0] == s and k[1] == al for k in srv["cells"])]
    return "hakmem" if "hakmem" in order else (order[0] if order else None), order


def srv_sizes(tests):
    """The value sizes of tests, each with its first test (a size's tests share one CPU figure)."""
    first = {}
    for t, z in tests:
        first.setdefault(z, t)
    return list(first.items())


def srv_cpu_ratio(srv, s, al, base):
    """Geomean over value sizes of al's server CPU per request over base's."""
    rs = []
    for z, t in srv_sizes(srv_tests(srv, s)):
        c, b = srv_cell(srv, s, al, t, z), srv_cell(srv, s, base, t, z)
        if c["failed"] or b["failed"] or not c["cpu"] or not b["cpu"]:
            return None, 0
        rs.append(c["cpu"] / b["cpu"])
    return geomean(rs), len(rs)


def servers_geomean(srv, al):
    """Throughput, peak RSS and CPU per request geomeans of allocator al vs hakmem over all
    server cells (CPU: over each server's value sizes)."""
    if not srv:
        return None, None, None, 0
    tp, rss, cpu = [], [], []
    for s in srv["servers"]:
        base, order = srv_base(srv, s)
        if al not in order:
            continue
        for t, z in srv_tests(srv, s):
            c, b = srv_cell(srv, s, al, t, z), srv_cell(srv, s, base, t, z)
            if c["failed"] or b["failed"] or not c["median"] or not b["median"]:
                continue
            tp.append(c["median"] / b["median"])
            if c["peak"] and b["peak"]:
                rss.append(c["peak"] / b["peak"])
        for z, t in srv_sizes(srv_tests(srv, s)):
            c, b = srv_cell(srv, s, al, t, z), srv_cell(srv, s, base, t, z)
            if not c["failed"] and not b["failed"] and c["cpu"] and b["cpu"]:
                cpu.append(c["cpu"] / b["cpu"])
    return geomean(tp), geomean(rss), geomean(cpu), len(tp)


def srv_workload(s, t, z):
    return "%s_%s" % (s, t) if z in ("", "-", "64-128k") else "%s_%s_%s" % (s, t, z)


def servers_json(srv):
    out = []
    if not srv:
        return out
    for s in srv["servers"]:
        base, order = srv_base(srv, s)
        unit = {"redis": "req/s", "postgres": "tps"}.get(s, "ops/s")
        for al in order:
            for t, z in srv_tests(srv, s):
                c = srv_cell(srv, s, al, t, z)
                out.append({"workload": srv_workload(s, t, z), "allocator": al, "threads": 1,
                            "peak_rss_kb": c["peak"], "minor_faults": None, "runs": c["runs"],
                            "failed": c["failed"], "status": "crash" if c["failed"] else "ok",
                            "metric": "throughput", "unit": unit, "median": c["median"],
                            "min": c["min"], "max": c["max"], "value_size": z})
            for z, t in srv_sizes(srv_tests(srv, s)):
                c = srv_cell(srv, s, al, t, z)
                out.append({"workload": s, "allocator": al, "threads": 1, "peak_rss_kb": c["peak"],
                            "minor_faults": None, "runs": c["runs"], "failed": c["failed"],
                            "status": "crash" if c["failed"] else "ok",
                            "metric": "cpu_ms_per_1k_requests", "unit": "ms", "median": c["cpu"],
                            "min": c["cpu_min"], "max": c["cpu_max"], "value_size": z})
            idle = srv_cell(srv, s, al, "idle", "-")
            common = {"workload": s, "allocator": al, "threads": 1, "peak_rss_kb": idle["peak"],
                      "minor_faults": None, "runs": idle["runs"], "failed": idle["failed"],
                      "status": "crash" if idle["failed"] else "ok"}
            out.append(dict(common, metric="peak_rss_kb", unit="KiB", median=idle["peak"],
                            min=idle["peak_min"], max=idle["peak_max"]))
            out.append(dict(common, metric="idle_rss_kb", unit="KiB", median=idle["median"],
                            min=idle["min"], max=idle["max"]))
    return out


def servers_md(srv, failures):
    md = []
    if not srv:
        return md
    for s in srv["servers"]:
        base, order = srv_base(srv, s)
        if not order:
            continue
        tests = srv_tests(srv, s)
        sizes = []
        for t, z in tests:
            if z not in sizes:
                sizes.append(z)
        md += ["## %s (server)" % s, ""]
        if s in SRV_ABOUT:
            md += [SRV_ABOUT[s], ""]
        md += ["Median of the runs (interleaved, a fresh server each): requests/s per test and "
               "value size; peak RSS = the server's VmHWM (per value size where there are "
               "several, reset between sizes; `all` = the whole run); RSS after idle = VmRSS "
               "after FLUSHALL / flush_all and %s; vs %s = geometric mean of the throughput "
               "ratios; CPU ms/1k = ms of CPU the server (all its threads) used per 1000 "
               "requests of that value size (schedstat; the other load of a shared machine "
               "moves it far less than requests/s), CPU vs %s = geometric mean of its ratios "
               "over the sizes (above 1: more CPU per request)." % ("the idle wait", base, base),
               ""]
        head = ["allocator"] + ["%s %s" % (t.upper(), z) if z not in ("-", "") else t.upper()
                                for t, z in tests]
        if len(sizes) > 1:
            head += ["peak RSS MiB %s" % z for z in sizes]
        head += ["peak RSS MiB all", "RSS after idle MiB", "vs %s" % base]
        head += ["CPU ms/1k %s" % z if len(sizes) > 1 else "CPU ms/1k" for z in sizes]
        head += ["CPU vs %s" % base]
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + "---|" * len(head))
        for al in order:
            line = [al]
            ratios = []
            peaks = {}
            for t, z in tests:
                c = srv_cell(srv, s, al, t, z)
                if c["failed"]:
                    line.append("CRASH (%d/%d)" % (c["failed"], c["failed"] + c["runs"]))
                    failures += [(s + "_" + t + "_" + z, al, 1, r) for r in c["bad"]]
                    continue
                line.append(fmt_ops(c["median"]))
                peaks.setdefault(z, c["peak"])
                b = srv_cell(srv, s, base, t, z)
                if not b["failed"]:
                    ratios.append(ratio(c["median"], b["median"]))
            if len(sizes) > 1:
                line += [fmt(peaks[z] / 1024 if peaks.get(z) else None, "%.1f") for z in sizes]
            idle = srv_cell(srv, s, al, "idle", "-")
            if idle["failed"]:
                failures += [(s + "_idle", al, 1, r) for r in idle["bad"] if r["test"] == "idle"]
            line += [fmt(idle["peak"] / 1024 if idle["peak"] else None, "%.1f"),
                     fmt(idle["median"] / 1024 if idle["median"] is not None else None, "%.1f"),
                     fmt(geomean(ratios) if len(ratios) == len(tests) else None, "%.2f")]
            for z, t in srv_sizes(tests):
                c = srv_cell(srv, s, al, t, z)
                line.append(fmt(c["cpu"] if not c["failed"] else None, "%.2f"))
            line.append(fmt(srv_cpu_ratio(srv, s, al, base)[0], "%.2f"))
            md.append("| " + " | ".join(line) + " |")
        md.append("")
    return md


def main():
    ap = argparse.ArgumentParser()
    for opt in ("raw", "meta", "notes", "out", "allocs", "threads", "workloads", "chart",
                "chart-data"):
        ap.add_argument("--" + opt, required=True)
    ap.add_argument("--servers-raw", default="")
    ap.add_argument("--servers", default="")
    a = ap.parse_args()
    allocs = a.allocs.split(",")
    threads = [int(t) for t in a.threads.split(",")]
    workloads = [w for w in a.workloads.split(",") if w]
    servers = [s for s in a.servers.split(",") if s]
    srv = read_servers(a.servers_raw, servers) if servers and a.servers_raw else {}
    meta = dict(line.rstrip("\n").split("=", 1) for line in open(a.meta) if "=" in line)
    notes = [line.rstrip("\n") for line in open(a.notes) if line.strip()]

    rows = read_raw(a.raw)
    cells = {}
    for w in workloads:
        for al in allocs:
            for t in threads:
                runs = [r for r in rows if (r["workload"], r["alloc"], r["threads"]) == (w, al, t)]
                if runs:
                    cells[w, al, t] = summarize(runs)

    # Ratios are to hakmem; before hakmem exists, to the first allocator run.
    base = "hakmem" if "hakmem" in allocs else allocs[0]

    def med(w, al, t, key="median"):
        c = cells.get((w, al, t))
        return c[key] if c and not c["failed"] else None

    # JSON: one object per cell and metric.
    out = []
    for (w, al, t), c in cells.items():
        common = {"workload": w, "allocator": al, "threads": t, "peak_rss_kb": c["rss"],
                  "minor_faults": c["flt"], "runs": c["runs"], "failed": c["failed"],
                  "status": "crash" if c["failed"] else "ok"}
        out.append(dict(common, metric="throughput", unit="ops/s", median=c["median"],
                        min=c["min"], max=c["max"]))
        for k, (m, lo, hi) in c["extras"].items():
            out.append(dict(common, metric=k, unit="KiB" if k.endswith("_kb") else "",
                            median=m, min=lo, max=hi))
    out += servers_json(srv)
    out = [{k: tidy(v) for k, v in o.items()} for o in out]
    with open(os.path.join(a.out, "latest.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

    md = ["# hakmem benchmarks", ""]
    md.append("%s, commit %s, %s (%s cpus), kernel %s. %s runs of %s s per cell%s, median; "
              "pinning: %s; took %s s." % (meta.get("date"), meta.get("commit"), meta.get("cpu"),
                                           meta.get("cpus"), meta.get("kernel"), meta.get("runs"),
                                           meta.get("secs"),
                                           " (BENCH_FULL)" if meta.get("full") == "1" else "",
                                           meta.get("pinning"), meta.get("elapsed")))
    md.append("")
    md.append("Columns per thread count: median ops/s, peak RSS (MiB), minor faults, and "
              "throughput relative to %s (above 1 = faster than %s). CRASH = a run crashed, "
              "timed out or detected corruption (see Failures)." % (base, base))
    md.append("")
    failures = []
    for w in workloads:
        md.append("## %s" % w)
        md.append("")
        if w in ABOUT:
            md.append(ABOUT[w])
            md.append("")
        head = ["allocator"]
        for t in threads:
            head += ["ops/s %dT" % t, "RSS MiB %dT" % t, "faults %dT" % t, "vs %s %dT" % (base, t)]
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + "---|" * len(head))
        for al in allocs:
            if not any(cells.get((w, al, t)) for t in threads):
                continue  # a row for other workloads only (hakmem-batch1)
            line = [al]
            for t in threads:
                c = cells.get((w, al, t))
                if not c:
                    line += ["-"] * 4
                    continue
                if c["failed"]:
                    line += ["CRASH (%d/%d)" % (c["failed"], c["failed"] + c["runs"])]
                    line += ["-"] * 3
                    failures += [(w, al, t, r) for r in c["bad"]]
                    continue
                line += [fmt_ops(c["median"]),
                         fmt(c["rss"] / 1024 if c["rss"] is not None else None, "%.1f"),
                         fmt(c["flt"], "%.0f"),
                         fmt(ratio(c["median"], med(w, base, t)), "%.2f")]
            md.append("| " + " | ".join(line) + " |")
        md.append("")
        keys = sorted({k for al in allocs for t in threads
                       for k in (cells.get((w, al, t)) or {"extras": {}})["extras"]})
        if w in SHOWN:
            keys = [k for k in SHOWN[w] if k in keys]
        keys.sort(key=size_order)
        if keys:
            head = ["allocator"] + ["%s %dT" % (extra_head(k), t) for t in threads for k in keys]
            md.append("| " + " | ".join(head) + " |")
            md.append("|" + "---|" * len(head))
            for al in allocs:
                if not any(cells.get((w, al, t)) for t in threads):
                    continue
                line = [al]
                for t in threads:
                    c = cells.get((w, al, t))
                    for k in keys:
                        v = c["extras"].get(k) if c and not c["failed"] else None
                        line.append(fmt_extra(k, v[0] if v else None))
                md.append("| " + " | ".join(line) + " |")
            md.append("")

    md += servers_md(srv, failures)

    md.append("## Summary")
    md.append("")
    md.append("Geometric mean over all workloads and thread counts where both ran cleanly, "
              "relative to %s: throughput above 1 is faster, peak RSS above 1 uses more "
              "memory. The servers (redis, memcached: every test and value size a cell) are "
              "their own columns, not in the first ones; their CPU is the server's per "
              "request (above 1: more CPU)." % base)
    md.append("")
    md.append("| allocator | throughput vs %s | peak RSS vs %s | cells | crashed cells "
              "| servers: throughput vs %s | servers: peak RSS vs %s | server cells "
              "| servers: CPU vs %s |" % (base, base, base, base, base))
    md.append("|---|---|---|---|---|---|---|---|---|")
    srv_allocs = [x for x in srv_alloc_order(srv) if x not in allocs]
    for al in allocs + srv_allocs:
        tp, rss, n = [], [], 0
        crashed = sum(1 for (w, x, t), c in cells.items() if x == al and c["failed"])
        for w in workloads:
            for t in threads:
                r = ratio(med(w, al, t), med(w, base, t))
                if r is None:
                    continue
                n += 1
                tp.append(r)
                rss.append(ratio(med(w, al, t, "rss"), med(w, base, t, "rss")))
        stp, srss, scpu, sn = servers_geomean(srv, al)
        md.append("| %s | %s | %s | %d | %d | %s | %s | %d | %s |" % (
            al, fmt(geomean(tp), "%.2f") if n else "-", fmt(geomean(rss), "%.2f") if n else "-",
            n, crashed, fmt(stp, "%.2f"), fmt(srss, "%.2f"), sn, fmt(scpu, "%.2f")))
    md.append("")

    if a.chart == "yes":
        md.append("![throughput relative to glibc](latest.png)")
        md.append("")
        with open(a.chart_data, "w") as f:
            f.write("case " + " ".join(allocs) + "\n")
            for w in workloads:
                for t in threads:
                    vals = [ratio(med(w, al, t), med(w, "glibc", t)) for al in allocs]
                    f.write("%s/%dT " % (w, t) + " ".join(fmt(v, "%.4f") if v else "?"
                                                          for v in vals) + "\n")

    append_sections(md, ["%s, %s, %sT, run %s: %s" % (w, al, t, r["run"], r["detail"] or r["status"])
                         for w, al, t, r in failures], notes)

    with open(os.path.join(a.out, "latest.md"), "w") as f:
        f.write("\n".join(md))


# Columns of the mode table: header, largeheap field (None: from runone).
MODE_COLS = [
    ("s/round", "s_per_round"),
    ("ops/s", None),
    ("minor faults", "minflt"),
    ("app CPU s", "app_cpu_s"),
    ("helper CPU s", "helper_cpu_s"),
    ("peak RSS MiB", "peak_rss_kb"),
    ("RSS after free MiB", "freed_rss_kb"),
    ("THP MiB live", "thp_kb"),
    ("hugetlb MiB live", "hugetlb_kb"),
    ("purges", "purges"),
    ("uffd faults", "uffd_faults"),
]


def modes_main(argv):
    ap = argparse.ArgumentParser(prog="report.py modes")
    for opt in ("raw", "meta", "notes", "out", "allocs", "threads"):
        ap.add_argument("--" + opt, required=True)
    a = ap.parse_args(argv)
    modes = a.allocs.split(",")
    threads = [int(t) for t in a.threads.split(",")]
    meta = dict(line.rstrip("\n").split("=", 1) for line in open(a.meta) if "=" in line)
    notes = [line.rstrip("\n") for line in open(a.notes) if line.strip()]
    rows = read_raw(a.raw)

    md = ["# hakmem modes: largeheap", ""]
    md.append("%s, commit %s, %s (%s cpus), kernel %s. %s runs per cell, median; pinning: %s; "
              "took %s s." % (meta.get("date"), meta.get("commit"), meta.get("cpu"),
                              meta.get("cpus"), meta.get("kernel"), meta.get("runs"),
                              meta.get("pinning"), meta.get("elapsed")))
    md.append("")
    md.append("bench/largeheap.c under hakmem with one `HAKMEM_*` setting changed per row "
              "(default: all defaults), and mimalloc. %s. Time and minor faults cover the "
              "timed rounds; app CPU is the benchmark's own threads, helper CPU the rest of "
              "the process (background purger, userfaultfd handler, io_uring workers); RSS "
              "after free is read after twice the purge delay idle (RSS does not count "
              "hugetlbfs pages, which hakmem keeps until exit); THP and hugetlb are "
              "sampled with the whole heap live; purges and uffd faults are hakmem's "
              "counters." % ABOUT["largeheap"].split(";")[0])
    md.append("")
    head = ["mode", "threads"] + [h for h, _ in MODE_COLS]
    md.append("| " + " | ".join(head) + " |")
    md.append("|" + "---|" * len(head))
    out, failures = [], []
    for t in threads:
        for m in modes:
            runs = [r for r in rows if r["alloc"] == m and r["threads"] == t]
            if not runs:
                continue
            c = summarize(runs)
            if c["failed"]:
                md.append("| %s | %d | CRASH (%d/%d) |%s" % (m, t, c["failed"], len(runs),
                                                            " - |" * (len(MODE_COLS) - 1)))
                failures += [(m, t, r) for r in c["bad"]]
                continue
            line = [m, str(t)]
            obj = {"mode": m, "threads": t, "runs": c["runs"], "ops_per_s": c["median"],
                   "peak_rss_kb_runone": c["rss"], "minor_faults_runone": c["flt"]}
            for h, k in MODE_COLS:
                if k is None:
                    line.append(fmt_ops(c["median"]))
                    continue
                v = c["extras"].get(k)
                line.append(fmt_extra(k, v[0] if v and v[0] >= 0 else None))
                obj[k] = v[0] if v else None
            md.append("| " + " | ".join(line) + " |")
            out.append({k: tidy(v) for k, v in obj.items()})
    md.append("")
    append_sections(md, ["%s, %dT, run %s: %s" % (m, t, r["run"], r["detail"] or r["status"])
                         for m, t, r in failures], notes)
    with open(os.path.join(a.out, "modes.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(a.out, "modes.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "modes":
        modes_main(sys.argv[2:])
    else:
        main()
