"""Structured output on the worker: grammars compiled against the model's tokenizer, off the step loop."""
