"""Paging: reach the human the runbook's "Evaluate" rows need, at least once, never lost."""
