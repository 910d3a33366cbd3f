-- Settlement shared by every node: the period cursor with the open period and the lowest
-- second usage reports are still accepted for (one row: a round's close locks it, and every
-- report holds it shared, so no report lands in a period after it was read), the batches (their
-- JSON, as the embedded store keeps them), the usage reports, the purchase orders and each PO
-- line's last alerted state.
CREATE TABLE settled_settlement_meta (
    one            BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    period_end     BIGINT  NOT NULL,
    next_batch_id  BIGINT  NOT NULL,
    open_period    BYTEA,
    usage_floor    BIGINT  NOT NULL
);
INSERT INTO settled_settlement_meta (one, period_end, next_batch_id, open_period, usage_floor)
VALUES (true, 0, 1, NULL, 1);

CREATE TABLE settled_batches (
    id    BIGINT PRIMARY KEY,
    body  BYTEA  NOT NULL
);

CREATE TABLE settled_usage_reports (
    at      BIGINT NOT NULL,
    stream  BIGINT NOT NULL,
    digest  BYTEA  NOT NULL,
    PRIMARY KEY (at, stream, digest)
);

CREATE TABLE settled_purchase_orders (
    payer   BYTEA NOT NULL,
    number  TEXT  NOT NULL,
    body    BYTEA NOT NULL,
    PRIMARY KEY (payer, number)
);

CREATE TABLE settled_order_alerts (
    key    BYTEA PRIMARY KEY,
    state  TEXT  NOT NULL
);
