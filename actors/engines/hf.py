"""Hugging Face `generate` engine for actors (CPU by default).

Samples `n` completions per prompt with `model.generate` and returns, per sample, the
completion token ids, the behaviour log-probabilities log μ(y_t | x, y_<t) and the entropy
of μ at each step. μ is exactly the distribution the token was drawn from:

    μ_t = softmax(warp(z_t))      z_t = raw logits of the model at step t
    warp = divide by temperature, then top-p truncation (tokens outside the nucleus
           get -inf, so μ_t is the truncated distribution renormalised over the nucleus)
    greedy (temperature 0): μ_t = softmax(z_t), the argmax token is taken

It is read from the processed scores `generate` sampled from (`output_scores`), with a
GenerationConfig built here from scratch, and the model's own generation config blanked,
so that nothing in the folder's generation_config.json (top_k, repetition penalty, ...)
changes the distribution. With top_p = 1 this equals log_softmax(z_t / T), which a
teacher-forced pass reproduces.

Prompts are token ids (the learner renders them, protocol/prompts.py; a plain string is
encoded raw), left-padded with the shared padding rule (protocol/tokens.py). Generation
stops at every eos id of the tokenizer and the folder's generation/model configs, and at
the optional stop strings; `completion_length` cuts each row where it stopped. The model
runs in float32 whatever the folder's dtype (bf16 values convert exactly), so its canary
matches the learner's.

Weights are swapped in place from verified safetensors snapshots (`protocol.weights`).

With `hidden_k` it also returns each token's projected last-layer hidden state
(`protocol.summaries`: the input of the output embedding at the position whose logits
μ_t came from, times the shared fixed projection R [H, k], float16), captured by a
forward pre-hook on the output embedding, so no [layers, B, L, H] stack is kept.

What this does NOT do: talk to the hub, batch across calls, or run on vLLM (see
actors/engines/vllm.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from protocol.summaries import project, projection
from protocol.tokens import check_stop_strings, completion_length, eos_ids, pad_id
from protocol.weights import (
    MANIFEST,
    WeightsError,
    canary_logprob,
    canonical_tensors,
    load_verified,
    param_digest,
    verify_snapshot,
)

Prompt = str | list[int]  # token ids as the learner rendered them, or a text encoded raw


@dataclass
class Sample:
    token_ids: np.ndarray  # int32 [T] completion tokens, incl. the final eos if it stopped
    logprobs: np.ndarray  # float32 [T] log μ(y_t | x, y_<t) under the sampling distribution
    entropy: np.ndarray | None  # float32 [T] entropy of μ_t (nats); None: engine cannot give it
    text: str  # decoded completion without special tokens
    finish_reason: str  # "stop" (emitted eos) or "length"
    hidden: np.ndarray | None = None  # float16 [T, k] projected hidden states; None unless asked


def behaviour_stats(scores: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log μ_t(y_t) and H(μ_t) from processed scores.

    scores: [B, T, V] warped logits (may hold -inf for truncated tokens); tokens: [B, T].
    Computed in float64: logp = log_softmax(scores); H = -Σ_v p_v logp_v with 0·(-inf) := 0.
    Returns ([B, T], [B, T]) float64.
    """
    logp = torch.log_softmax(scores.to(torch.float64), dim=-1)  # [B, T, V]
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    entropy = -plogp.sum(-1)  # [B, T]
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return chosen, entropy


