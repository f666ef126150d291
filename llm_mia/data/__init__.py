"""Texts and what is planted in them: corpus sources and the member / held-out split, text files and chat
rendering, secret formats and their spaces, the near-duplicate rule, PII detectors, and designed canaries
(make and plant). Above models (chat templates and synthetic canaries need a tokenizer or a model).
"""
