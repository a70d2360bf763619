"""Torch models (TorchScript and torch.export archives, transformers causal LMs). The only
module that imports torch (and transformers).

The module is called with one positional argument per signature input, in signature order, and
returns a tensor, a tuple/list of tensors (signature output order) or a dict by output name.
BYTES inputs arrive as a flat `List[str]`; a BYTES output is returned as `List[str]`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kinfer_runtime.model import GenerativeSignature, ModelConfigError, Signature
from kinfer_runtime.protocol.errors import ModelFailed
from kinfer_runtime.protocol.v2_types import NUMPY_DTYPE, TensorSpec
from kinfer_runtime.scheduler import SamplingParams

TORCH_DTYPE: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TorchModel:
    def __init__(self, path: Path, signature: Signature, device: str = "auto") -> None:
        self.signature = signature
        self.device = pick_device(device)
        self._torch_device = torch.device(self.device)
        try:
            with warnings.catch_warnings():
                # torch >= 2.9 deprecates TorchScript loudly; it is still a format we serve
                warnings.simplefilter("ignore", FutureWarning)
                module = self._load(path, signature.format)
        except Exception as exc:
            raise ModelConfigError(f"cannot load {signature.format} model {path}: {exc}") from exc
        if signature.format == "torchscript":
            module.eval()  # exported programs are already in inference form and refuse eval()
        self._module = module

    def _load(self, path: Path, fmt: str) -> Any:
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location=self._torch_device)  # type: ignore[no-untyped-call]
        return torch.export.load(str(path)).module().to(self._torch_device)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        sig = self.signature
        args = [self._to_torch(inputs[spec.name], spec) for spec in sig.inputs]
        with torch.inference_mode():
            result = self._module(*args)
        if isinstance(result, dict):
            values = [result[spec.name] for spec in sig.outputs]
        elif isinstance(result, tuple | list) and len(sig.outputs) > 1:
            values = list(result)
        else:
            values = [result]
        if len(values) != len(sig.outputs):
            raise ModelFailed(
                f"model returned {len(values)} outputs, the signature declares {len(sig.outputs)}"
            )
        first = next(iter(inputs.values()))
        rows = len(first) if sig.batched else 0
        return {spec.name: self._to_numpy(v, spec, rows) for spec, v in zip(sig.outputs, values, strict=True)}

    def _to_torch(self, arr: Any, spec: TensorSpec) -> Any:
        if spec.datatype == "BYTES":
            return [x.decode("utf-8", "replace") for x in arr.ravel()]
        if spec.datatype == "BF16":
            return torch.from_numpy(np.array(arr, dtype=np.float32)).to(self._torch_device, torch.bfloat16)
        if not arr.flags.writeable:  # torch warns on read-only numpy memory (np.frombuffer)
            arr = arr.copy()
        return torch.from_numpy(arr).to(self._torch_device)

    @staticmethod
    def _to_numpy(value: Any, spec: TensorSpec, rows: int) -> Any:
        if spec.datatype == "BYTES":
            if not isinstance(value, list | tuple):
                raise ModelFailed(f"output '{spec.name}': BYTES outputs must be a list of str")
            arr = np.empty(len(value), dtype=object)
            arr[:] = [x.encode() if isinstance(x, str) else bytes(x) for x in value]
            return arr.reshape((rows, -1)) if rows else arr
        if not isinstance(value, torch.Tensor):
            raise ModelFailed(f"output '{spec.name}': expected a tensor, got {type(value).__name__}")
        t = value.detach()
        if t.dtype == torch.bfloat16 or spec.datatype == "BF16":
            t = t.float()  # numpy has no bfloat16; BF16 travels as float32 until encoding
        out = t.cpu().numpy()
        want = NUMPY_DTYPE[spec.datatype]
        return out if out.dtype == want else out.astype(want)


# ---- generative models (transformers causal LMs) ----


def _offline() -> None:
    """Nothing is fetched at run time: the model directory must hold everything."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # pods run with a read-only root: any cache transformers wants goes to the /tmp emptyDir
    os.environ.setdefault("HF_HOME", os.path.join(os.environ.get("TMPDIR", "/tmp"), "huggingface"))


