"""Exposure of planted secrets (Carlini et al. 2019): the estimators in bits (``estimators``: rank, exact,
skew-normal extrapolation, queries to extract) and scoring a secret's space and its extraction by greedy, beam or
sampled decoding (``secrets``).
"""
