"""The integrity check for the app's data: the number of agent_tasks rows no good release
writes. Zero on a healthy database; v2.0.0-corrupt makes it grow with every task it finishes.

Point spek-sentinel's postgres probe at it (``[probes.database.signals.integrity_violations]``,
``sql = ...``) to drive the ``integrity_violations`` rule.
"""

INTEGRITY_SQL = """\
SELECT count(*) FROM agent_tasks t
WHERE NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = t.agent_id)
   OR t.status NOT IN ('queued', 'running', 'succeeded', 'failed')
   OR t.attempts < 0
   OR t.duration_ms < 0
   OR t.finished_at < t.created_at
   OR (t.status IN ('succeeded', 'failed')) <> (t.finished_at IS NOT NULL)"""
