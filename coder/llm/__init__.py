"""Optional generative stage: a causal LM votes on each note's codes, held to the ontology.

``run_llm_stage`` (notes + candidates -> votes and hallucination counts) and ``merge_llm_votes``
(votes -> re-scored predictions) are what the pipeline calls; ``LLMSettings`` configures both.
"""

from coder.llm.merge import merge_llm_votes
from coder.llm.settings import LLMSettings
from coder.llm.stage import LLMStageResult, run_llm_stage
from coder.llm.validate import HallucinationCounts

__all__ = ["HallucinationCounts", "LLMSettings", "LLMStageResult", "merge_llm_votes", "run_llm_stage"]
