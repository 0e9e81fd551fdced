"""qhybrid's tests (a package: an installed dependency ships a top-level `tests` package)."""
