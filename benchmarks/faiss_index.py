"""Recall@10 and queries/s of kalora-kg's approximate entity index (linking.index.build_faiss, HNSW
branch) and of IVF-PQ (with and without an exact re-rank), next to exact search, in one run.

    .venv/bin/python benchmarks/faiss_index.py                                  # 1M x 128, clustered
    .venv/bin/python benchmarks/faiss_index.py --distribution clustered gaussian --hnsw 32:200 16:100

Data are synthetic (make_data): by default clustered like real embeddings (Gaussian cluster centres,
skewed cluster sizes, anisotropic low-effective-rank noise); `--distribution gaussian` runs pure iid
Gaussian vectors, the hardest case for graph/quantised indexes. All vectors are L2-normalised (cosine),
as build_faiss does. The exact reference is IndexFlatIP over the same vectors: its top-10 of every
held-out query is the ground truth. recall@10 = mean fraction of that exact top-10 found in the
approximate top-10. queries/s = all queries in one batched search, median of --repeats; each repeat
is paired with an exact search run just before it and speed-up is the median of the paired ratios
(the exact row's queries/s is the median over all those exact runs), so load from other jobs on a
shared machine hits both sides alike. Build CPU s (all threads) is less load-sensitive than wall s. bytes/entity = len(faiss.serialize_index(index)) / n.
Target: recall@10 >= 0.95 at >= 10x exact queries/s.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from linking import index as linking_index  # noqa: E402

K = 10
TARGET_RECALL, TARGET_SPEEDUP = 0.95, 10.0


def make_data(n: int, dim: int, n_queries: int, *, distribution: str = "clustered", n_clusters: int = 5000,
              cluster_std: float = 0.5, spectrum_decay: float = 1.0, size_skew: float = 1.0, seed: int = 0):
    """(base (n, dim), queries (n_queries, dim)) float32, L2-normalised; queries are separate draws.

    distribution: "gaussian" = iid N(0, 1) coordinates; "clustered" = centre + noise, where
    n_clusters: number of centres, drawn iid N(0, I_dim);
    size_skew: sigma of the log-normal cluster weights (0 = equal sizes; 1 gives a few clusters ~10x
        the median, as entity types are);
    cluster_std: per-coordinate RMS of the noise around a centre (centres have RMS 1);
    spectrum_decay: noise covariance = R diag(lambda) R^T with lambda_i ~ i^-decay (mean 1) and R a
        random rotation, so the local structure has a low effective rank (decay 1 at dim 128: ~18)
        and is not axis-aligned (which would flatter product quantisation);
    seed: numpy Generator seed; the same arguments always give the same arrays.
    """
    rng = np.random.default_rng(seed)
    total = n + n_queries
    if distribution == "gaussian":
        x = rng.standard_normal((total, dim), dtype=np.float32)
    elif distribution == "clustered":
        centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
        weights = rng.lognormal(0.0, size_skew, n_clusters)
        labels = rng.choice(n_clusters, size=total, p=weights / weights.sum())
        lam = np.arange(1, dim + 1, dtype=np.float64) ** -spectrum_decay
        lam *= dim / lam.sum()
        rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        mix = (cluster_std * np.sqrt(lam)[:, None] * rotation.T).astype(np.float32)
        x = np.empty((total, dim), dtype=np.float32)
        for s in range(0, total, 200_000):
            e = min(total, s + 200_000)
            x[s:e] = centres[labels[s:e]] + rng.standard_normal((e - s, dim), dtype=np.float32) @ mix
    else:
        raise ValueError(f"unknown distribution {distribution!r}")
    faiss.normalize_L2(x)
    return x[:n], x[n:]


def timed_search(index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """(seconds of one batched search of all queries, the top-K rows)."""
    start = time.perf_counter()
    _, rows = index.search(queries, K)
    return time.perf_counter() - start, rows


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall s, CPU s of all threads) since a clock()."""
    return time.perf_counter() - start[0], time.process_time() - start[1]


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(rows, truth)])) / K


def size_per_entity(index, n: int) -> float:
    return len(faiss.serialize_index(index)) / n


