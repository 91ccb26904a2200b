"""KALoRA on transformers + peft: shard reader, knowledge modules, trainer."""
