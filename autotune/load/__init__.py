"""Load generator: build exact-length prompts, stream them at a server, summarise.

Typical use::

    tokenizer, vocab = load_tokenizer(model_dir)
    specs = build_requests(workload, tokenizer, vocab,
                           count=workload.warmup_requests + workload.num_requests)
    result = run_load(base_url, model, specs, workload)
    figures = summarize(result)
"""

from autotune.load.client import CompletionsClient, RequestRecord
from autotune.load.runner import LoadResult, poisson_offsets, run_load, run_load_async
from autotune.load.stats import per_request_view, summarize
from autotune.load.workload import PromptTokenizer, RequestSpec, Workload, build_requests, load_tokenizer

__all__ = [
    "CompletionsClient",
    "LoadResult",
    "PromptTokenizer",
    "RequestRecord",
    "RequestSpec",
    "Workload",
    "build_requests",
    "load_tokenizer",
    "per_request_view",
    "poisson_offsets",
    "run_load",
    "run_load_async",
    "summarize",
]
