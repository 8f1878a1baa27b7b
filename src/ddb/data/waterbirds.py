"""Renamed to ddb.data.dataset: it reads every format's table (Waterbirds, CelebA, MetaShift),
not Waterbirds' alone. This stub only says where it went."""

raise ImportError(
    "ddb.data.waterbirds was renamed ddb.data.dataset (it reads every format's table); "
    "import from ddb.data.dataset"
)
