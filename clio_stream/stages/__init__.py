"""Pipeline stages shared by the batch run and living clusters: each a function over typed data."""
