"""spek-sentinel: the SPEK Platform rollback runbook as an unattended service."""

__version__ = "0.1.0"
