"""kNN search cost (:func:`pipeline.infer.retrieval.knn`): time and peak memory against a float16 gallery.

    .venv/bin/python bench/bench_knn.py [--dim 512] [--k 100] [--pairs 1000x100000,...]
                                        [--dtypes float32,bfloat16] [--threads 2] [--faiss]

The full job of the brief (100k queries against a 1M x 512 float16 gallery) is ~5e13 multiply-adds:
too long to run on a shared 2-core CPU, so the script measures (queries x gallery) pairs of a
growing size (default: 1k/2k/5k queries on 100k rows, 1k queries on 300k and 1M rows, 2k on 1M),
fits the cost per multiply-add, checks that time is linear in Q x G x D (the spread of that cost
across the pairs), and extrapolates the full job. Embeddings are random unit vectors generated
here (float16; the gallery is generated once, at the largest size, in chunks).

On a machine shared with other jobs the wall time is inflated; the CPU time (all threads) is
not, so the full job is also given as CPU hours and CPU hours / threads (an idle machine).

Per row: wall and CPU seconds, GMAC/s, the part that is the matrix product alone (one
``query_chunk x chunk_size`` block timed on its own, scaled), and the peak resident memory the
search adds (sampled every 5 ms). ``--faiss``: the same pairs with faiss ``IndexFlatIP`` (exact,
float32 only) when faiss is importable. Then how many of the float32 neighbours the bfloat16
search finds (random vectors: tiny similarity gaps, the worst case for rounding). Prints a table
and a ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peak_rss import PeakRSS  # noqa: E402  (bench/ is on sys.path when a bench script runs)

from pipeline.infer.retrieval import knn  # noqa: E402

DEFAULT_PAIRS = "1000x100000,2000x100000,5000x100000,1000x300000,1000x1000000,2000x1000000"
FULL_Q, FULL_G = 100_000, 1_000_000


def unit_rows(n: int, dim: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """``n`` random unit vectors as float16, generated in chunks (no float32 copy of the whole)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float16)
    for i in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - i), dim), dtype=np.float32)
        out[i : i + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def matmul_rate(dtype: str, dim: int, rows: int = 2048, cols: int = 32768, repeat: int = 3) -> float:
    """GMAC/s of one ``rows x cols`` similarity block alone (best of ``repeat``, wall time)."""
    t = getattr(torch, dtype)
    a, b = torch.randn(rows, dim).to(t), torch.randn(cols, dim).to(t)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeat):
            t0 = time.perf_counter()
            a @ b.T
            best = min(best, time.perf_counter() - t0)
    return rows * cols * dim / best / 1e9


def run_torch(q: np.ndarray, g: np.ndarray, k: int, dtype: str) -> dict:
    with PeakRSS() as mem:
        w0, c0 = time.perf_counter(), time.process_time()
        knn(q, g, k, compute_dtype=dtype)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return dict(wall=wall, cpu=cpu, peak_mb=mem.added_mb)


def run_faiss(q: np.ndarray, g: np.ndarray, k: int) -> dict:
    import faiss

    with PeakRSS() as mem:
        w0, c0 = time.perf_counter(), time.process_time()
        index = faiss.IndexFlatIP(g.shape[1])
        index.add(g.astype(np.float32))  # faiss stores float32: 4 bytes per value
        index.search(q.astype(np.float32), k)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return dict(wall=wall, cpu=cpu, peak_mb=mem.added_mb)


