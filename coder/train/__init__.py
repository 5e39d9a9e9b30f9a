"""Training PLM-ICD: labels from notes + codes, the AdamW loop, thresholds tuned on dev."""
