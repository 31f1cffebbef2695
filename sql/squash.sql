-- duckquash SQL entry point, installed per connection by duckquash.install(con).
-- {udf} is replaced by the name of the Python function that runs the pipeline on a cursor and
-- returns the path of a Parquet file holding the squashed rows; the macro reads that file, so
-- the calling statement sees the result whatever transaction it runs in.
-- method := NULL picks 'adaptive' ('hyprect' when bins is given, 'datasphere' when layers is).
-- method := 'lds' squashes for a stated model: formula, family, size (pseudo-points), iterations, init,
-- profiles ('auto' or 'exact'), refine, points (pseudo-points per cluster, 1 or 2), calibrate.
CREATE OR REPLACE TEMP MACRO squash(
    src,
    categorical := []::VARCHAR[],
    quantitative := []::VARCHAR[],
    method := NULL,
    alpha := 1.0,
    weight := 'weight',
    seed := 0,
    bins := NULL,
    layers := NULL,
    formula := '',
    family := 'binomial',
    size := 0,
    iterations := 1,
    init := 'sample',
    profiles := 'auto',
    refine := false,
    points := 2,
    calibrate := true
) AS TABLE
    SELECT * FROM read_parquet({udf}(src::VARCHAR, categorical::VARCHAR[], quantitative::VARCHAR[],
                                     method::VARCHAR, alpha::DOUBLE, weight::VARCHAR, seed::BIGINT,
                                     bins::INTEGER, layers::INTEGER, formula::VARCHAR, family::VARCHAR,
                                     size::BIGINT, iterations::INTEGER, init::VARCHAR, profiles::VARCHAR,
                                     refine::BOOLEAN, points::INTEGER, calibrate::BOOLEAN,
                                     txid_current()::BIGINT));
