-- The agents that run tasks. Three are seeded: the agent loop picks among them.
CREATE TABLE agents (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO agents (name) VALUES ('planner'), ('coder'), ('reviewer');
