"""nst-export: write the servable SavedModel (installed as the `nst_export` package)."""
