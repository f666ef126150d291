"""Training-data extraction (Carlini et al. 2021): sampling strategies, ranking, dedup and verification
against a suffix-array index of the training data (extract, index), PII found in samples
(pii_findings) and discoverable memorization (discoverable, Carlini et al. 2023).
"""
