-- Extensions and helpers shared by every later migration.
-- gen_random_uuid() is built into PostgreSQL 13+; nothing to install.
CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
