"""Toy tasks with verifiable answers, for the CPU demo: generators, verifiers, a tokenizer."""
