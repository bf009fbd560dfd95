"""Stage 2, prompts: generators (one module per family, registered in the generator registry),
drawing a task's prompts from a spec, and encoding them for one model's tokenizer."""
