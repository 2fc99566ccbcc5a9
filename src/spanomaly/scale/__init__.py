"""Scale-out: the batch work of the trace pipeline run per Parquet partition on Dask."""
