-- Durable subscriptions: a checkpoint per name, moved forward by SaveCheckpoint.
CREATE TABLE subscriptions (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL DEFAULT 0 CHECK (position >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
