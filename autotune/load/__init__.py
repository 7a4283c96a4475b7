"""Load generator: build exact-length prompts, stream them at a server, summarise.

Arrivals are a closed loop (fixed concurrency) or an open loop (Poisson or
gamma gaps at a rate); lengths are fixed, uniform, normal or lognormal; every
run reports the load generator's own CPU use and whether it kept its schedule.

Typical use::

    tokenizer, vocab = load_tokenizer(model_dir)
    specs = build_requests(workload, tokenizer, vocab,
                           count=workload.warmup_requests + workload.num_requests)
    result = run_load(base_url, model, specs, workload)
    figures = summarize(result)
"""

from autotune.load.client import CompletionsClient, RequestRecord
from autotune.load.prompts import PromptTokenizer, build_requests, load_tokenizer
from autotune.load.runner import LoadResult, run_load, run_load_async
from autotune.load.schedule import arrival_offsets, poisson_offsets
from autotune.load.stats import (
    Summary,
    generator_verdict,
    per_request_view,
    summarize,
    t95,
)
from autotune.load.workload import Lengths, RequestSpec, Workload, load_dataset

__all__ = [
    "CompletionsClient",
    "Lengths",
    "LoadResult",
    "PromptTokenizer",
    "RequestRecord",
    "RequestSpec",
    "Summary",
    "Workload",
    "arrival_offsets",
    "build_requests",
    "generator_verdict",
    "load_dataset",
    "load_tokenizer",
    "per_request_view",
    "poisson_offsets",
    "run_load",
    "run_load_async",
    "summarize",
    "t95",
]
