"""Materialised views: refresh equals squashing everything, atomic writes, merges, bad input."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest
import statsmodels.api as sm

import duckquash
from duckquash.ds.moments import keyed_rows_sql
from duckquash.views import refresh as _views
from duckquash.frontends.cli import main as cli_main

from .conftest import paper_like

ARGS = dict(categorical=["a1", "defected"], quantitative=["x1", "x2", "x3"])
N = 12_000


@pytest.fixture(scope="module")
def data():
    df = paper_like(N, seed=5)
    df["row"] = np.arange(len(df))
    return df


@pytest.fixture
def vcon(data):
    """Table ``full_t``; ``old`` (80%) and ``new`` (20%: rows with a1 = 2 from the last 60%)."""
    con = duckdb.connect()
    con.register("d", data)
    con.execute("CREATE TABLE full_t AS SELECT * FROM d")
    con.unregister("d")
    cut = int(0.4 * N)
    con.execute(f"CREATE TABLE new AS SELECT * FROM full_t WHERE a1 = 2 AND row >= {cut}")
    con.execute(f"CREATE TABLE old AS SELECT * FROM full_t WHERE NOT (a1 = 2 AND row >= {cut})")
    yield con
    con.close()


def _state(con, name="v"):
    """Everything a view stores, as comparable Python values."""
    return {s: con.execute(f'SELECT * FROM "{name}{s}" ORDER BY ALL').fetchall()
            for s in ("__points", "__moments", "__meta", "__batches")}


def _points_by_region(con, name="v"):
    rows = con.execute(f'SELECT * FROM "{name}__points" ORDER BY ALL').fetchall()
    out: dict[int, list] = {}
    for r in rows:
        out.setdefault(r[0], []).append(r)
    return out


def _logit_mse(con, table, full):
    d = con.sql(f"SELECT * FROM {table}").df()
    X = np.column_stack([np.ones(len(d)), d.a1 == 1, d.a1 == 2, d.x1, d.x2, d.x3]).astype(float)
    fit = sm.GLM(d.defected.to_numpy(float), X, family=sm.families.Binomial(), freq_weights=d.weight.to_numpy()).fit()
    return float(np.mean(((fit.params - full.params) / full.bse) ** 2))


def test_materialize_then_refresh_80_20(vcon, data):
    con = vcon
    res = duckquash.materialize(con, "v", "old", **ARGS)
    n_old = con.execute("SELECT count(*) FROM old").fetchall()[0][0]
    assert res.n_rows == n_old
    assert con.execute("SELECT sum(weight) FROM v").fetchall()[0][0] == pytest.approx(n_old, rel=1e-12)
    before = _points_by_region(con)
    rep = duckquash.refresh(con, "v", "new", batch_id="day-2")
    after = _points_by_region(con)
    # weights are frequency weights summing to N overall and to N_r in every region
    assert rep.n_rows == N and rep.n_new_rows == N - n_old
    assert con.execute("SELECT sum(weight) FROM v").fetchall()[0][0] == pytest.approx(N, rel=1e-12)
    per = con.execute("SELECT m.__dq_n, p.w FROM v__moments m JOIN (SELECT __dq_region, sum(weight) w "
                      "FROM v__points GROUP BY 1) p USING (__dq_region)").fetchall()
    assert len(per) == con.execute("SELECT count(*) FROM v__moments").fetchall()[0][0]
    assert all(w == pytest.approx(n, rel=1e-9) for n, w in per)
    # regions without new rows (a1 != 2) keep their points byte for byte; a1 = 2 regions changed
    touched = {r[0] for r in con.execute("SELECT __dq_region FROM v__moments WHERE a1 = 2").fetchall()}
    untouched = set(before) - touched
    assert untouched and touched
    assert all(after[r] == before[r] for r in untouched)
    assert any(after.get(r) != before.get(r) for r in touched)
    assert rep.n_changed_regions == len({r for r in touched if r in after})
    # the stored integer moments equal those of all rows momentized at once with the same plan
    plan = duckquash.view_plan(con, "v")
    once = con.execute(f"SELECT * FROM ({plan.moment_sql('full_t')}) ORDER BY ALL").fetchall()
    stored = con.execute("SELECT * EXCLUDE (__dq_region) FROM v__moments ORDER BY ALL").fetchall()
    assert stored == once
    # logistic regression from the refreshed view is as close to the full fit as a fresh squash
    X = np.column_stack([np.ones(N), data.a1 == 1, data.a1 == 2, data.x1, data.x2, data.x3]).astype(float)
    full = sm.GLM(data.defected.to_numpy(float), X, family=sm.families.Binomial()).fit()
    duckquash.squash(con, "full_t", into="fresh", **ARGS)
    mse_view, mse_fresh = _logit_mse(con, "v", full), _logit_mse(con, "fresh", full)
    assert mse_view < 0.05 and mse_view < 5 * max(mse_fresh, 0.01)


def test_refresh_from_another_process_and_repeats_refused(tmp_path, data):
    db = str(tmp_path / "v.duckdb")
    con = duckdb.connect(db)
    con.register("d", data)
    con.execute("CREATE TABLE part1 AS SELECT * FROM d WHERE row < 9000")
    con.execute("CREATE TABLE part2 AS SELECT * FROM d WHERE row >= 9000")
    con.unregister("d")
    duckquash.materialize(con, "my view", "part1", **ARGS)
    con.close()
    con = duckdb.connect(db)  # a later process: everything needed is in the file
    duckquash.refresh(con, "my view", "part2", batch_id="b2")
    assert con.execute('SELECT sum(weight) FROM "my view"').fetchall()[0][0] == pytest.approx(N)
    state = _state(con, "my view")
    with pytest.raises(duckquash.InputError, match="already folded"):
        duckquash.refresh(con, "my view", "part2")  # same rows, no id: caught by content
    with pytest.raises(duckquash.InputError, match="batch 'b2' was already folded"):
        duckquash.refresh(con, "my view", "SELECT * FROM part2 LIMIT 10", batch_id="b2")
    with pytest.raises(duckquash.InputError, match="already folded"):
        duckquash.refresh(con, "my view", "part1")  # the initial rows count too
    assert _state(con, "my view") == state
    con.close()


def test_interrupted_refresh_leaves_previous_view(vcon, monkeypatch):
    con = vcon
    duckquash.materialize(con, "v", "old", **ARGS)
    state = _state(con)

    def boom(*a, **k):
        raise RuntimeError("injected failure between stages")

    monkeypatch.setattr(_views, "_write_points", boom)  # after the moments were rewritten
    with pytest.raises(RuntimeError, match="injected"):
        duckquash.refresh(con, "v", "new")
    assert _state(con) == state
    monkeypatch.setattr(_views, "log_batch", boom)  # last stage
    monkeypatch.undo()
    monkeypatch.setattr(_views, "log_batch", boom)
    with pytest.raises(RuntimeError, match="injected"):
        duckquash.refresh(con, "v", "new")
    assert _state(con) == state
    assert not con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchall()[0][0]
    monkeypatch.undo()
    rep = duckquash.refresh(con, "v", "new")  # still usable, and the batch was never counted
    assert rep.n_rows == N


def test_bad_input_changes_nothing(vcon):
    con = vcon
    with pytest.raises(duckquash.InputError, match="not a materialised squashed view"):
        duckquash.refresh(con, "old", "new")
    duckquash.materialize(con, "v", "old", **ARGS)
    state = _state(con)
    con.execute("CREATE TABLE lacks AS SELECT * EXCLUDE (x2) FROM new")
    with pytest.raises(duckquash.InputError, match=r"lack column\(s\) \['x2'\]"):
        duckquash.refresh(con, "v", "lacks")
    con.execute("CREATE TABLE other_types AS SELECT * REPLACE (a1::VARCHAR AS a1) FROM new")
    with pytest.raises(duckquash.InputError, match="'a1' is VARCHAR, the view has BIGINT"):
        duckquash.refresh(con, "v", "other_types")
    con.execute("CREATE TABLE far AS SELECT * REPLACE (x1 * 1e6 AS x1) FROM new")
    with pytest.raises(duckquash.InputError, match="rebin=True"):
        duckquash.refresh(con, "v", "far")
    with pytest.raises(duckquash.SourceNotFoundError):
        duckquash.refresh(con, "v", "no_such_table")
    with pytest.raises(duckquash.OutputExistsError):
        duckquash.materialize(con, "v", "old", **ARGS)
    assert _state(con) == state
    rep = duckquash.refresh(con, "v", "SELECT * FROM new WHERE FALSE")
    assert rep.n_new_rows == 0 and _state(con) == state


def test_drift_and_rebin(vcon):
    con = vcon
    duckquash.materialize(con, "v", "old", **ARGS)
    con.execute("CREATE TABLE shifted AS SELECT * REPLACE (x1 + 100 AS x1) FROM new")
    with pytest.raises(duckquash.InputError, match="rebin=True"):
        duckquash.refresh(con, "v", "shifted")
    con.execute("CREATE TABLE shifted_a_bit AS SELECT * REPLACE (x1 + 6 AS x1) FROM new")
    rep = duckquash.refresh(con, "v", "shifted_a_bit", batch_id="b1")
    share = con.execute("SELECT avg((x1 > (SELECT max(x1) FROM old))::INT) FROM shifted_a_bit").fetchall()[0][0]
    assert share > 0.05 and rep.drift_by_column["x1"] == pytest.approx(share) and rep.drift >= share
    rep = duckquash.refresh(con, "v", "shifted", rebin=True, batch_id="b2")
    assert rep.rebinned
    total = N + con.execute("SELECT count(*) FROM new").fetchall()[0][0]
    assert rep.n_rows == total
    assert con.execute("SELECT sum(weight) FROM v").fetchall()[0][0] == pytest.approx(total)
    plan = duckquash.view_plan(con, "v")
    assert plan.observed.maximum[0] == con.execute("SELECT max(x1) FROM shifted").fetchall()[0][0]
    ids = [r[0] for r in con.execute("SELECT batch_id FROM v__batches ORDER BY seq").fetchall()]
    assert ids == ["initial", "b1", "b2"]
    with pytest.raises(duckquash.InputError, match="already folded"):
        duckquash.refresh(con, "v", "shifted_a_bit")


def test_merge_of_partitions_equals_union(vcon):
    con = vcon
    plan = duckquash.squash_plan(con, "full_t", **ARGS)
    p1 = con.sql(plan.moment_sql("old")).to_arrow_table()
    p2 = con.sql(plan.moment_sql("new")).to_arrow_table()
    merged = duckquash.merge_moments(con, plan, [p1, p2])
    union = con.sql(plan.moment_sql("full_t")).to_arrow_table()
    key = lambda t: sorted(t.to_pylist(), key=lambda r: tuple((v is None, v) for v in list(r.values())[:5]))  # noqa: E731
    assert key(merged.select(union.column_names)) == key(union)  # exact: integer sums, k smallest row lists
    a = duckquash.squash_from_moments(con, plan, [p1, p2], into="from_parts")
    b = duckquash.squash_from_moments(con, plan, [union], into="from_union")
    assert a.relation.order("ALL").fetchall() == b.relation.order("ALL").fetchall()
    assert a.n_rows == N
    # the plan travels as JSON to wherever partitions are momentized
    again = duckquash.SquashPlan.from_json(plan.to_json())
    assert again == plan and again.moment_sql("old") == plan.moment_sql("old")
    with pytest.raises(duckquash.InputError, match="not a moment table"):
        duckquash.merge_moments(con, plan, ["old"])


def test_sql_call_and_cli(tmp_path, data):
    db = str(tmp_path / "c.duckdb")
    con = duckdb.connect(db)
    con.register("d", data)
    con.execute("CREATE TABLE part1 AS SELECT * FROM d WHERE row < 9000")
    con.execute("CREATE TABLE part2 AS SELECT * FROM d WHERE row >= 9000 AND row < 10500")
    con.unregister("d")
    con.execute("COPY (SELECT * FROM part2) TO '" + str(tmp_path / "p2.parquet") + "' (FORMAT PARQUET)")
    con.close()
    assert cli_main(["materialize", f"{db}:part1", f"{db}:v", "--categorical", "a1,defected",
                     "--quantitative", "x1,x2,x3"]) == 0
    con = duckquash.connect(db)
    out = con.execute("CALL squash_refresh('v', 'part2', batch_id := 'sql-1')").fetchall()
    assert out[0][1] == "sql-1" and out[0][2] == 1500 and out[0][3] == 10500
    assert con.execute("SELECT sum(weight) FROM v").fetchall()[0][0] == pytest.approx(10500)
    assert con.execute("SELECT count(*) FROM v__batches").fetchall()[0][0] == 2  # ran once
    with pytest.raises(duckdb.Error, match="already folded"):
        con.execute("CALL squash_refresh('v', 'part2')")
    con.close()
    assert cli_main(["refresh", f"{db}:v", str(tmp_path / "p2.parquet"), "--quiet"]) == 2  # same rows again
    con = duckdb.connect(db)
    con.execute("CREATE TABLE part3 AS SELECT * FROM part1 WHERE row < 1000")
    con.close()
    assert cli_main(["refresh", f"{db}:v", f"{db}:part3", "--batch-id", "cli-1", "--quiet"]) == 0
    con = duckdb.connect(db)
    assert con.execute("SELECT sum(weight) FROM v").fetchall()[0][0] == pytest.approx(11500)
    con.close()


def test_linear_model_answered_exactly_from_moments(vcon, data):
    import statsmodels.formula.api as smf

    con = vcon
    duckquash.materialize(con, "v", "old", **ARGS)
    duckquash.refresh(con, "v", "new")
    for formula in ["x1 ~ x2 + x3 + C(a1) + defected", "x1 ~ x2 * x3 + I(x3**2) + C(a1):x2"]:
        res = duckquash.glm_from_moments(con, "v", formula)
        ref = smf.ols(formula, data).fit()
        assert res.n_passes == 0 and "from the stored moments" in res.weight_note
        assert res.nobs == N
        b = dict(zip(res.exog_names, res.params))
        se = dict(zip(res.exog_names, res.bse))
        assert set(b) == set(ref.params.index)
        for k in b:
            assert b[k] == pytest.approx(ref.params[k], rel=1e-8, abs=1e-10 * ref.bse[k])
            assert se[k] == pytest.approx(ref.bse[k], rel=1e-6)
        assert res.scale == pytest.approx(ref.scale, rel=1e-8)
    with pytest.raises(duckquash.NotFromMoments, match="not polynomials"):
        duckquash.glm_from_moments(con, "v", "x1 ~ np.log(x2)")
    with pytest.raises(duckquash.NotFromMoments, match="not polynomials"):
        duckquash.glm_from_moments(con, "v", "x1 ~ I(x2**3)")
    # the public glm answers from the moments when it can, and says so; else it fits the points
    res = duckquash.glm(con, "v", "x1 ~ x2 + x3 + C(a1) + defected")
    assert res.n_passes == 0 and "from the stored moments" in res.summary()
    ref = smf.ols("x1 ~ x2 + x3 + C(a1) + defected", data).fit().params
    assert res.params.to_numpy() == pytest.approx(ref[res.exog_names].values, rel=1e-8)
    res = duckquash.glm(con, "v", "x1 ~ np.log(x2)")
    assert res.n_passes >= 1 and res.weight == "weight" and res.nobs == pytest.approx(N)


def test_small_batch_updates_regions_in_closed_form(vcon, data):
    """A 5% batch: most regions keep their points' shape; mean and covariance stay exact everywhere."""
    con = vcon
    con.execute("CREATE TABLE base AS SELECT * FROM full_t WHERE row % 20 <> 7")
    con.execute("CREATE TABLE extra AS SELECT * FROM full_t WHERE row % 20 = 7")
    duckquash.materialize(con, "v", "base", **ARGS)
    rep = duckquash.refresh(con, "v", "extra")
    assert rep.n_updated_regions > 0 and rep.n_rows == N
    assert con.execute("SELECT sum(weight) FROM v").fetchall()[0][0] == pytest.approx(N, rel=1e-12)
    # per updated region: weighted mean and covariance of the points equal the region's rows'
    plan = duckquash.view_plan(con, "v")
    b = plan.binning
    pts = con.execute("""SELECT m.__dq_n, sum(p.weight), sum(p.weight * p.x1) / sum(p.weight),
                              sum(p.weight * p.x1 * p.x2) / sum(p.weight), sum(p.weight * p.x3 * p.x3) / sum(p.weight),
                              m.__dq_region
                       FROM v__points p JOIN v__moments m USING (__dq_region) GROUP BY m.__dq_n, m.__dq_region""").fetchall()
    keys = ", ".join(f'k."{c}"' for c in plan.key_columns)
    match = " AND ".join(f'k."{c}" IS NOT DISTINCT FROM m."{c}"' for c in plan.key_columns)
    full = con.execute(f"""SELECT count(*), avg(x1), avg(x1 * x2), avg(x3 * x3), m.__dq_region FROM (
                              SELECT * FROM ({keyed_rows_sql('full_t', b, tuple(plan.spec.categorical), ('x1', 'x2', 'x3'))})) k
                           JOIN v__moments m ON {match} GROUP BY m.__dq_region, {keys}""").fetchall()
    by_region = {r[-1]: r for r in full}
    assert len(by_region) == len(pts)
    for n, w, m1, m12, m33, r in pts:
        cnt, a1, a12, a33, _ = by_region[r]
        assert n == cnt and w == pytest.approx(n, rel=1e-12)
        if n > plan.fetch_rows:  # fitted regions: degree <= 2 moments exact (kept rows are exact anyway)
            assert m1 == pytest.approx(a1, rel=1e-7) and m12 == pytest.approx(a12, rel=1e-7)
            assert m33 == pytest.approx(a33, rel=1e-7)


