"""Concrete models: hashed n-grams, embeddings, LLMs (``llm/``) and a label-column stand-in.

Each module registers its kinds when imported; :mod:`tiered.plugins` says which module
provides which kind, so a model's module (and its heavy libraries) is imported only when
a cascade uses it.
"""
