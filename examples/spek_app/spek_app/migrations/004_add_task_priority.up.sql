-- v2.0.0-badmigration only (the other releases migrate up to 003 at most).
-- Fails halfway: the first three statements succeed, the backfill names a table that does not
-- exist (task_priority, not task_priorities). The runner runs the file in one transaction, so
-- nothing of it stays and the database is left at version 3.
ALTER TABLE agent_tasks ADD COLUMN priority integer NOT NULL DEFAULT 3;

CREATE TABLE task_priorities (
    level integer PRIMARY KEY,
    label text NOT NULL UNIQUE
);

INSERT INTO task_priorities (level, label) VALUES (1, 'urgent'), (3, 'normal'), (5, 'low');

UPDATE agent_tasks t SET priority = p.level FROM task_priority p WHERE p.label = t.kind;
