"""Model FLOPs of a training step, from the architecture: the one count behind `train/mfu` and the
FSDP throughput benchmark.

What counts. Only matrix multiplies: the weights of linear layers (the LM head included; HF's
`Conv1D`, `nn.MultiheadAttention`'s packed input projection), of convolutions (a ViT's patch
embedding: a matmul per patch), and the two attention products QK^T and AV. Embedding lookups and
position embeddings are no matmuls and count nothing, nor do biases, norms, activations, softmax
and the loss. Each weight counts once per token that passes it, in its own module's token count:
the tower's blocks per tower token (patches, plus CLS/prefix tokens where the tower has them), its
patch embedding per patch, the connector per token it reads (a resampler's queries, keys and
values and a pixel-shuffle MLP as they really run), the LLM per token of the expanded sequence
(text + visual tokens), padding excluded. The LM head counts per token it runs on: every token for
full logits, only the positions with a trained target when the training forward computes its loss
from those alone (lmm/model/loss.py; `head_on_trained_positions`, `trained_targets`).

Forward: 2 FLOPs per weight per token; attention 4·H·Q·T per token and layer (H heads of width Q,
T the length of the sequence the token attends over: the sample's own length, so a batch costs
Σ_s len_s² · 4·L·H·Q in an L-layer LLM; a tower image its token count squared). Full T, not
halved for causal masks, as PaLM's and torchtitan's counts do.

Backward: 2 FLOPs per weight per token for the weight gradient of every *trained* weight
(`requires_grad`, per parameter: LoRA adapters, `partial` tuning's later blocks), and 2 per weight
per token for the activation gradient in every unit the gradient flows through: a unit that trains
a parameter or sits downstream of one. The units, in order: the tower's stem (patch and position
embeddings), each tower block, the connector, the LLM's input embeddings, each decoder layer, its
final norm, its LM head. Attention's backward costs twice its forward, so an attention layer the
gradient flows through counts 3x (12·L·H·Q·T per token), a forward-only one 1x.

So the SFT stage (frozen tower upstream, trained connector + LLM) costs 6·N_trained + 2·N_frozen
per token, the rule the issue gives. That rule under-counts a frozen module the gradient still has
to cross: in the pretrain stage (frozen tower, trained connector, frozen LLM) the loss's gradient
runs back through the whole frozen LLM to reach the connector, so the LLM costs 4·N (forward plus
activation gradients), not 2·N. A partially tuned tower (`share`'s frozen first blocks) costs 2·N
for the frozen blocks before the first trained one and 6·N from there on; a LoRA-tuned LLM 4·N for
its frozen base weights and 6·N for the adapters.

Conventions, as in MFU reports: these are model FLOPs, not hardware FLOPs. Not counted: activation
checkpointing's recomputed forward (and the chunked loss's recomputed head), padding, the blank
image a sharded tower runs on text-only batches. Counted although autograd skips it: the input
gradient of the first matmul of the gradient's path (the connector's first layer behind a frozen
tower, a trained tower's patch embedding), whose input needs none, as the 6·N rule does.
Sliding-window attention is counted as full attention.

Parameters are counted by their global shape: under FSDP2 they are DTensors, whose `shape` is
the unsharded one, so the count is the same before and after sharding (never the local shard).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmm.data.tokenize import IGNORE_INDEX

# Dense (no sparsity) bf16 tensor-core peak per device, TFLOP/s, matched against the CUDA device name.
# Dense bf16 TFLOP/s per device, matched in order against torch.cuda.get_device_name (the PCIe
# H100 is listed before the SXM default it would otherwise match).
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def device_peak_tflops(device: torch.device | str | None = None) -> float | None:
    """The dense bf16 peak of a CUDA device listed in `PEAK_BF16_TFLOPS`; None on CPU or an unknown GPU."""
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def _numel(p: torch.Tensor) -> int:
    return math.prod(p.shape)  # a DTensor's shape is the global one


def _own_matmul_weights(module: nn.Module) -> list[torch.Tensor]:
    """The weights `module` itself (not its children) multiplies its input by."""
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or type(module).__name__ == "Conv1D":
        return [module.weight]  # Conv1D: transformers' GPT-2-style linear layer
    if isinstance(module, nn.MultiheadAttention):  # out_proj is a child Linear
        names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        return [w for w in (getattr(module, n, None) for n in names) if w is not None]
    return []


def _modules(roots: Iterable[nn.Module], exclude: Iterable[nn.Module] = ()) -> list[nn.Module]:
    """Every module under `roots` once, leaving out those under `exclude`."""
    skip = {id(m) for root in exclude for m in root.modules()}
    seen, out = set(), []
    for root in roots:
        for m in root.modules():
            if id(m) not in skip and id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def matmul_weights(module: nn.Module) -> list[torch.Tensor]:
    """The matmul weights under `module` (linear, conv, attention projections; no embeddings)."""
    return [w for m in _modules([module]) for w in _own_matmul_weights(m)]


def matmul_params(module: nn.Module, trained: bool | None = None) -> int:
    """Matmul parameters under `module` (global shapes); `trained` True/False: only those that
    do / do not require grad."""
    return sum(_numel(w) for w in matmul_weights(module) if trained is None or w.requires_grad == trained)


@dataclass
class _Unit:
    """One step of the gradient's path. FLOPs per image (tower, connector) or per LLM token, the
    LLM's attention per token pair (Σ len²)."""
    per_image: bool
    head: bool = False  # the LM head: per token it runs on, not per token of the sequence
    matmul: float = 0.0  # forward matmul FLOPs: 2 x weights x tokens
    trained_matmul: float = 0.0  # the same over weights that require grad
    attention: float = 0.0  # forward attention FLOPs
    trains: bool = False  # a parameter of the unit (matmul or not) requires grad

    def add(self, modules: Iterable[nn.Module], tokens: int, patches: int | None = None) -> _Unit:
        for m in modules:
            count = patches if patches is not None and isinstance(m, nn.modules.conv._ConvNd) else tokens
            for w in _own_matmul_weights(m):
                self.matmul += 2 * _numel(w) * count
                self.trained_matmul += 2 * _numel(w) * count if w.requires_grad else 0
            self.trains = self.trains or any(p.requires_grad for p in m.parameters(recurse=False))
        return self


