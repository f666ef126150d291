"""Membership inference: per-text scores from per-token statistics (scoring), the signal registry and
its pure signals (signals: LOSS, zlib, lowercase, reference, Min-K%, Min-K%++, ReCaLL, DC-PDD, EZ-MIA, WBC,
RMIA, LiRA, Shokri), shadow models (shadow), ROC metrics at low FPR (metrics) and the model-free
baseline (baseline). Every score is higher = more likely a member.
"""
