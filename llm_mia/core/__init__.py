"""Shared utilities at the bottom of the layers: the error type, file I/O (atomic writes, hashes), progress lines,
the CPU thread policy, the shipped resources and the version. Imports nothing of llm_mia.
"""
