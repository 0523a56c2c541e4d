"""Model FLOPs (lmm/train/flops.py) and the throughput callback's TFLOP/s, MFU and peak memory.

The count is checked three ways: by hand from the tiny configs' dimensions, against PyTorch's
FlopCounterMode on real forwards and backwards (exact, up to the one input gradient autograd skips,
which the model-FLOPs convention counts), and through a tiny Lightning fit.
"""
import os
import resource
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from lmm.data.collate import Collator
from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID
from lmm.model.lmm import LMM
from lmm.train import callbacks
from lmm.train.callbacks import ThroughputMonitor
from lmm.train.flops import (
    PEAK_BF16_TFLOPS,
    device_peak_tflops,
    flop_rates,
    head_on_trained_positions,
    matmul_params,
    step_flops,
    trained_targets,
)
from lmm.train.module import LMMTrainModule
from lmm.train.tuning import apply_tuning
from tests.conftest import CONF, MLP2X_GELU, llm_spec, vision_spec

SFT = {"vision": "frozen", "connector": "full", "llm": "full"}
PRETRAIN = {"vision": "frozen", "connector": "full", "llm": "frozen"}
SHARE = {"vision": {"mode": "partial", "frozen_layers": 1}, "connector": "full", "llm": "full"}
FULL = {"vision": "full", "connector": "full", "llm": "full"}
LORA = {"vision": "frozen", "connector": "full", "llm": {"mode": "lora", "r": 4}}

# FlopCounterMode has no formula for the CPU's fused attention kernel (it has the CUDA ones): the
# same count as its CUDA sdpa formula, 2 x 2·B·H·Tq·Tk·Q for QK^T and AV.
CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}


def conf(group: str, name: str, **overrides) -> dict:
    return {**OmegaConf.to_container(OmegaConf.load(f"{CONF}/{group}/{name}.yaml"), resolve=True), **overrides}


def tiny(tokenizer_dir, tune=None, vision=None, connector=None) -> LMM:
    """The conftest tiny LMM: SigLIP 32 px / 8 px patches (16 tokens, no CLS), width 32, MLP 64, 2
    kept blocks, 2 heads; mlp2x_gelu 32 -> 48 -> 48; Llama width 48, MLP 96, 2 layers, 4 heads of
    12 (2 KV heads), vocabulary from the tokenizer, untied head."""
    torch.manual_seed(0)
    model = LMM(vision or vision_spec(), connector or dict(MLP2X_GELU), llm_spec(tokenizer_dir))
    if tune is None:
        model.requires_grad_(False)
    else:
        apply_tuning(model, tune)
    return model


def samples(model, text_lengths=(10, 14), images=(True, True), labelled_from=4):
    """One sample per entry (no padding): an image token at position 1 if it has an image, its
    labels trained from `labelled_from` on. Returns (ids, pixels, labels, expanded length) tuples."""
    g = torch.Generator().manual_seed(0)
    out = []
    for n, image in zip(text_lengths, images):
        ids = torch.randint(10, 200, (1, n), generator=g)
        if image:
            ids[0, 1] = IMAGE_TOKEN_ID
        labels = ids.clone()
        labels[0, :labelled_from] = IGNORE_INDEX
        pixels = torch.randn(1, 3, 32, 32, generator=g) if image else None
        out.append((ids, pixels, labels, n - image + image * model.num_visual_tokens))
    return out


