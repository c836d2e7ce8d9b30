-- v1.1.0: every task created through the API leaves an audit row.
CREATE TABLE audit_logs (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    task_id bigint
);

CREATE INDEX audit_logs_at ON audit_logs (at);