class _StopStrings(StoppingCriteria):
    """Done per row once its generated tail contains a stop string (protocol.tokens rule)."""

    def __init__(self, prompt_len: int, stop: tuple[str, ...], decode):
        self.prompt_len, self.stop, self.decode = prompt_len, stop, decode

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tails = input_ids[:, self.prompt_len:].tolist()
        done = [any(s in self.decode(t) for s in self.stop) for t in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFEngine:
    """One HF causal LM held in memory; generate, swap weights, report digest and canary."""

    def __init__(self, folder: Path, *, threads: int = 1, seed: int = 0, device: str = "cpu",
                 stop: tuple[str, ...] = ()):
        folder = Path(folder)
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.version = 0
        if (folder / MANIFEST).exists():
            self.version = int(verify_snapshot(folder)["version"])
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.pad_id = pad_id(self.tokenizer)
        self.eos_ids = eos_ids(self.tokenizer, folder)
        self.stop = check_stop_strings(stop)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(self.device).eval()
        self.model.generation_config = GenerationConfig()  # the folder's sampling defaults never apply
        self._aliases = _alias_names(self.model)
        # Own RNG stream: generate() draws from the global torch RNG, so we swap our
        # state in and out around each call; results depend only on `seed` and the calls.
        torch.manual_seed(seed)
        self._cpu_rng = torch.get_rng_state()
        self._cuda_rng = None
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
            self._cuda_rng = torch.cuda.get_rng_state(self.device)

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompts: list[Prompt],
        n: int,
        *,
        temperature: float,
        top_p: float = 1.0,
        max_new_tokens: int,
        batch_size: int = 64,
        hidden_k: int | None = None,
    ) -> list[list[Sample]]:
        """n samples for each prompt (result[i] belongs to prompts[i]).

        prompts: token ids (as rendered by the learner) or texts (encoded raw).
        temperature 0 is greedy: each prompt is decoded once and copied n times.
        Rows (prompt repeated n times) are processed batch_size at a time.
        hidden_k: also return projected hidden states [T, hidden_k] per sample.
        """
        prompts = [self.tokenizer(p)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]
        if n < 1 or max_new_tokens < 1 or batch_size < 1:
            raise ValueError("n, max_new_tokens and batch_size must be >= 1")
        if temperature < 0 or not (0.0 < top_p <= 1.0):
            raise ValueError("need temperature >= 0 and 0 < top_p <= 1")
        greedy = temperature == 0
        reps = 1 if greedy else n
        rows = [i for i in range(len(prompts)) for _ in range(reps)]
        samples: list[Sample] = []
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.set_rng_state(self._cpu_rng)
            if self._cuda_rng is not None:
                torch.cuda.set_rng_state(self._cuda_rng, self.device)
            for start in range(0, len(rows), batch_size):
                chunk = [prompts[i] for i in rows[start : start + batch_size]]
                samples.extend(self._generate_batch(chunk, greedy, temperature, top_p, max_new_tokens, hidden_k))
            self._cpu_rng = torch.get_rng_state()
            if self._cuda_rng is not None:
                self._cuda_rng = torch.cuda.get_rng_state(self.device)
        out: list[list[Sample]] = [[] for _ in prompts]
        for row, s in zip(rows, samples):
            out[row].append(s)
        if greedy:
            out = [[s] + [_copy(s) for _ in range(n - 1)] for [s] in out]
        return out

    def _generation_config(self, greedy: bool, temperature: float, top_p: float, max_new: int):
        kw = dict(
            max_new_tokens=max_new,
            pad_token_id=self.pad_id,
            eos_token_id=list(self.eos_ids),
            output_scores=True,
            output_logits=True,
            return_dict_in_generate=True,
            use_cache=True,
        )
        if greedy:
            return GenerationConfig(do_sample=False, **kw)
        return GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, **kw)

    def _left_pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """input_ids / attention_mask [B, P], left-padded with the shared pad id."""
        P = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (P - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate_batch(self, rows, greedy, temperature, top_p, max_new, hidden_k=None) -> list[Sample]:
        enc = self._left_pad(rows)
        P = enc["input_ids"].shape[1]
        gc = self._generation_config(greedy, temperature, top_p, max_new)
        criteria = StoppingCriteriaList([_StopStrings(P, self.stop, self._decode)] if self.stop else [])
        steps: list[torch.Tensor] = []  # per forward: [B, k] projected state of the last position
        hook = None
        if hidden_k is not None:
            head = self.model.get_output_embeddings()
            r = projection(head.in_features, hidden_k).to(self.device)
            hook = head.register_forward_pre_hook(lambda _m, args: steps.append(project(args[0][:, -1, :], r)))
        try:
            out = self.model.generate(**enc, generation_config=gc, stopping_criteria=criteria)
        finally:
            if hook is not None:
                hook.remove()
        gen = out.sequences[:, P:]  # [B, T] completion ids, pad after the end
        scores = torch.stack(out.scores, dim=1)  # [B, T, V] warped logits μ was drawn from
        logp, ent = behaviour_stats(scores, gen)  # [B, T], [B, T]
        gen_np = gen.cpu().numpy()
        logp_np = logp.cpu().numpy()
        ent_np = ent.cpu().numpy()
        hid_np = torch.stack(steps[: gen.shape[1]], dim=1).cpu().numpy() if hook is not None else None  # [B, T, k]
        result = []
        for b in range(gen_np.shape[0]):
            T, stop = completion_length(gen_np[b].tolist(), self.eos_ids, self.stop, self._decode)
            token_ids = gen_np[b, :T].astype(np.int32)
            result.append(
                Sample(
                    token_ids=token_ids,
                    logprobs=logp_np[b, :T].astype(np.float32),
                    entropy=ent_np[b, :T].astype(np.float32),
                    text=self._decode(token_ids.tolist()),
                    finish_reason="stop" if stop else "length",
                    hidden=None if hid_np is None else hid_np[b, :T].copy(),
                )
            )
        return result

    # ------------------------------------------------------------------ weights

    def load_weights(self, folder: Path, manifest_sha256: str | None = None) -> None:
        """Verify the snapshot's checksums, then copy its tensors into the model in place.

        The snapshot must hold exactly the model's canonical tensors (a tied output
        embedding is stored once, under the input embedding's name, and loads through it).
        Raises WeightsError (weights untouched) when the snapshot is corrupted or its
        tensor names/shapes differ from the model's; nothing is copied before both pass.
        """
        folder = Path(folder)
        manifest, state = load_verified(folder, manifest_sha256)
        own = canonical_tensors(self.model.state_dict().items())
        missing = sorted(own.keys() - state.keys())
        extra = sorted(state.keys() - own.keys())
        if missing or extra:
            raise WeightsError(
                f"snapshot {folder} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for name, t in state.items():
            if tuple(t.shape) != tuple(own[name].shape):
                raise WeightsError(
                    f"snapshot {folder}: {name} has shape {tuple(t.shape)}, model has {tuple(own[name].shape)}"
                )
        with torch.no_grad():
            result = self.model.load_state_dict(state, strict=False)
        if result.unexpected_keys or set(result.missing_keys) - self._aliases:
            raise WeightsError(f"snapshot {folder}: load_state_dict left {result}")  # cannot happen after the checks
        self.version = int(manifest["version"])

    def digest(self) -> str:
        """param_digest of the canonical parameters and persistent buffers now held."""
        return param_digest(self.model.state_dict().items())

    def canary(self) -> float:
        return canary_logprob(self.model, self.tokenizer)


def _alias_names(model) -> set[str]:
    """state_dict names that share their tensor with an earlier name (tied weights)."""
    state = model.state_dict()
    return set(state) - set(canonical_tensors(state.items()))


def _copy(s: Sample) -> Sample:
    return Sample(s.token_ids.copy(), s.logprobs.copy(), s.entropy.copy(), s.text, s.finish_reason,
                  None if s.hidden is None else s.hidden.copy())
