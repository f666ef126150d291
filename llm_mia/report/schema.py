"""The audit report's schema: its version, read by the release gate and written by the audit.

``report.json["schema_version"]`` is :data:`SCHEMA_VERSION`; a report of another version is refused
by :func:`llm_mia.audit.policy.load_report`. It lives in ``report/`` so the gate and the renderers
need nothing from ``audit/``.
"""

SCHEMA_VERSION = 1
