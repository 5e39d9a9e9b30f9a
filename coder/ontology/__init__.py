"""ICD-10-CM (FY2026) and ICD-10-PCS (FY2024): canonical forms, status, descriptions, hierarchy.

    ont = load_ontology()                      # or load_ontology(Path("codes.tsv"))
    ont.lookup("n448")                         # CodeInfo(canonical="N44.8", status="billable", ...)
"""

from coder.ontology.ontology import CodeInfo, Ontology, canonical_codes, load_ontology
from coder.ontology.syntax import infer_system, normalize

__all__ = ["CodeInfo", "Ontology", "canonical_codes", "infer_system", "load_ontology", "normalize"]
