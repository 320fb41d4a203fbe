-- Schema version 2: the latest progress line an agent reported for a delegation
-- (engine.liveness: text, at, count), replaced by each new one.

CREATE TABLE progress (
    run_id      text NOT NULL,
    sub         boolean NOT NULL,
    line        jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, sub)
);
