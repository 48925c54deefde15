-- Backfill reads a Stripe account list by list; each list's cursor (the last object handled,
-- Stripe's `starting_after`) is kept here so that an interrupted run continues where it
-- stopped. A finished run removes its cursors. `run_id` attributes the run's facts.
CREATE TABLE backfill_cursors
(
    scope          text PRIMARY KEY,
    run_id         text    NOT NULL,
    starting_after text,
    done           integer NOT NULL DEFAULT 0,
    updated_at_ms  integer NOT NULL
) STRICT;

-- Saved views carry the version of their shape: a build that writes another shape rebuilds
-- them from the log instead of trusting (or refusing) them. `generation` moves whenever the
-- views are rebuilt, so running servers reload them without a restart.
ALTER TABLE projector_checkpoints ADD COLUMN view_version integer NOT NULL DEFAULT 1;
ALTER TABLE projector_checkpoints ADD COLUMN generation integer NOT NULL DEFAULT 0;
