-- pgrelay._saga_event(saga, type, extra): publish a saga lifecycle message on topic
-- 'saga.<type>' keyed by the saga id, so subscriptions can observe sagas in order.
CREATE OR REPLACE FUNCTION pgrelay._saga_event(p_saga pgrelay.sagas, p_type text, p_extra jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pgrelay.publish('saga.' || p_saga.saga_type, p_saga.id::text, p_type,
                            jsonb_build_object('saga_id', p_saga.id, 'saga_type', p_saga.saga_type) || coalesce(p_extra, '{}'),
                            '{}');
END;
$$;
