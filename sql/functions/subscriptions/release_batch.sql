-- pgrelay.release_batch(subscription, partition_index, lease_token): give a leased batch back
-- unhandled (graceful shutdown): the cursor stays, the next fetch delivers the batch again.
CREATE OR REPLACE FUNCTION pgrelay.release_batch(subscription text, partition_index integer, lease_token bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    PERFORM pgrelay._lease('pgrelay.release_batch', release_batch.subscription, release_batch.partition_index, release_batch.lease_token);
    UPDATE pgrelay.subscription_partitions p
       SET lease_owner = NULL, lease_expires_at = NULL,
           inflight_xids = '{}', inflight_positions = '{}', inflight_retries = '{}',
           inflight_ahead_xids = '{}', inflight_ahead_positions = '{}'
     WHERE p.subscription = release_batch.subscription AND p.partition_index = release_batch.partition_index;
END;
$$;
