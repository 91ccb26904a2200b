"""Id maps, graph statistics, splits, PyKEEN training/evaluation and embedding export."""