def hand_count(vocab: int, tune: str, lengths: list[int], images: int, head_tokens=None) -> float:
    """FLOPs of the tiny model from its dimensions (see `tiny`)."""
    conv, block, tower_attention = 3 * 8 * 8 * 32, 4 * 32 * 32 + 2 * 32 * 64, 4 * 32 * 16 * 16  # per patch/token/image
    connector = 32 * 48 + 48 * 48
    layer, head, llm_attention = 2 * 48 * 48 + 2 * 48 * 24 + 3 * 48 * 96, 48 * vocab, 4 * 4 * 12  # per token/pair
    tokens, pairs = sum(lengths), sum(n * n for n in lengths)
    head_tokens = tokens if head_tokens is None else head_tokens
    # FLOPs per weight and token: (stem, block 0, block 1, connector, LLM), and the attention factor
    factors = {"forward": ((2, 2, 2, 2, 2), (1, 1, 1)),
               "sft": ((2, 2, 2, 6, 6), (1, 1, 3)),  # frozen tower upstream: forward only
               "pretrain": ((2, 2, 2, 6, 4), (1, 1, 3)),  # frozen LLM, but the gradient crosses it
               "share": ((2, 2, 6, 6, 6), (1, 3, 3))}[tune]  # block 0 frozen and upstream, block 1 trained
    (stem_f, b0_f, b1_f, conn_f, llm_f), (a0, a1, a_llm) = factors
    per_image = (stem_f * conv * 16 + (b0_f + b1_f) * block * 16 + conn_f * connector * 16
                 + (a0 + a1) * tower_attention)
    return (images * per_image + tokens * llm_f * 2 * layer + head_tokens * llm_f * head
            + pairs * a_llm * 2 * llm_attention)


@pytest.mark.parametrize("tune", ["forward", "sft", "pretrain", "share"])
def test_hand_count_of_the_tiny_model(tokenizer_dir, tune):
    model = tiny(tokenizer_dir, {"sft": SFT, "pretrain": PRETRAIN, "share": SHARE}.get(tune))
    vocab = model.llm.model.get_output_embeddings().out_features
    lengths, training = [25, 31, 7], tune != "forward"
    assert step_flops(model, lengths, 2, training=training) == hand_count(vocab, tune, lengths, 2)
    # the LM head on the trained positions only: its weights count per row it computes
    assert step_flops(model, lengths, 2, head_tokens=9, training=training) == hand_count(vocab, tune, lengths, 2, 9)


def test_only_matmul_weights_count(tokenizer_dir):
    model = tiny(tokenizer_dir)
    vocab = model.llm.model.get_output_embeddings().out_features
    # no position embeddings, token embeddings, norms or biases; the patch embedding and the LM head count
    assert matmul_params(model.vision) == 3 * 8 * 8 * 32 + 2 * (4 * 32 * 32 + 2 * 32 * 64)
    assert matmul_params(model.connector) == 32 * 48 + 48 * 48
    assert matmul_params(model.llm) == 2 * (2 * 48 * 48 + 2 * 48 * 24 + 3 * 48 * 96) + 48 * vocab
    assert matmul_params(model.llm) < sum(p.numel() for p in model.llm.parameters()) - vocab * 48


def test_sft_costs_six_per_trained_and_two_per_frozen_weight(tokenizer_dir):
    model = tiny(tokenizer_dir, SFT)
    rates = flop_rates(model)
    tokens = 16  # the tiny SigLIP: 16 patches, no CLS, so every tower weight and the connector see 16 per image
    tower_attention = 2 * 4 * 32 * tokens * tokens  # two blocks, forward only
    trained = matmul_params(model.connector, trained=True) * tokens
    frozen = matmul_params(model.vision, trained=False) * tokens
    assert matmul_params(model.vision, trained=True) == matmul_params(model.connector, trained=False) == 0
    assert rates.per_image - tower_attention == 6 * trained + 2 * frozen
    assert rates.per_token + rates.per_head_token == 6 * matmul_params(model.llm, trained=True)
    assert matmul_params(model.llm, trained=False) == 0


def test_lora_counts_each_parameter_by_requires_grad(tokenizer_dir):
    model = tiny(tokenizer_dir, LORA)
    trained, frozen = matmul_params(model.llm, trained=True), matmul_params(model.llm, trained=False)
    assert 0 < trained < frozen  # the adapters train, the base weights do not
    rates = flop_rates(model)
    # the frozen base weights sit downstream of the trained connector: forward + activation gradient
    assert rates.per_token + rates.per_head_token == 6 * trained + 4 * frozen


