"""Evaluation over any OpenAI-compatible endpoint (ours by default).

``client``: async chat client with bounded concurrency, retries and counters;
``relative`` + ``judge``: LLaVA-Bench-style judge-scored relative score; ``scienceqa`` +
``scienceqa_format``: multiple choice with an optional judge ensemble; ``report``: JSON +
Markdown reports; ``cli``: the ``eval`` subcommand (its ``shapes`` task is
``train.builtin.shapes_bench.run_eval_task``).
"""
