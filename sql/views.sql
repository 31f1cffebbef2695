-- duckquash materialised views in SQL, installed per connection by duckquash.install(con).
-- {udf} is replaced by the name of the Python function that refreshes the view on a cursor (its
-- own transaction, committed before the CALL returns) and returns a JSON report.
-- CALL squash_refresh('view', 'new_rows_table_or_file', batch_id := 'day-2', rebin := false);
CREATE OR REPLACE TEMP MACRO squash_refresh(name, src, batch_id := NULL, rebin := false) AS TABLE
    SELECT r->>'name' AS name,
           r->>'batch_id' AS batch_id,
           (r->>'n_new_rows')::BIGINT AS new_rows,
           (r->>'n_rows')::BIGINT AS total_rows,
           (r->>'n_changed_regions')::BIGINT AS changed_regions,
           (r->>'n_points')::BIGINT AS points,
           (r->>'drift')::DOUBLE AS drift,
           r->>'summary' AS summary
    FROM (SELECT {udf}(name::VARCHAR, src::VARCHAR, batch_id::VARCHAR, rebin::BOOLEAN)::JSON AS r);