def skipped_connector_input(model, images):
    """The input gradient of the connector's first linear layer: its input (the frozen tower's
    features) needs none, so autograd skips it; model FLOPs count every matmul of a trained unit."""
    return 2 * matmul_params(model.connector[0]) * model.vision.num_tokens * images


def skipped_pixel_gradient(model, images):
    """A trained tower: the patch embedding's gradient with respect to the pixels."""
    return 2 * matmul_params(model.vision.tower.embeddings.patch_embedding) * model.vision.num_patches * images


@pytest.mark.parametrize(("vision", "connector"), [
    ("siglip", "mlp2x_gelu"), ("clip", "mlp2x_gelu"), ("tiny_timm_vit", "mlp2x_gelu"),
    ("tiny_open_clip", "mlp2x_gelu"), ("siglip", "linear"), ("siglip", "resampler"), ("siglip", "pixel_shuffle_mlp"),
])
def test_forward_matches_flop_counter_mode(tokenizer_dir, vision, connector):
    vision = vision_spec(vision) if vision in ("siglip", "clip") else conf("vision", vision)
    connector = conf("connector", connector, **({"num_queries": 5} if connector == "resampler" else {}))
    model = tiny(tokenizer_dir, vision=vision, connector=connector)
    batch = samples(model, text_lengths=(10, 14, 6), images=(True, True, False))
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        for ids, pixels, _, _ in batch:
            model(ids, pixels, torch.ones_like(ids))  # no labels: full logits
    lengths = [n for *_, n in batch]
    # exact: every matmul of the forward is a weight, a patch embedding or an attention product
    assert step_flops(model, lengths, 2, training=False) == counter.get_total_flops()


@pytest.mark.parametrize(("tune", "skipped", "text_only"), [
    (SFT, skipped_connector_input, True), (PRETRAIN, skipped_connector_input, False),
    (LORA, skipped_connector_input, False), (FULL, skipped_pixel_gradient, True), (SHARE, lambda model, images: 0, True),
])
def test_training_step_matches_flop_counter_mode(tokenizer_dir, tune, skipped, text_only):
    model = tiny(tokenizer_dir, tune)
    # eager attention: the attention backward as its matmuls (a fused kernel's count includes its recompute)
    model.llm.model.set_attn_implementation("eager")
    model.vision.tower.set_attn_implementation("eager")
    # Samples run one at a time (no padding). A text-only sample alone has a gradient path of its own
    # (no connector on it), so it comes only where the LLM's embeddings train; in a batch, its rows
    # share the image rows' backward.
    batch = samples(model, text_lengths=(10, 14, 6), images=(True, True, not text_only))
    images = sum(pixels is not None for _, pixels, _, _ in batch)
    with FlopCounterMode(display=False) as counter:
        for ids, pixels, labels, _ in batch:
            model(ids, pixels, torch.ones_like(ids), labels).loss.backward()
    lengths = [n for *_, n in batch]
    head = sum(int(trained_targets(labels)) for _, _, labels, _ in batch) if head_on_trained_positions(model) else None
    assert step_flops(model, lengths, images, head) - skipped(model, images) == counter.get_total_flops()


@pytest.mark.slow  # two fresh processes (imports, gloo)
def test_parameters_are_counted_by_their_global_shape_under_fsdp2(tokenizer_dir, tmp_path):
    with socket.socket() as s:  # a free port for the two ranks
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_sharded_rates, args=(tokenizer_dir, str(tmp_path), port), nprocs=2)
    before, after = (Path(tmp_path, f"rank{r}.txt").read_text() for r in (0, 1))
    assert before == after
    rates, sharded = before.split("|")
    assert rates == sharded


