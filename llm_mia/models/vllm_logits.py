"""Carlini et al. 2021's decaying temperature as a vLLM (0.32, V1 engine) custom logits processor.

Imported only by :mod:`llm_mia.models.vllm_engine` (it imports vLLM). vLLM builds the class once per
engine (``LLM(logits_processors=[TemperatureDecayProcessor])``); a request turns it on with
``SamplingParams(extra_args={EXTRA_ARG: [start, end, steps]})`` and every other request is left
alone. The processor runs before vLLM's own temperature and top-k (it is not argmax-invariant in
vLLM's sense only because vLLM then also runs it for greedy requests, which never carry the arg).
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from llm_mia.models.generation import TemperatureDecay

#: the ``SamplingParams.extra_args`` key: ``[start, end, steps]`` of :class:`TemperatureDecay`
EXTRA_ARG = "llm_mia_temperature_decay"


def decay_row(decay: TemperatureDecay):
    """The per-request function vLLM calls as ``f(output_ids, logits)``: ``logits / T(len(output_ids))``.

    ``output_ids`` are the request's generated tokens so far (vLLM keeps the list up to date), so
    the i-th new token is drawn at T(i), the same schedule as the HF engine's processor.
    """

    def apply(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        return logits / decay.temperature(len(output_ids))

    return apply


class TemperatureDecayProcessor(AdapterLogitsProcessor):
    """Per-request :class:`~llm_mia.models.generation.TemperatureDecay` inside vLLM's sampler."""

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        args = (params.extra_args or {}).get(EXTRA_ARG)
        if args is None:
            return None
        start, end, steps = args
        return decay_row(TemperatureDecay(0, start=start, end=end, steps=steps))
