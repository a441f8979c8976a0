-- pgrelay.subscription_pause(subscription) / pgrelay.subscription_resume(subscription):
-- a paused subscription fetches nothing; its cursors stay where they are.
CREATE OR REPLACE FUNCTION pgrelay.subscription_pause(subscription text)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    PERFORM pgrelay._subscription('pgrelay.subscription_pause', subscription_pause.subscription);
    UPDATE pgrelay.subscriptions s SET paused = true, updated_at = now() WHERE s.name = subscription_pause.subscription;
END;
$$;

CREATE OR REPLACE FUNCTION pgrelay.subscription_resume(subscription text)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    PERFORM pgrelay._subscription('pgrelay.subscription_resume', subscription_resume.subscription);
    UPDATE pgrelay.subscriptions s SET paused = false, updated_at = now() WHERE s.name = subscription_resume.subscription;
    PERFORM pgrelay._ring_doorbell('pgrelay.resume');
END;
$$;
