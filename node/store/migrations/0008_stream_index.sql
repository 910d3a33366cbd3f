-- The stream index shared by every node (#21): written block by block by the holder of the
-- index's lease, each block in one fenced transaction with its undo record and the cursor; read
-- by every node. States are the index's JSON (exact integers as text).
CREATE TABLE settled_stream_cursor (
    vault BYTEA PRIMARY KEY,
    number BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    at BIGINT NOT NULL
);

CREATE TABLE settled_streams (
    vault BYTEA NOT NULL,
    id BIGINT NOT NULL,
    payer BYTEA NOT NULL,
    payee BYTEA NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (vault, id)
);
CREATE INDEX settled_streams_by_payer ON settled_streams (vault, payer, id);
CREATE INDEX settled_streams_by_payee ON settled_streams (vault, payee, id);

-- A stream's state after each block that changed it, by the block's second.
CREATE TABLE settled_stream_history (
    vault BYTEA NOT NULL,
    id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    block BIGINT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (vault, id, at, block)
);

-- The recent blocks' undo records (the touched streams as they were), for reorgs.
CREATE TABLE settled_stream_undo (
    vault BYTEA NOT NULL,
    number BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    undo TEXT NOT NULL,
    PRIMARY KEY (vault, number, hash)
);
