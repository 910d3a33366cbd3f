-- Notices every node relays to its WebSocket subscribers (stream alerts, PO alerts): each row
-- has a rising id per channel (publishers serialize per channel), NOTIFY wakes the listeners,
-- and a listener that lost its connection catches up by id.
CREATE TABLE settled_notices (
    id          BIGSERIAL   PRIMARY KEY,
    channel     TEXT        NOT NULL,
    payload     JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX settled_notices_channel_id ON settled_notices (channel, id);
