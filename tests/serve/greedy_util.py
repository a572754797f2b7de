"""transformers' greedy continuation and its log-softmax, the oracle of the logprobs and completions tests."""

from __future__ import annotations

import torch


def reference(hf_tiny, prompt_ids: list[int], steps: int):
    """transformers' greedy tokens after prompt_ids and the log-softmax at each generated position."""
    model, _ = hf_tiny
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, eos_token_id=None)
    new = out.sequences[0, len(prompt_ids):].tolist()
    return new, [torch.log_softmax(l[0].float(), -1) for l in out.logits]