def tower_tokens(vision: nn.Module) -> tuple[int, int]:
    """(tokens each tower block sees per image, patches the patch embedding makes per image). The
    tower computes on its CLS/prefix tokens too, even where the encoder drops them afterwards."""
    visual = getattr(vision, "visual", None)
    trunk = getattr(vision, "trunk", None) or getattr(visual, "trunk", None)
    if trunk is not None:  # a timm ViT (also open_clip's SigLIP towers): CLS and registers first
        patches = trunk.patch_embed.num_patches
        return patches + trunk.num_prefix_tokens, patches
    if visual is not None and hasattr(visual, "grid_size"):  # open_clip's own ViT: a class token
        patches = visual.grid_size[0] * visual.grid_size[1]
        return patches + int(vision.has_cls), patches
    if hasattr(vision, "num_patches"):  # transformers CLIP / SigLIP
        return vision.num_patches + int(vision.has_cls), vision.num_patches
    return vision.num_tokens, vision.num_tokens


def _vision_units(vision: nn.Module) -> list[_Unit]:
    tokens, patches = tower_tokens(vision)
    layers = list(vision.layers)
    stem = _Unit(per_image=True).add(_modules([vision], exclude=layers), tokens, patches)
    attention = 4 * vision.hidden_size * tokens * tokens  # per block and image: QK^T and AV over the image's tokens
    return [stem] + [_Unit(per_image=True, attention=attention).add(_modules([b]), tokens) for b in layers]


def _connector_unit(connector: nn.Module, in_tokens: int) -> _Unit:
    from lmm.model.pixel_shuffle import PixelShuffleConnector
    from lmm.model.resampler import ResamplerConnector

    unit = _Unit(per_image=True)
    if isinstance(connector, ResamplerConnector):
        queries, keys = connector.num_queries, in_tokens + connector.num_queries  # keys: patches and queries
        unit.add(_modules([connector.proj_in]), in_tokens)
        for block in connector.blocks:
            unit.add(_modules([block.to_kv]), keys)
            unit.add(_modules([block], exclude=[block.to_kv]), queries)
            unit.attention += 4 * block.to_q.out_features * queries * keys
        unit.add(_modules([connector], exclude=[connector.proj_in, *connector.blocks]), queries)
    elif isinstance(connector, PixelShuffleConnector):  # the MLP runs on the merged tokens
        unit.add(_modules([connector]), connector.output_tokens(in_tokens))
    else:  # token-wise connectors (MLP, linear, identity), and the assumption for any other
        unit.add(_modules([connector]), in_tokens)
    return unit


