"""Serving-time defences and limits: the attacks run through what a restricted API returns (output_limits:
top-k, rounded, label-only, query limits) and MemGuard's adversarial noise (memguard).
"""
