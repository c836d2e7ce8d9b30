-- Tasks the agents run. Like the SPEK platform's own schema, integrity is the application's
-- job here: no foreign key to agents and no CHECK constraints. That is what lets a bad release
-- (v2.0.0-corrupt) write rows that only the integrity query (spek_app/integrity.py) finds.
CREATE TABLE agent_tasks (
    id bigserial PRIMARY KEY,
    agent_id integer NOT NULL,
    kind text NOT NULL,
    status text NOT NULL,            -- queued, running, succeeded, failed
    attempts integer NOT NULL DEFAULT 0,
    duration_ms integer,             -- set when the task finishes
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz          -- set exactly when status is succeeded or failed
);

CREATE INDEX agent_tasks_finished_at ON agent_tasks (finished_at);
