DROP TABLE task_priorities;
ALTER TABLE agent_tasks DROP COLUMN priority;
