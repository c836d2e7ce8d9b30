"""The rollback executor: the runbook as code, safe for the database."""