class CausalLM:
    """A transformers causal LM and its tokenizer: the engine's decoder and the plane's codec.

    The running batch is one left-padded KV cache: row i belongs to `self.rows[i]`; `mask`
    marks real tokens, `positions` is each row's next position. Admitted sequences are
    prefilled together (left-padded) and their cache rows appended; evicted rows are dropped
    and the padding columns no row needs any more are cut.
    """

    def __init__(self, sig: GenerativeSignature, device: str = "auto") -> None:
        _offline()  # before transformers (and huggingface_hub) read their settings
        import transformers

        self._cache_class = transformers.DynamicCache
        self.signature = sig
        self.device = pick_device(device)
        self._torch_device = torch.device(self.device)
        dtype: Any = "auto" if sig.dtype == "auto" and self.device != "cpu" else torch.float32
        if sig.dtype != "auto":
            dtype = getattr(torch, sig.dtype)
        directory = str(sig.directory)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                directory, local_files_only=True, dtype=dtype
            )
        except Exception as exc:
            raise ModelConfigError(f"cannot load the generative model in {directory}: {exc}") from exc
        self.model = model.to(self._torch_device).eval()  # type: ignore[arg-type]
        eos = self.tokenizer.eos_token_id
        self.eos_token_id: int | None = eos if eos is not None else model.config.eos_token_id
        self.rows: list[int] = []
        self._cache: Any = None
        self._mask = torch.zeros((0, 0), dtype=torch.long, device=self._torch_device)
        self._positions = torch.zeros(0, dtype=torch.long, device=self._torch_device)
        self._last = torch.zeros(0, dtype=torch.long, device=self._torch_device)
        self._params: dict[int, SamplingParams] = {}
        self._generators: dict[int, torch.Generator] = {}

    # ---- TextCodec ----

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def chat_prompt(self, messages: tuple[tuple[str, str], ...]) -> str:
        docs = [{"role": r, "content": c} for r, c in messages]
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(docs, tokenize=False, add_generation_prompt=True))
        # no template shipped: a plain transcript ending where the assistant speaks
        return "".join(f"{r}: {c}\n" for r, c in messages) + "assistant:"

    # ---- Decoder ----

    def step(
        self,
        evict: list[int],
        admit: list[tuple[int, list[int], SamplingParams]],
        decode: list[int],
        early: Callable[[dict[int, int]], None] | None = None,
    ) -> dict[int, int]:
        with torch.inference_mode():
            self._evict(set(evict))
            if set(self.rows) != set(decode):
                raise RuntimeError(f"decoder rows {self.rows} differ from the scheduler's {decode}")
            out: dict[int, int] = {}
            # newcomers first: their first token (TTFT) does not wait for the batch's step
            joining = self._prefill(admit) if admit else None
            if joining is not None and early is not None and self.rows:
                early(dict(zip(joining[2], joining[3], strict=True)))
            if self.rows:
                out.update(zip(self.rows, self._decode(), strict=True))
            if joining is not None:
                self._join(*joining)
                out.update(zip(joining[2], joining[3], strict=True))
            return out

    def warm_up(self) -> None:
        """One short sequence through prefill and two decoding steps."""
        ids = self.encode("hello") or [0]
        params = SamplingParams(max_tokens=2, temperature=0.0)
        self.step([], [(-1, ids, params)], [])
        self.step([], [], [-1])
        self.step([-1], [], [])

    def _evict(self, gone: set[int]) -> None:
        if not gone:
            return
        for seq_id in gone:
            self._params.pop(seq_id, None)
            self._generators.pop(seq_id, None)
        keep = [i for i, r in enumerate(self.rows) if r not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache = None
            self._mask = self._mask[:0, :0]
            self._positions = self._positions[:0]
            self._last = self._last[:0]
            return
        index = torch.tensor(keep, device=self._torch_device)
        self._mask = self._mask.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._last = self._last.index_select(0, index)
        start = int(self._mask.any(0).long().argmax())  # first column some row still needs
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def _decode(self) -> list[int]:
        ones = torch.ones((len(self.rows), 1), dtype=torch.long, device=self._torch_device)
        mask = torch.cat([self._mask, ones], 1)
        result = self.model(
            input_ids=self._last[:, None], attention_mask=mask, position_ids=self._positions[:, None],
            cache=self._cache, use_cache=True,
        )  # fmt: skip
        self._mask = mask  # the cache grew in place by one column
        self._positions = self._positions + 1
        tokens = self._pick(result.logits[:, -1, :], self.rows)
        self._last = torch.tensor(tokens, dtype=torch.long, device=self._torch_device)
        return tokens

    def _prefill(
        self, admit: list[tuple[int, list[int], SamplingParams]]
    ) -> tuple[Any, torch.Tensor, list[int], list[int]]:
        """One forward over the admitted prompts, left-padded: their cache, mask, ids and first
        tokens, to join the batch after this step's decode."""
        width = max(len(p) for _, p, _ in admit)
        ids = torch.zeros((len(admit), width), dtype=torch.long)
        mask = torch.zeros((len(admit), width), dtype=torch.long)
        for i, (seq_id, prompt, params) in enumerate(admit):
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
            self._params[seq_id] = params
            gen = torch.Generator(device=self._torch_device)
            gen.manual_seed(
                params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
            )
            self._generators[seq_id] = gen
        ids, mask = ids.to(self._torch_device), mask.to(self._torch_device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = self._cache_class(config=self.model.config)
        result = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
        new_ids = [seq_id for seq_id, _, _ in admit]
        tokens = self._pick(result.logits[:, -1, :], new_ids)
        return cache, mask, new_ids, tokens

    def _join(self, cache: Any, mask: torch.Tensor, new_ids: list[int], tokens: list[int]) -> None:
        positions = mask.sum(1)
        last = torch.tensor(tokens, dtype=torch.long, device=self._torch_device)
        if not self.rows:
            self._cache, self._mask, self._positions, self._last = cache, mask, positions, last
            self.rows = list(new_ids)
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        self._mask = torch.cat([_left_pad(self._mask, width, 1), _left_pad(mask, width, 1)], 0)
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)], 0)
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)], 0)
        self._positions = torch.cat([self._positions, positions])
        self._last = torch.cat([self._last, last])
        self.rows.extend(new_ids)

    def _pick(self, logits: torch.Tensor, seq_ids: list[int]) -> list[int]:
        """Next token per row: greedy at temperature 0, else top-p sampling with the
        sequence's own generator (seeded when the request gave a seed)."""
        greedy = logits.argmax(-1).tolist()
        out = []
        for row, seq_id in enumerate(seq_ids):
            params = self._params[seq_id]
            if params.temperature == 0:
                out.append(int(greedy[row]))
                continue
            probs = torch.softmax(logits[row].float() / params.temperature, -1)
            if params.top_p < 1:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < params.top_p  # always keeps the top one
                sorted_probs = sorted_probs * keep
                choice = torch.multinomial(sorted_probs, 1, generator=self._generators[seq_id])
                out.append(int(order[choice].item()))
            else:
                out.append(int(torch.multinomial(probs, 1, generator=self._generators[seq_id]).item()))
        return out


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim)