def _sharded_rates(rank, tokenizer_dir, out, port):
    """A spawned rank: the rates before and after FSDP2 sharding, written to <out>/rank<r>.txt."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from lmm.train.parallel import shard_fsdp2

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = tiny(tokenizer_dir, SFT)
        before = flop_rates(model)
        shard_fsdp2(model, init_device_mesh("cpu", (2,)), param_dtype=None, reduce_dtype=None)
        weight = model.llm.layers[0].mlp.gate_proj.weight
        assert isinstance(weight, DTensor) and weight.to_local().numel() < weight.numel()
        Path(out, f"rank{rank}.txt").write_text(f"{before}|{flop_rates(model)}")
    finally:
        dist.destroy_process_group()


def test_device_peak_is_known_for_listed_gpus_only(monkeypatch):
    assert device_peak_tflops("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, peak in [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
                       ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA GeForce RTX 4090", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert device_peak_tflops("cuda:0") == peak
    assert set(PEAK_BF16_TFLOPS) == {"H100 PCIe", "H100", "H200", "A100"}


def test_collate_gives_each_samples_expanded_length():
    def sample(n, length):
        return {"id": n, "input_ids": torch.arange(n), "labels": torch.arange(n), "length": length,
                "pixel_values": None}

    batch = Collator(0)([sample(3, 3), sample(4, 19)])
    assert batch["lengths"] == [3, 19] and batch["real_tokens"] == 22
    packed = Collator(0, packed=True)([[sample(3, 3), sample(2, 17)], [sample(5, 5)]])
    assert packed["lengths"] == [3, 17, 5]


def fit(tokenizer_dir, monitor, steps=3):
    module = LMMTrainModule({"vision": vision_spec(), "connector": dict(MLP2X_GELU), "llm": llm_spec(tokenizer_dir)},
                            SFT, {"lr": 1e-3})
    data = []
    for i, (ids, pixels, labels, length) in enumerate(samples(module.model, (10, 14, 6, 9, 12, 8),
                                                              (True, True, False, True, False, True))):
        data.append({"id": i, "input_ids": ids[0], "labels": labels[0], "length": length, "pixel_values": pixels})
    collate = Collator(module.model.tokenizer.pad_token_id)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, log_every_n_steps=1, callbacks=[monitor],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_size=2, collate_fn=collate))
    batches = [collate(data[i:i + 2]) for i in range(0, 2 * steps, 2)]
    return trainer, module, batches


def test_throughput_monitor_logs_model_tflops_and_peak_memory_on_cpu(tokenizer_dir):
    monitor = ThroughputMonitor(window=5)
    trainer, module, batches = fit(tokenizer_dir, monitor)
    logged = trainer.callback_metrics
    assert {"train/tokens_per_s", "train/samples_per_s", "train/tflops_per_device", "train/peak_memory_gb"} <= set(logged)
    assert "train/mfu" not in logged  # no known peak on a CPU
    assert monitor.rates == flop_rates(module.model)  # cached at fit start, from the tuned model
    expected = [flop_rates(module.model)(b["lengths"], 0 if b["pixel_values"] is None else len(b["pixel_values"]),
                                         trained_targets(b["labels"]) if head_on_trained_positions(module.model) else None)
                for b in batches]
    assert [float(w[4]) for w in monitor.window] == pytest.approx([float(e) for e in expected])
    seconds = sum(w[0] for w in monitor.window)
    assert float(logged["train/tflops_per_device"]) == pytest.approx(sum(map(float, expected)) / seconds / 1e12)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    assert 0.05 < float(logged["train/peak_memory_gb"]) <= rss_gb * (1 + 1e-6)  # logged as float32


def test_throughput_monitor_logs_mfu_when_the_peak_is_known(tokenizer_dir, monkeypatch):
    monkeypatch.setattr(callbacks, "device_peak_tflops", lambda device: 2e-3)
    trainer, _, _ = fit(tokenizer_dir, ThroughputMonitor(), steps=2)
    logged = trainer.callback_metrics
    assert float(logged["train/mfu"]) == pytest.approx(float(logged["train/tflops_per_device"]) / 2e-3)
