"""coder: ICD-10-CM / ICD-10-PCS clinical coding for nightly note dumps."""

__version__ = "0.1.0"