def log(msg: str, t0=time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def run(dist: str, args) -> list[dict]:
    x, q = make_data(args.n, args.dim, args.queries, distribution=dist, n_clusters=args.clusters,
                     cluster_std=args.cluster_std, seed=args.seed)
    log(f"{dist}: data {x.shape}, queries {q.shape}")
    rows_out: list[dict] = []

    start = clock()
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(x)
    exact_build = since(start)
    _, truth = timed_search(exact, q)  # also the warm-up
    exact_seconds: list[float] = []

    def add(index_name, setting, index, build, nbytes):
        # shared machine: each repeat times exact search right before the candidate; speed-up is the
        # median of these paired ratios, so a busy spell slows both sides alike
        pairs = [(timed_search(exact, q)[0], *timed_search(index, q)) for _ in range(args.repeats)]
        exact_seconds.extend(e for e, _, _ in pairs)
        r = {"dist": dist, "index": index_name, "setting": setting, "recall": recall(pairs[0][2], truth),
             "qps": len(q) / float(np.median([t for _, t, _ in pairs])),
             "speedup": float(np.median([e / t for e, t, _ in pairs])), "build": build, "bytes": nbytes}
        rows_out.append(r)
        log(f"{dist} {index_name} {setting}: recall@10 {r['recall']:.4f}, {r['qps']:,.0f} q/s ({r['speedup']:.1f}x)")

    # the project's index: build_faiss takes the HNSW branch above FLAT_MAX (forced below it for small --n)
    linking_index.FLAT_MAX = min(linking_index.FLAT_MAX, args.n - 1)
    for spec in args.hnsw:
        m, efc = (int(v) for v in spec.split(":"))
        start = clock()
        index, params = linking_index.build_faiss(x, hnsw_m=m, ef_construction=efc)
        build_s = since(start)
        assert params["type"] == "IndexHNSWFlat", params
        log(f"{dist}: HNSW M={m} efConstruction={efc} built in {build_s[0]:.0f}s ({build_s[1]:.0f} CPU s)")
        nbytes = size_per_entity(index, args.n)
        for ef in args.ef_search:
            index.hnsw.efSearch = ef
            add(f"build_faiss HNSW M={m} efC={efc}", f"efSearch={ef}", index, build_s, nbytes)
        del index

    # IVF-PQ (L2 on unit vectors ranks as cosine), then the same index re-ranked by exact distances
    start = clock()
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatL2(args.dim), args.dim, args.nlist, args.pq_m, 8)
    sample = np.random.default_rng(args.seed + 1).choice(args.n, min(args.n, args.train), replace=False)
    ivf.train(x[np.sort(sample)])
    ivf.add(x)
    ivf_build = since(start)
    log(f"{dist}: IVF-PQ built in {ivf_build[0]:.0f}s ({ivf_build[1]:.0f} CPU s)")
    name = f"IVF{args.nlist},PQ{args.pq_m}x8"
    ivf_bytes = size_per_entity(ivf, args.n)
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        add(name, f"nprobe={nprobe}", ivf, ivf_build, ivf_bytes)
    start = clock()
    flat = faiss.IndexFlatL2(args.dim)
    flat.add(x)
    refined = faiss.IndexRefine(ivf, flat)
    refined.k_factor = args.refine_k
    refine_build = tuple(a + b for a, b in zip(ivf_build, since(start)))
    refine_bytes = size_per_entity(refined, args.n)
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        add(f"{name} + RefineFlat k_factor={args.refine_k}", f"nprobe={nprobe}", refined, refine_build, refine_bytes)
    rows_out.insert(0, {"dist": dist, "index": "IndexFlatIP (exact)", "setting": "-", "recall": 1.0, "speedup": 1.0,
                        "qps": len(q) / float(np.median(exact_seconds)), "build": exact_build,
                        "bytes": size_per_entity(exact, args.n)})
    return rows_out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="entities in the index")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=2000, help="held-out queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distribution", nargs="+", choices=("clustered", "gaussian"), default=["clustered"],
                   help="one or both data sets, each a separate block of rows")
    p.add_argument("--clusters", type=int, default=5000)
    p.add_argument("--cluster-std", type=float, default=0.5)
    p.add_argument("--hnsw", nargs="+", default=["32:200"],
                   help="M:efConstruction pairs for build_faiss (32:200 is the project's default)")
    p.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--pq-m", type=int, default=32, help="PQ sub-quantisers (bytes per code)")
    p.add_argument("--train", type=int, default=200_000, help="IVF-PQ training sample")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--refine-k", type=int, default=10, help="IndexRefine k_factor (re-ranks k_factor*10 candidates)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    faiss.omp_set_num_threads(args.threads)

    print(f"<!-- $ {shlex.join([os.path.relpath(sys.executable), *sys.argv])} -->")
    print(f"<!-- faiss {faiss.__version__}, {args.threads} threads, n={args.n:,}, dim={args.dim}, "
          f"{args.queries} queries, seed {args.seed}, target recall@10 >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:.0f}x exact -->\n")
    print("| data | index | setting | recall@10 | queries/s | speed-up | build s (CPU s) | bytes/entity | target |")
    print("|---|---|---|---:|---:|---:|---:|---:|:-:|", flush=True)
    for dist in args.distribution:  # each block is printed as soon as it is measured
        for r in run(dist, args):
            ok = r["recall"] >= TARGET_RECALL and r["speedup"] >= TARGET_SPEEDUP
            print(f"| {r['dist']} | {r['index']} | {r['setting']} | {r['recall']:.4f} | {r['qps']:,.0f} | "
                  f"{r['speedup']:.1f}x | {r['build'][0]:.0f} ({r['build'][1]:.0f}) | {r['bytes']:.0f} | {'yes' if ok else ''} |",
                  flush=True)

if __name__ == "__main__":
    main()
