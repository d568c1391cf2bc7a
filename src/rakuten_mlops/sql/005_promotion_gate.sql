-- The promotion gate's evidence (rakuten_mlops.ml.promotion): its outcome and the
-- paired-bootstrap intervals of the candidate's weighted-F1 gain over the champion and
-- over the plain baseline, on the same test rows. NULL where there was nothing to
-- compare with (no champion yet, decisions recorded before this migration).
ALTER TABLE model_promotions
    ADD COLUMN IF NOT EXISTS gate_outcome          text,
    ADD COLUMN IF NOT EXISTS gain_vs_champion      double precision,
    ADD COLUMN IF NOT EXISTS gain_vs_champion_low  double precision,
    ADD COLUMN IF NOT EXISTS gain_vs_champion_high double precision,
    ADD COLUMN IF NOT EXISTS gain_vs_baseline      double precision,
    ADD COLUMN IF NOT EXISTS gain_vs_baseline_low  double precision,
    ADD COLUMN IF NOT EXISTS gain_vs_baseline_high double precision;
