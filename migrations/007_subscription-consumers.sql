-- pgrelay 007: live consumers of a subscription, so that several consumers (daemons) share its
-- partitions fairly. fetch_batch and extend_lease keep a consumer's seen_at fresh; a consumer not
-- seen for the subscription's lease_seconds no longer counts. A consumer may take a new partition
-- lease only while it holds fewer than ceil(partitions / live consumers) of them.

-- Up Migration

CREATE TABLE pgrelay.subscription_consumers (
    subscription text        NOT NULL REFERENCES pgrelay.subscriptions (name) ON DELETE CASCADE,
    consumer     text        NOT NULL,
    seen_at      timestamptz NOT NULL,
    PRIMARY KEY (subscription, consumer)
);

-- Down Migration

DROP TABLE pgrelay.subscription_consumers;
