"""Audit reports: JSON (the record), Markdown (for people)."""
