"""Visual instruction data from a text-only teacher, as in the LLaVA paper.

COCO annotations or synthetic-world scenes -> symbolic context (``coco``, ``world_source``)
-> teacher (``teacher``: an OpenAI-compatible LLM or the template teacher, prompted per
response type from ``prompts/``) -> parsed conversations or a rejection (``parser``) ->
resumable JSONL (``store``, ``runner``) -> LLaVA training JSON (``merge``). CLI: ``cli``.
"""
