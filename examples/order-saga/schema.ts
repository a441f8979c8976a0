// The shop's own tables and the SQL steps of the order saga. Every step is idempotent: a retry,
// or a compensation of a step whose outcome is unknown (a worker that timed out), is safe.
// Kept as a string so the built example (dist/examples) carries it.
export const SHOP_SCHEMA = `
CREATE SCHEMA IF NOT EXISTS shop;

CREATE TABLE IF NOT EXISTS shop.inventory (sku text PRIMARY KEY, available integer NOT NULL CHECK (available >= 0));
CREATE TABLE IF NOT EXISTS shop.reservations (
    order_id text PRIMARY KEY, sku text NOT NULL REFERENCES shop.inventory, quantity integer NOT NULL, released boolean NOT NULL DEFAULT false);
CREATE TABLE IF NOT EXISTS shop.accounts (customer text PRIMARY KEY, balance numeric NOT NULL CHECK (balance >= 0));
CREATE TABLE IF NOT EXISTS shop.payments (
    order_id text PRIMARY KEY, customer text NOT NULL REFERENCES shop.accounts, amount numeric NOT NULL, refunded boolean NOT NULL DEFAULT false);
CREATE TABLE IF NOT EXISTS shop.orders (order_id text PRIMARY KEY, status text NOT NULL);

-- Reserve the order's items: fails (and the saga compensates) when there are not enough.
CREATE OR REPLACE FUNCTION shop.reserve_inventory(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM shop.reservations r WHERE r.order_id = input ->> 'order_id' AND r.released) THEN
        RAISE EXCEPTION 'order % was released', input ->> 'order_id';  -- a late attempt after the compensation
    END IF;
    IF EXISTS (SELECT 1 FROM shop.reservations r WHERE r.order_id = input ->> 'order_id') THEN
        RETURN jsonb_build_object('reserved', input -> 'quantity');  -- already done by an earlier attempt
    END IF;
    UPDATE shop.inventory i SET available = i.available - (input ->> 'quantity')::int
     WHERE i.sku = input ->> 'sku' AND i.available >= (input ->> 'quantity')::int;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'out of stock: % x %', input ->> 'quantity', input ->> 'sku';
    END IF;
    INSERT INTO shop.reservations (order_id, sku, quantity) VALUES (input ->> 'order_id', input ->> 'sku', (input ->> 'quantity')::int);
    RETURN jsonb_build_object('reserved', input -> 'quantity');
END $$;

-- Compensation: put the items back, once. With no reservation (the action's outcome was unknown
-- and it never happened) it leaves a released marker, so a late attempt cannot reserve after it.
CREATE OR REPLACE FUNCTION shop.release_inventory(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_reservation shop.reservations;
BEGIN
    UPDATE shop.reservations r SET released = true WHERE r.order_id = input ->> 'order_id' AND NOT r.released
    RETURNING * INTO v_reservation;
    IF NOT FOUND THEN
        INSERT INTO shop.reservations (order_id, sku, quantity, released)
        VALUES (input ->> 'order_id', input ->> 'sku', 0, true) ON CONFLICT (order_id) DO NOTHING;
        IF FOUND THEN
            RETURN '{}';
        END IF;
        -- A reservation committed while we waited on its key: release that one.
        UPDATE shop.reservations r SET released = true WHERE r.order_id = input ->> 'order_id' AND NOT r.released
        RETURNING * INTO v_reservation;
    END IF;
    IF v_reservation.order_id IS NOT NULL THEN
        UPDATE shop.inventory i SET available = i.available + v_reservation.quantity WHERE i.sku = v_reservation.sku;
    END IF;
    RETURN '{}';
END $$;

-- Charge the customer: fails when the balance is too low. In the TypeScript version a worker calls
-- this as if it were a payment provider; in the SQL-only version the saga calls it directly.
-- input.flaky_attempts makes the first attempts fail, as a provider that times out would.
CREATE OR REPLACE FUNCTION shop.charge_account(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce((context ->> 'attempt')::int, 1) <= coalesce((input ->> 'flaky_attempts')::int, 0) THEN
        RAISE EXCEPTION 'payment provider unavailable (attempt %)', context ->> 'attempt';
    END IF;
    IF EXISTS (SELECT 1 FROM shop.payments p WHERE p.order_id = input ->> 'order_id' AND p.refunded) THEN
        RAISE EXCEPTION 'order % was refunded', input ->> 'order_id';  -- a late attempt after the compensation
    END IF;
    IF EXISTS (SELECT 1 FROM shop.payments p WHERE p.order_id = input ->> 'order_id') THEN
        RETURN jsonb_build_object('charged', input -> 'amount');
    END IF;
    UPDATE shop.accounts a SET balance = a.balance - (input ->> 'amount')::numeric
     WHERE a.customer = input ->> 'customer' AND a.balance >= (input ->> 'amount')::numeric;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SH402',
            MESSAGE = format('insufficient funds: %s cannot pay %s', input ->> 'customer', input ->> 'amount');
    END IF;
    INSERT INTO shop.payments (order_id, customer, amount) VALUES (input ->> 'order_id', input ->> 'customer', (input ->> 'amount')::numeric);
    RETURN jsonb_build_object('charged', input -> 'amount');
END $$;

-- Compensation: refund, once. With no payment it leaves a refunded marker, so a charge that
-- arrives late (a worker that timed out and came back) is refused.
CREATE OR REPLACE FUNCTION shop.refund_account(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_payment shop.payments;
BEGIN
    UPDATE shop.payments p SET refunded = true WHERE p.order_id = input ->> 'order_id' AND NOT p.refunded
    RETURNING * INTO v_payment;
    IF NOT FOUND THEN
        INSERT INTO shop.payments (order_id, customer, amount, refunded)
        VALUES (input ->> 'order_id', input ->> 'customer', 0, true) ON CONFLICT (order_id) DO NOTHING;
        IF FOUND THEN
            RETURN '{}';
        END IF;
        -- A charge committed while we waited on its key: refund that one.
        UPDATE shop.payments p SET refunded = true WHERE p.order_id = input ->> 'order_id' AND NOT p.refunded
        RETURNING * INTO v_payment;
    END IF;
    IF v_payment.order_id IS NOT NULL THEN
        UPDATE shop.accounts a SET balance = a.balance + v_payment.amount WHERE a.customer = v_payment.customer;
    END IF;
    RETURN '{}';
END $$;

-- Confirm the order: the last step, atomic with the saga's completion.
CREATE OR REPLACE FUNCTION shop.confirm_order(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shop.orders (order_id, status) VALUES (input ->> 'order_id', 'confirmed')
    ON CONFLICT (order_id) DO UPDATE SET status = 'confirmed';
    RETURN jsonb_build_object('confirmed', true);
END $$;
`;
