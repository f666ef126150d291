"""Privacy auditing: epsilon lower bounds from membership tests on canaries (bounds: one run, Gaussian DP,
Clopper-Pearson) and the canary audit of one training run (canary_audit).
"""
