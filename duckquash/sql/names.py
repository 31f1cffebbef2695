"""Internal column and object names, defined once.

Every name duckquash adds to a query or a database starts with :data:`PREFIX`, which user
column names may not use (checked at the API boundary), so internal and user names never clash.
"""
from __future__ import annotations

import uuid

PREFIX = "__dq_"

# the moment table (one row per region)
N_COL = "__dq_n"  # rows in the region
ROWS_COL = "__dq_rows"  # the sorted value lists of a tiny region's rows (NULL for larger regions)
REGION = "__dq_region"  # region id of a materialised view's stored moments and points
OLD_REGION = "__dq_old"  # a refreshed region's id before the refresh

# region keys besides the categoricals: HypRect bin_col(j); adaptive MISS, LEAF; Data Spheres MISS, LAYER, PYR, PYR2
MISS, LAYER, PYR, PYR2 = "__dq_miss", "__dq_layer", "__dq_pyr", "__dq_pyr2"
LEAF = "__dq_leaf"  # adaptive regions: the row's leaf in its cell's tree
ROOT_COL = "__dq_root"  # adaptive regions: the root node of a cell's tree (in the cells table)


def value_col(j: int) -> str:
    """The j-th quantitative column as DOUBLE, NaN as NULL."""
    return f"__dq_v_{j}"


def z_col(j: int) -> str:
    """The j-th quantitative column standardised: (x - center) / scale."""
    return f"__dq_z_{j}"


def bin_col(j: int) -> str:
    """HypRect: the quantile bin of the j-th quantitative column."""
    return f"__dq_bin_{j}"


def min_col(j: int) -> str:
    return f"__dq_min_{j}"


def max_col(j: int) -> str:
    return f"__dq_max_{j}"


def moment_col(e: tuple[int, ...]) -> str:
    """The power sum of monomial ``e`` (exponent per quantitative column)."""
    return "__dq_m_" + "_".join(str(p) for p in e)


def temp_name(kind: str) -> str:
    """A fresh name for a temporary view or table (registered Arrow data, TEMP tables)."""
    return f"{PREFIX}{kind}_{uuid.uuid4().hex[:12]}"
