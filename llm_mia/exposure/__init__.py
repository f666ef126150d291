"""Exposure of planted secrets (Carlini et al. 2019): rank, exact and extrapolated exposure in bits, and
how much of each secret greedy, beam or sampled decoding gives back (secrets).
"""