def _llm_units(llm: nn.Module) -> list[_Unit]:
    hf = llm.model
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers, embeddings = list(llm.layers), hf.get_input_embeddings()
    units = [_Unit(per_image=False).add(_modules([embeddings]), 1)]
    units += [_Unit(per_image=False, attention=4 * heads * head_dim).add(_modules([layer]), 1) for layer in layers]
    head = [m for m in (hf.get_output_embeddings(),) if m is not None]
    units.append(_Unit(per_image=False).add(_modules([llm], exclude=[*layers, embeddings, *head]), 1))  # final norm
    units.append(_Unit(per_image=False, head=True).add(_modules(head), 1))
    return units


@dataclass(frozen=True)
class FlopRates:
    """A model's FLOPs per image, per LLM token, per LLM token pair (Σ len² over samples) and per
    token the LM head runs on: computed once from the architecture, then
    `rates(lengths, num_images, head_tokens)` is a step's FLOPs."""
    per_image: float
    per_token: float
    per_token_pair: float
    per_head_token: float

    def __call__(self, sample_lengths: Sequence[int], num_images: int, head_tokens=None):
        """head_tokens: the rows the LM head computes (None: every token, i.e. full logits); an int,
        or a tensor (then so is the result: a count on the GPU is never synchronised here)."""
        tokens = sum(sample_lengths)
        return (num_images * self.per_image + tokens * self.per_token
                + sum(n * n for n in sample_lengths) * self.per_token_pair
                + (tokens if head_tokens is None else head_tokens) * self.per_head_token)


def flop_rates(model: nn.Module, training: bool = True) -> FlopRates:
    """The FLOP rates of an `LMM` (module docstring): a training step (forward + backward, by the
    parameters' `requires_grad`) or, with `training=False`, a forward alone."""
    units = [*_vision_units(model.vision), _connector_unit(model.connector, model.vision.num_tokens),
             *_llm_units(model.llm)]
    rates = {"image": 0.0, "token": 0.0, "pair": 0.0, "head": 0.0}
    flows = False
    for unit in units:
        flows = flows or unit.trains  # the gradient crosses this unit and every one after it
        matmul, attention = unit.matmul, unit.attention
        if training:
            matmul += unit.trained_matmul + (unit.matmul if flows else 0.0)
            attention *= 3 if flows else 1
        if unit.per_image:
            rates["image"] += matmul + attention
        else:
            rates["head" if unit.head else "token"] += matmul
            rates["pair"] += attention
    return FlopRates(rates["image"], rates["token"], rates["pair"], rates["head"])


def step_flops(model: nn.Module, sample_lengths: Sequence[int], num_images: int, head_tokens=None,
               training: bool = True) -> float:
    """Model FLOPs of one step over samples of these expanded lengths (text + visual tokens) and
    `num_images` images, the LM head on `head_tokens` rows (None: all). Walks the model each call:
    to count many steps, keep `flop_rates(model)`."""
    return flop_rates(model, training)(sample_lengths, num_images, head_tokens)


def head_on_trained_positions(model: nn.Module) -> bool:
    """Whether the model's forward with labels runs the LM head only on the positions that have a
    trained target (lmm/model/loss.py's `trained_positions_loss`) rather than on every token."""
    try:
        from lmm.model.loss import post_head
    except ImportError:  # a model without that loss computes full logits
        return False
    return hasattr(model, "loss_impl") and post_head(model.llm.model.config) is not None


def trained_targets(labels: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """How many positions of a batch have a trained next-token target (a 0-d tensor on the labels'
    device: no synchronisation). The text-only labels of a batch give the same count as the
    expanded ones: the visual tokens spliced in are all untrained. Packed: no target across samples."""
    trained = labels[:, 1:] != IGNORE_INDEX
    if segment_ids is not None:
        trained = trained & (segment_ids[:, 1:] == segment_ids[:, :-1])
    return trained.sum()
