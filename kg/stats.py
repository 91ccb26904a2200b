"""Graph statistics with networkx: degrees, connected components, relation counts."""

from __future__ import annotations

from collections import Counter

import networkx as nx
import numpy as np


def graph_stats(triples: np.ndarray, relation_labels: dict[int, str] | None = None) -> dict:
    graph = nx.Graph()
    graph.add_edges_from(map(tuple, triples[:, [0, 2]].tolist()))
    degrees = np.array([d for _, d in graph.degree()], dtype=np.int64)
    components = sorted((len(c) for c in nx.connected_components(graph)), reverse=True)
    rel_counts = Counter(triples[:, 1].tolist())
    labels = relation_labels or {}
    return {
        "nodes_with_edges": graph.number_of_nodes(),
        "undirected_edges": graph.number_of_edges(),
        "degree": {
            "mean": float(degrees.mean()) if len(degrees) else 0.0,
            "median": float(np.median(degrees)) if len(degrees) else 0.0,
            "max": int(degrees.max()) if len(degrees) else 0,
            "p99": float(np.percentile(degrees, 99)) if len(degrees) else 0.0,
        },
        "components": {"count": len(components), "largest": components[0] if components else 0,
                       "sizes_top5": components[:5]},
        "relation_counts": {labels.get(r, str(r)): int(c) for r, c in rel_counts.most_common()},
    }
