"""Alias table, candidate generation, FAISS entity index, disambiguation and the spaCy ``kg_linker``."""
