"""Optional generative stage: a causal LM votes on each note's codes, held to the assignable-code rule.

``coder.llm.vote`` is the stage the pipeline calls; ``backends`` load or reach the model,
``prompt`` cuts notes into prompts, ``constrain`` holds decoding to the allowed codes, ``validate``
judges every answer, ``settings`` configures it all.
"""
