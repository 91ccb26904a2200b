"""Ablation: does the KG knowledge help? base+LoRA alone versus KALoRA, same budget, on a KG
question task built from held-out facts (PyKEEN's bundled UMLS, no download).

    .venv/bin/python benchmarks/kalora_ablation.py --seeds 0 1 2 3 4   # the figures in BENCHMARKS.md
    .venv/bin/python benchmarks/kalora_ablation.py --seeds 0 1 --eval-split valid --steps 600   # choose a budget
    .venv/bin/python benchmarks/kalora_ablation.py --seeds 0 --pretrain-steps 50 --steps 60   # smoke run

Protocol (fixed before the first run):
- Facts: PyKEEN's UMLS split. Training text is built from the *training* triples only; the test
  triples are the questions and never appear in any text, tokenizer corpus or embedding training.
- KG embeddings: ComplEx trained by ``kg.training.train_model`` (the code ``kalora embed`` runs) on
  the training triples, validation triples for early stopping only.
- Base model: a 2-layer GPT-2 (d=128) built from a config and pre-trained (all weights) on the
  training facts as statements ("X isa Y."), shared by both arms of a seed. No hub model is used.
- Task: "Question: X <relation> what? Answer: Y." Each test triple is scored against 9 wrong
  tails drawn uniformly from the entities that are not a true tail of (X, relation) in any split
  (filtered); the prediction is the candidate whose answer tokens have the highest summed
  log-likelihood (lm-eval's ``acc``; the length-normalised ``acc_norm`` is reported too). Chance: 10 %.
- Same budget: both arms take the same number of optimiser steps, batch size, learning rate,
  base model and LoRA (r=8, alpha=16, c_attn). base+LoRA: all steps on the question form of the
  training facts. KALoRA: stage 1 (knowledge modules only, statements) for ``--stage1-steps`` of
  them, then stage 2 (LoRA + knowledge modules + domain adapter, question form, task loss + 0.5 ×
  knowledge loss) for the rest. Spans are linked as the shards link them (both entities).
- Reported per seed and pooled: accuracy with a 95 % bootstrap interval over test questions;
  ComplEx alone ranking the same candidates is printed for context.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from model.config import AdapterConfig, ModelConfig, StageConfig
from model.data import collate, spans_to_token_entities
from model.kalora import KALoRAModel, build_base_model
from model.loop import run_loop
from model.tokenizer import train_bpe_tokenizer

QUESTION = "Question: {head} {rel} what? Answer:"


def label(name: str) -> str:
    return name.replace("_", " ")


def load_umls():
    from pykeen.datasets import UMLS

    ds = UMLS()
    ents = {i: label(n) for n, i in ds.training.entity_to_id.items()}
    rels = {i: label(n) for n, i in ds.training.relation_to_id.items()}
    split = {k: f.mapped_triples.numpy() for k, f in
             (("train", ds.training), ("valid", ds.validation), ("test", ds.testing))}
    return ds, ents, rels, split


def train_complex(ds, epochs: int, cache: str | None):
    """ComplEx vectors (row 0 = padding) and its tail scores for every test (head, relation);
    cached as a plain .npz (no pickle) because training takes minutes on a loaded 2-core machine."""
    import os

    if cache and os.path.exists(cache):
        data = np.load(cache, allow_pickle=False)
        if int(data["epochs"]) == epochs:
            return data["tail_scores"], torch.from_numpy(data["vectors"]), float(data["mrr"])
    from kg.config import MODEL_CONFIGS
    from kg.evaluate import filtered_rank_metrics
    from kg.training import train_model
    from pykeen.triples import CoreTriplesFactory

    config = MODEL_CONFIGS["complex"](valid_max_triples=None, eval_max_triples=None, num_epochs=epochs)
    tr = ds.training.mapped_triples
    factory = CoreTriplesFactory(tr, num_entities=ds.num_entities, num_relations=ds.num_relations,
                                 create_inverse_triples=config.inverse_triples)
    known = torch.cat([tr, ds.validation.mapped_triples, ds.testing.mapped_triples]).numpy()
    model, _, _ = train_model(config, factory, ds.validation.mapped_triples.numpy(), known, ds.num_relations, None,
                              progress=False)
    mrr = filtered_rank_metrics(model, ds.testing.mapped_triples.numpy(), known, ds.num_relations)["mrr"]
    with torch.no_grad():
        x = model.entity_representations[0](indices=None).detach()
    x = torch.cat([x.real, x.imag], -1).float() if x.is_complex() else x.float()
    vectors = torch.cat([torch.zeros(1, x.shape[1]), x])  # our index 0 is padding; PyKEEN's 0 becomes 1
    model.eval()
    with torch.no_grad():
        tail_scores = model.predict_t(ds.testing.mapped_triples[:, :2]).float().numpy()
    if cache:
        np.savez(cache, vectors=vectors.numpy(), tail_scores=tail_scores, mrr=mrr, epochs=epochs)
    return tail_scores, vectors, mrr


def statement(h, r, t, ents, rels):
    head, tail = ents[h], ents[t]
    text = f"{head} {rels[r]} {tail}."
    ts = len(head) + 1 + len(rels[r]) + 1
    return text, [{"start": 0, "end": len(head), "entity_index": h + 1},
                  {"start": ts, "end": ts + len(tail), "entity_index": t + 1}]


def question(h, r, t, ents, rels):
    prompt = QUESTION.format(head=ents[h], rel=rels[r])
    hs = prompt.index(ents[h])
    text = f"{prompt} {ents[t]}."
    return text, len(prompt), [{"start": hs, "end": hs + len(ents[h]), "entity_index": h + 1},
                               {"start": len(prompt) + 1, "end": len(prompt) + 1 + len(ents[t]), "entity_index": t + 1}]


def encode(tok, text, spans, answer_from=None):
    enc = tok(text, return_offsets_mapping=True)
    item = {"input_ids": enc["input_ids"], "entity_ids": spans_to_token_entities(enc["offset_mapping"], spans)}
    if answer_from is not None:
        item["loss_mask"] = [int(s >= answer_from and e > s) for s, e in enc["offset_mapping"]]
    return item


def batches(rows, batch_size, pad_id, seed):
    def gen(skip):
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(rows))
            for i in range(0, len(order) - batch_size + 1, batch_size):
                yield collate([rows[j] for j in order[i:i + batch_size]], pad_id)
    return gen


def lm_compute(model, use_knowledge, knowledge_weight=0.0):
    def compute(batch):
        if not use_knowledge:
            out, _, _ = model(**batch, use_knowledge=False)
            return out.loss, {"lm_loss": out.loss.item()}
        out, k_loss, _ = model(**batch)
        return out.loss + knowledge_weight * k_loss, {"lm_loss": out.loss.item(), "knowledge_loss": k_loss.item()}
    return compute


def pretrain_base(tok, statements, steps, batch_size, seed):
    from transformers import GPT2LMHeadModel

    config = build_base_model(ModelConfig(n_layer=2, n_head=4, n_embd=128), len(tok), tok.pad_token_id).config
    torch.manual_seed(seed)  # build_base_model always seeds 0: a fresh initialisation per seed
    base = GPT2LMHeadModel(config)
    wrapper = KALoRAModel(base, torch.zeros(2, 4), "none", 4)
    opt = torch.optim.AdamW(base.parameters(), lr=1e-3, weight_decay=0.01)
    hist = run_loop("pretrain", wrapper, opt, StageConfig(max_steps=steps, batch_size=batch_size, warmup_steps=20),
                    batches(statements, batch_size, tok.pad_token_id, seed), lm_compute(wrapper, False))
    return base, hist[-1]["lm_loss"]


def lora_arm(base, vectors, qa_rows, tok, args, seed):
    torch.manual_seed(seed)
    model = KALoRAModel(copy.deepcopy(base), vectors, "umls", 4, domain_adapter_rank=0)
    model.base.requires_grad_(False)
    model.add_adapter(AdapterConfig(r=8, alpha=16, dropout=0.05, target_modules=("c_attn",)), args.steps)
    opt = torch.optim.AdamW([p for p in model.base.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    cfg = StageConfig(max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=20)
    hist = run_loop("base+LoRA", model, opt, cfg, batches(qa_rows, args.batch_size, tok.pad_token_id, seed + 1),
                    lm_compute(model, False))
    return model, hist


def kalora_arm(base, vectors, qa_rows, stmt_rows, tok, args, seed):
    from model.adapters import parameter_groups

    torch.manual_seed(seed)
    model = KALoRAModel(copy.deepcopy(base), vectors, "umls", 4, domain_adapter_rank=8)
    model.base.requires_grad_(False)
    model.domain_adapter.requires_grad_(False)
    opt = torch.optim.AdamW(model.knowledge_parameters(), lr=args.lr, weight_decay=0.01)
    cfg1 = StageConfig(max_steps=args.stage1_steps, batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=10)
    h1 = run_loop("KALoRA stage 1", model, opt, cfg1, batches(stmt_rows, args.batch_size, tok.pad_token_id, seed + 2),
                  lm_compute(model, True, 1.0))
    steps2 = args.steps - args.stage1_steps
    model.domain_adapter.requires_grad_(True)
    model.add_adapter(AdapterConfig(r=8, alpha=16, dropout=0.05, target_modules=("c_attn",)), steps2)
    opt = torch.optim.AdamW(parameter_groups(model, args.lr, 0.01))
    cfg2 = StageConfig(max_steps=steps2, batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=20)
    h2 = run_loop("KALoRA stage 2", model, opt, cfg2, batches(qa_rows, args.batch_size, tok.pad_token_id, seed + 1),
                  lm_compute(model, True, 0.5))
    return model, h1 + h2


def candidate_sets(split, num_entities, k, seed, which="test"):
    known: dict[tuple[int, int], set[int]] = {}
    for arr in split.values():
        for h, r, t in arr.tolist():
            known.setdefault((h, r), set()).add(t)
    rng = np.random.default_rng(1000 + seed)
    out = []
    for h, r, t in split[which].tolist():
        pool = [e for e in range(num_entities) if e not in known[(h, r)]]
        out.append((h, r, [t] + rng.choice(pool, size=min(k - 1, len(pool)), replace=False).tolist()))
    return out


@torch.no_grad()
def score(model, tok, cands, ents, rels, use_knowledge, batch=256):
    model.eval()
    items, lengths = [], []
    for h, r, cs in cands:
        for c in cs:
            text, answer_from, spans = question(h, r, c, ents, rels)
            it = encode(tok, text, spans, answer_from)
            items.append(it)
            lengths.append(max(1, sum(it["loss_mask"])))
    logps = []
    for i in range(0, len(items), batch):
        b = collate(items[i:i + batch], tok.pad_token_id)
        mask = (b["labels"] != -100).long()
        logps.append(model.sequence_logprobs(b["input_ids"], b["attention_mask"], b["entity_ids"], mask,
                                             use_knowledge=use_knowledge))
    logp = torch.cat(logps).numpy()
    k = len(cands[0][2])
    total = logp.reshape(-1, k)
    norm = (logp / np.array(lengths)).reshape(-1, k)
    return (total.argmax(1) == 0).astype(float), (norm.argmax(1) == 0).astype(float)


def kg_only(tail_scores, cands):
    """ComplEx alone on the same candidates (row i of ``tail_scores`` is test triple i)."""
    return np.array([float(int(tail_scores[i][cs].argmax()) == 0) for i, (_, _, cs) in enumerate(cands)])


def ci(x, seed=0, n=2000):
    rng = np.random.default_rng(seed)
    means = [x[rng.integers(0, len(x), len(x))].mean() for _ in range(n)]
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1200,
                    help="optimiser steps per arm (KALoRA: stage 1 + stage 2); 1200 was chosen on the validation "
                         "questions (--eval-split valid: 300 → +4.9, 600 → +9.3, 1200 → +14.4 points, seeds 0-1)")
    ap.add_argument("--stage1-steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--kg-epochs", type=int, default=100, help="ComplEx epochs (tuned config, early stopping)")
    ap.add_argument("--kg-cache", default=".pykeen/kalora_ablation_complex.npz",
                    help="ComplEx vectors/scores cache (.npz); '' disables")
    ap.add_argument("--out", help="write the per-seed results as JSON here")
    ap.add_argument("--eval-split", choices=("test", "valid"), default="test",
                    help="ask the held-out questions of this split; 'valid' is for choosing settings (e.g. the "
                         "step budget) without looking at the test questions")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ds, ents, rels, split = load_umls()
    tail_scores, vectors, mrr = train_complex(ds, args.kg_epochs, args.kg_cache or None)
    print(f"UMLS: {len(ents)} entities, {len(rels)} relations, train/valid/test {len(split['train'])}/"
          f"{len(split['valid'])}/{len(split['test'])}; ComplEx on the training triples: filtered test MRR {mrr:.3f} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    train = split["train"].tolist()
    stmts = [statement(h, r, t, ents, rels) for h, r, t in train]
    qas = [question(h, r, t, ents, rels) for h, r, t in train]
    tok = train_bpe_tokenizer([s for s, _ in stmts] + [q for q, _, _ in qas], vocab_size=2000)
    stmt_rows = [encode(tok, s, sp) for s, sp in stmts]
    qa_rows = [encode(tok, q, sp, a) for q, a, sp in qas]
    results = []
    for seed in args.seeds:
        t = time.perf_counter()
        base, base_loss = pretrain_base(tok, stmt_rows, args.pretrain_steps, args.batch_size, seed)
        cands = candidate_sets(split, len(ents), args.candidates, seed, args.eval_split)
        lora, _ = lora_arm(base, vectors, qa_rows, tok, args, seed)
        kal, _ = kalora_arm(base, vectors, qa_rows, stmt_rows, tok, args, seed)
        acc_l, norm_l = score(lora, tok, cands, ents, rels, False)
        acc_k, norm_k = score(kal, tok, cands, ents, rels, True)
        kg = kg_only(tail_scores, cands) if args.eval_split == "test" else np.array([np.nan])
        row = {"seed": seed, "lora": ci(acc_l, seed), "kalora": ci(acc_k, seed), "lora_norm": float(norm_l.mean()),
               "kalora_norm": float(norm_k.mean()), "complex_only": float(kg.mean()), "base_lm_loss": base_loss,
               "seconds": time.perf_counter() - t, "per_question": {"lora": acc_l.tolist(), "kalora": acc_k.tolist()}}
        results.append(row)
        print(f"seed {seed}: base+LoRA {row['lora'][0]:.3f} [{row['lora'][1]:.3f}, {row['lora'][2]:.3f}]  "
              f"KALoRA {row['kalora'][0]:.3f} [{row['kalora'][1]:.3f}, {row['kalora'][2]:.3f}]  "
              f"(acc_norm {row['lora_norm']:.3f} vs {row['kalora_norm']:.3f}; ComplEx alone {row['complex_only']:.3f}; "
              f"{row['seconds']:.0f} s)", flush=True)
    pooled_l = np.concatenate([np.array(r["per_question"]["lora"]) for r in results])
    pooled_k = np.concatenate([np.array(r["per_question"]["kalora"]) for r in results])
    diff = np.array([r["kalora"][0] - r["lora"][0] for r in results])
    pl, pk = ci(pooled_l), ci(pooled_k)
    print(f"pooled over {len(results)} seeds × {len(split[args.eval_split])} {args.eval_split} questions: base+LoRA {pl[0]:.3f} "
          f"[{pl[1]:.3f}, {pl[2]:.3f}], KALoRA {pk[0]:.3f} [{pk[1]:.3f}, {pk[2]:.3f}]; KALoRA − LoRA per seed "
          f"{', '.join(f'{d * 100:+.1f}' for d in diff)} points (mean {diff.mean() * 100:+.1f}); "
          f"total {time.perf_counter() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "complex_test_mrr": mrr, "results": results}, fh)


if __name__ == "__main__":
    main()
