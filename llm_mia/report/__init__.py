"""Audit reports: JSON (the record), Markdown and self-contained HTML (for people), figures."""