def parse_pairs(text: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        nq, ng = item.lower().split("x")
        pairs.append((int(float(nq)), int(float(ng))))
    return pairs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help="QUERIESxGALLERY,... (default: %(default)s)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes of knn (float32, bfloat16)")
    p.add_argument("--threads", type=int, default=2, help="torch (and faiss) threads")
    p.add_argument("--faiss", action="store_true", help="also time faiss IndexFlatIP (when importable)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pairs, dtypes = parse_pairs(args.pairs), args.dtypes.split(",")
    engines = [("torch", d) for d in dtypes]
    if args.faiss:
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
            engines.append(("faiss", "float32"))
        except ImportError:
            print("faiss is not importable: skipped", file=sys.stderr)

    t0 = time.perf_counter()
    gallery = unit_rows(max(ng for _, ng in pairs), args.dim, seed=0)
    queries = unit_rows(max(nq for nq, _ in pairs), args.dim, seed=1)
    print(f"generated {gallery.shape} + {queries.shape} float16 in {time.perf_counter() - t0:.1f}s", flush=True)
    mm = {d: matmul_rate(d, args.dim) for d in dtypes}

    rows = []
    for engine, dtype in engines:
        for nq, ng in pairs:
            q, g = queries[:nq], gallery[:ng]
            r = run_faiss(q, g, args.k) if engine == "faiss" else run_torch(q, g, args.k, dtype)
            macs = nq * ng * args.dim
            r.update(engine=engine, dtype=dtype, queries=nq, gallery=ng, gmacs=macs / r["wall"] / 1e9)
            r["ns_per_kmac"] = r["wall"] / macs * 1e12  # nanoseconds per 1000 multiply-adds
            rows.append(r)
            print(
                f"{engine:5s} {dtype:8s} Q={nq:>6,} G={ng:>9,}: {r['wall']:7.1f}s wall {r['cpu']:7.1f}s cpu "
                f"{r['gmacs']:6.1f} GMAC/s  +{r['peak_mb']:.0f} MB",
                flush=True,
            )

    print()
    head = f"{'engine':6s} {'dtype':9s} {'queries':>8s} {'gallery':>10s} {'wall s':>8s} {'cpu s':>8s}"
    print(head + f" {'GMAC/s':>7s} {'ns/kMAC':>8s} {'peak +MB':>9s}")
    for r in rows:
        print(
            f"{r['engine']:6s} {r['dtype']:9s} {r['queries']:>8,} {r['gallery']:>10,} {r['wall']:8.1f} {r['cpu']:8.1f} "
            f"{r['gmacs']:7.1f} {r['ns_per_kmac']:8.2f} {r['peak_mb']:9.0f}"
        )
    summary = {}
    full_macs = FULL_Q * FULL_G * args.dim
    print(f"\nscaling (time = c * Q * G * D) and the full job ({FULL_Q:,} queries x {FULL_G:,} x {args.dim}):")
    for engine, dtype in engines:
        mine = [r for r in rows if (r["engine"], r["dtype"]) == (engine, dtype)]
        c = np.array([r["ns_per_kmac"] for r in mine])
        big = [r for r in mine if r["gallery"] == max(x["gallery"] for x in mine)]
        c_big = float(np.median([r["ns_per_kmac"] for r in big]))
        cpu_big = float(np.median([r["cpu"] / (r["queries"] * r["gallery"] * args.dim) for r in big]))
        full_s, full_cpu = c_big * full_macs / 1e12, cpu_big * full_macs
        key = f"{engine}_{dtype}"
        summary[key] = dict(
            ns_per_kmac_median=float(np.median(c)),
            ns_per_kmac_spread=float(c.max() / c.min()),
            full_job_hours=full_s / 3600,
            full_job_cpu_hours=full_cpu / 3600,
            full_job_hours_idle_machine=full_cpu / args.threads / 3600,
            matmul_only_gmacs=mm.get(dtype) if engine == "torch" else None,
        )
        share = f", matrix product alone {mm[dtype]:.0f} GMAC/s" if engine == "torch" else ""
        print(
            f"  {key:15s} c = {np.median(c):.2f} ns per 1000 MACs (max/min over pairs {c.max() / c.min():.2f}){share}; "
            f"full job ~{full_s / 3600:.2f} h wall as measured, {full_cpu / 3600:.2f} CPU-h "
            f"(~{full_cpu / args.threads / 3600:.2f} h on {args.threads} idle cores)"
        )
    agreement = {}
    if "float32" in dtypes and len(dtypes) > 1:
        nq, ng = pairs[0]
        ref = knn(queries[:nq], gallery[:ng], args.k)[1]
        print(f"\nneighbours found by the reduced-precision search vs float32 (Q={nq:,}, G={ng:,}, random vectors):")
        for d in (d for d in dtypes if d != "float32"):
            idx = knn(queries[:nq], gallery[:ng], args.k, compute_dtype=d)[1]
            top1 = float((idx[:, 0] == ref[:, 0]).mean())
            recall = float(np.mean([len(np.intersect1d(a, b)) / args.k for a, b in zip(idx, ref)]))
            agreement[d] = dict(top1_agreement=top1, recall_at_k=recall)
            print(f"  {d}: same nearest neighbour {top1:.1%}, recall of the float32 top-{args.k} {recall:.1%}")
    print(
        "RESULT",
        json.dumps(
            {"dim": args.dim, "k": args.k, "threads": args.threads, "rows": rows, "summary": summary}
            | {"agreement": agreement}
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
